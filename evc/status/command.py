"""`evc status <kafka_host:port>`: the whole network, read-only, from any machine.

Built from network_topic (compacted: the latest public state of every CP, and central's
heartbeat), so it needs nothing but the broker: PC1 or PC3 can watch what PC2's board
shows, minus what is private to a driver. `--once` prints one table and exits (3 when
central is unavailable); `--json` prints one JSON document.
"""

from __future__ import annotations

import json
import queue
import shutil
import sys
import threading
import time
from typing import Any, TextIO

import click
from colorama import Fore, Style, just_fix_windows_console

from evc.bus import open_bus, retrying
from evc.console import stamp
from evc.display import (
    RESET,
    counts_line,
    fit,
    palette,
    render_table,
    supports_256,
)
from evc.lifecycle import Crew, install_stop_signals
from evc.logs import setup_logging
from evc.net import Bootstrap
from evc.netview import NetworkView, read_current
from evc.options import KAFKA, Common, common_options
from evc.protocol.messages import (
    CentralStatus,
    CPState,
    CPStatus,
    Message,
    Removed,
    SiteStatus,
    StandbyStatus,
)
from evc.protocol.topics import NETWORK, Delivery


@click.command()
@click.argument("kafka", type=KAFKA)
@click.option("--once", is_flag=True, help="Print the table once and exit (3: central "
              "unavailable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document and exit.")
@click.option("--central-timeout", type=click.FloatRange(1, 60), default=3.0,
              show_default=True, help="Seconds without central's heartbeat that mean it is "
              "unavailable.")
@common_options
def status(kafka: Bootstrap, once: bool, as_json: bool, central_timeout: float,
           common: Common) -> None:
    """A read-only live board of the network (CPs and central), from any machine."""
    setup_logging(common.log_level, common.log_file, to_stderr=not (once or as_json))
    stop = threading.Event()
    install_stop_signals(stop)
    view = NetworkView(central_timeout)
    inbox: queue.Queue[tuple[Message, bool]] = queue.Queue()
    crew = Crew(stop)
    with open_bus(str(kafka), prefix=common.topic_prefix, client_id="evc-status",
                  wait=common.kafka_wait, stop=stop, sasl=common.sasl) as bus:
        consumer = retrying(lambda: bus.consumer([NETWORK], from_beginning=True),
                            wait=common.kafka_wait, stop=stop)

        def got(msg: Message, delivery: Delivery) -> None:
            if isinstance(msg, (CPStatus, CentralStatus, Removed, SiteStatus, StandbyStatus)):
                inbox.put((msg, consumer.is_live(delivery)))

        crew.spawn(consumer.run, got, stop, name="status-kafka")
        try:
            if once or as_json:
                code = snapshot(view, inbox, stop, consumer.caught_up, as_json, f"Kafka {kafka}")
            else:
                code = live(view, inbox, stop, f"Kafka {kafka}")
        finally:
            stop.set()
            crew.join(1.5)
        crew.check()
    if code:
        raise SystemExit(code)


def drain(view: NetworkView, inbox: queue.Queue[tuple[Message, bool]], timeout: float) -> None:
    try:
        item = inbox.get(timeout=timeout)
    except queue.Empty:
        return
    while True:
        view.apply(*item)
        try:
            item = inbox.get_nowait()
        except queue.Empty:
            return


def snapshot(view: NetworkView, inbox: queue.Queue[tuple[Message, bool]],
             stop: threading.Event, caught_up: threading.Event, as_json: bool,
             title: str) -> int:
    """Read the history, wait briefly for a live heartbeat, print once."""
    read_current(view, inbox, caught_up, stop)
    if as_json:
        sys.stdout.write(json.dumps(view.document(), ensure_ascii=False) + "\n")
    else:
        tty = sys.stdout.isatty() and not _no_color()
        for line in frame(view, shutil.get_terminal_size((100, 30)).columns, 10**6,
                          title, colours=tty):
            sys.stdout.write(line.rstrip() + "\n")
    sys.stdout.flush()
    return 0 if view.central_available() else 3


def _no_color() -> bool:
    import os

    return bool(os.environ.get("NO_COLOR"))


def frame(view: NetworkView, width: int, height: int, title: str, *,
          colours: bool = True) -> list[str]:
    """The board: a header about central, the state counts, and the table."""
    colors = palette(supports_256())
    width = max(40, width)
    now = time.time()
    central = view.central
    if view.central_available() and central is not None:
        standbys = view.standbys_ready()
        head = (f" EVCharging network  {title}  central {central.central}, up since "
                f"{stamp(central.started_at)}"
                + (f", standby {', '.join(standbys)}" if standbys else "") + f"  {stamp(now)} ")
        lines = [Style.BRIGHT + fit(head, width) + RESET]
    else:
        since = view.unavailable_since()
        when = f" since {stamp(since)}" if since else ""
        head = f" CENTRAL UNAVAILABLE{when}  {title}  {stamp(now)} "
        lines = [Fore.RED + Style.BRIGHT + fit(head, width) + RESET]
    rows = view.rows(now)
    counts = {state: 0 for state in CPState}
    for row in rows:
        counts[row.state] += 1
    lines.append(counts_line(counts, colors, width, f"   {len(rows)} charge points"))
    lines += [fit(" site " + text, width) for text in view.site_lines()]
    lines += render_table(rows, width, max(3, height - len(lines)), colors)
    if not colours:
        import re

        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines]
    return lines


def live(view: NetworkView, inbox: queue.Queue[tuple[Message, bool]],
         stop: threading.Event, title: str, out: TextIO | None = None) -> int:
    """Redraw the board in place until Ctrl+C (plain lines when not on a terminal)."""
    out = out or sys.stdout
    tty = out.isatty() and not _no_color()
    just_fix_windows_console()
    if tty:
        out.write("\x1b[?1049h\x1b[2J")
    shown: dict[str, Any] = {}
    try:
        while not stop.is_set():
            drain(view, inbox, 0.5)
            if tty:
                size = shutil.get_terminal_size((100, 30))
                lines = frame(view, size.columns, size.lines, title)
                out.write("\x1b[?25l\x1b[H" + "\x1b[K\r\n".join(lines) + "\x1b[K\x1b[J")
            else:
                for line in view.changes(shown):
                    out.write(f"{stamp()} {line}\n")
            out.flush()
    finally:
        if tty:
            out.write("\x1b[?25h\x1b[?1049l")
            out.flush()
    return 0
