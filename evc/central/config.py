"""How one central is configured (from its command line)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evc.central.model import Settings
from evc.net import Bootstrap
from evc.options import Common

# Central reads every request and reading of the network: while busy, the broker may hold
# its fetch this long to gather them. Each fetch costs kafka-python ~1.4 ms of CPU and is
# one brain batch and one transaction; 40 ms took a quarter off central's steady CPU at
# 1,000 CPs but put the burst's p99 over 100 ms (benchmarks/README.md). Idle, a fetch is
# answered at once.
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
