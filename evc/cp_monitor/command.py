"""`evc cp-monitor <engine_host:port> <central_host:port> <cp_id>` — EV_CP_M."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import click

from evc.console import say
from evc.cp_monitor.monitor import EngineKeys, Monitor, MonitorEvent, check_engine
from evc.lifecycle import Crew, install_stop_signals
from evc.logs import setup_logging
from evc.net import Address
from evc.options import (
    ADDRESS,
    ADDRESSES,
    ID,
    Common,
    common_options,
    credentials_option,
    pair_option,
)
from evc.protocol.ids import check_text
from evc.store.credentials import Credential


@click.command("cp-monitor")
@click.argument("engine", type=ADDRESS)
@click.argument("central", type=ADDRESSES)
@click.argument("cp_id", type=ID)
@click.option("--location", default="", help="Where this CP is (sent at registration).")
@click.option("--interval", type=click.FloatRange(0.1, 60), default=1.0, show_default=True,
              help="Seconds between health checks and between heartbeats.")
@click.option("--answer-timeout", type=click.FloatRange(0.1, 60), default=1.0,
              show_default=True, help="Seconds the engine has to answer a health check.")
@click.option("--central-timeout", type=click.FloatRange(0.5, 120), default=3.0,
              show_default=True, help="Seconds of central's silence that mean it is lost.")
@credentials_option("This CP's", "<cp_id>")
@pair_option("over the TCP link")
@common_options
def cp_monitor(engine: Address, central: list[Address], cp_id: str, location: str, interval: float,
               answer_timeout: float, central_timeout: float, credentials: Path | None,
               pair_code: str | None, common: Common) -> None:
    """EV_CP_M: registers CP_ID with central over TCP and watches its engine.

    ENGINE and CENTRAL are host:port; CENTRAL may list the active central and its
    standby (host:port,host:port): the monitor registers with the one that is active.
    A health check goes to the engine every second; KO or no answer sends AVERÍA to
    central at once, recovery sends OK.
    """
    check_text(location, "--location", 120)
    setup_logging(common.log_level, common.log_file)
    credential = Credential(cp_id, credentials)
    secret = credential.get()  # a broken file is a clear error now; a missing one, later
    keys = EngineKeys()
    stop = threading.Event()
    install_stop_signals(stop)
    events: queue.Queue[MonitorEvent] = queue.Queue()
    crew = Crew(stop)
    crew.spawn(check_engine, engine, cp_id, events, stop, interval, answer_timeout,
               credential, keys, name="monitor-engine")
    say(f"{cp_id}: monitor started; engine {engine}, central "
        f"{','.join(str(c) for c in central)}; "
        + (f"credential from {credential.source}" if secret
           else f"no credential yet ({credential.source})"))
    monitor = Monitor(central, cp_id, location, events, stop, interval, central_timeout,
                      credential=credential, engine_keys=keys, pair_code=pair_code)
    try:
        monitor.run()
    finally:
        stop.set()
        monitor.close()
        crew.join(1.5)
    crew.check()
    if monitor.exit_code:
        raise SystemExit(monitor.exit_code)
