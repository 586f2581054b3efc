"""How one central is configured (from its command line)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evc.central.model import Settings
from evc.net import Bootstrap
from evc.options import Common

# Central reads every request and reading of the network: the broker may hold its fetch
# this long to gather them (a few ms of latency for a fraction of kafka-python's CPU)
CONSUMER_GATHER = 0.02


@dataclass(frozen=True)
class CentralConfig:
    socket_port: int
    kafka: Bootstrap
    db_path: Path
    listen_host: str = "0.0.0.0"
    cps_file: Path | None = None
    drivers_file: Path | None = None
    sites_file: Path | None = None
    pair: bool = False  # a pairing code for each CP of cps_file and driver of drivers_file
    credentials_dir: Path | None = None
    heartbeat_timeout: float = 3.0
    register_timeout: float = 5.0
    lease_timeout: float = 3.0
    partitions: int = 3
    board: bool = False
    web_url: str = ""  # where the network's web board is (shown in the board's title)
    settings: Settings = Settings()
    common: Common = Common()
