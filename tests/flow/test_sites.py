"""A site's power limit shared by a real central among real engines (real broker): three
CPs of 22 kW on a 30-kW site get 10/10/10, then 15/15, then 8/0 when the limit drops to
8 kW; the site never counts more than its limit, and the tickets add up to what the
engines metered."""

from __future__ import annotations

import time
from pathlib import Path

from evc.protocol import messages as m
from tests.helpers import wait_for
from tests.network import Network

CPS = ("CP-01", "CP-02", "CP-03")


def site_network(kafka, prefix, tmp_path, procs) -> tuple[Network, Path]:
    """Central (open level) with the three CPs on site P1, limited to 30 kW, all up."""
    net = Network(kafka, prefix, tmp_path, procs)
    net.cps_file.write_text("".join(f"{cp},Garage {i},0.30,P1\n" for i, cp in enumerate(CPS)))
    sites = tmp_path / "sites.csv"
    sites.write_text("id,max_kw\nP1,30\n")
    net.start_central("--sites", str(sites), "--security", "open")
    for cp in CPS:
        net.start_cp(cp)
    return net, sites


def shares(observer, sessions: dict[str, str]) -> dict[str, float | None]:
    """The share each supply's engine was last ordered (its start, then set_power)."""
    out: dict[str, float | None] = {}
    for cp, sid in sessions.items():
        orders = observer.of(m.SetPower, session_id=sid)
        starts = observer.of(m.StartSupply, session_id=sid)
        out[cp] = orders[-1].kw if orders else (starts[-1].kw if starts else None)
    return out


def obeyed(observer, sessions: dict[str, str]) -> dict[str, float | None]:
    """What each engine last reported supplying."""
    out: dict[str, float | None] = {}
    for cp, sid in sessions.items():
        readings = [t for t in observer.of(m.Telemetry, session_id=sid) if not t.final]
        out[cp] = readings[-1].kw if readings else None
    return out


def test_a_site_limit_is_shared_and_kept(kafka, prefix, tmp_path, procs, observer):
    net, _ = site_network(kafka, prefix, tmp_path, procs)
    drivers = {cp: net.start_driver(f"D-{i}", [cp], "--charge-seconds",
                                    "12" if cp == "CP-01" else "600")
               for i, cp in enumerate(CPS, start=1)}
    for cp, d in drivers.items():
        d.wait_line(f"AUTHORIZED at {cp}", timeout=20)
    sessions = {cp: observer.wait(m.StartSupply, cp_id=cp)[0].session_id for cp in CPS}
    want = {"CP-01": 10.0, "CP-02": 10.0, "CP-03": 10.0}
    wait_for(lambda: shares(observer, sessions) == want and obeyed(observer, sessions) == want,
             20, lambda: f"10/10/10, got {shares(observer, sessions)} "
             f"obeyed {obeyed(observer, sessions)}\n{net.context()}")
    drivers["CP-01"].wait_line("TICKET at CP-01", timeout=30)
    rest = {cp: sessions[cp] for cp in ("CP-02", "CP-03")}
    wait_for(lambda: obeyed(observer, rest) == {"CP-02": 15.0, "CP-03": 15.0}, 20,
             lambda: f"15/15, got {obeyed(observer, rest)}\n{net.context()}")
    net.central.send("site P1 limit 8")
    wait_for(lambda: sorted(obeyed(observer, rest).values()) == [0.0, 8.0], 20,
             lambda: f"8 and waiting, got {obeyed(observer, rest)}\n{net.context()}")
    waiting = next(cp for cp, kw in obeyed(observer, rest).items() if kw == 0.0)
    drivers[waiting].wait_line("waiting for power (en espera)", timeout=10)
    for cp in ("CP-02", "CP-03"):
        net.central.send(f"stop {cp}")
    for cp in ("CP-02", "CP-03"):
        drivers[cp].wait_line(f"TICKET at {cp}", timeout=30)
    tickets = {t.session_id: t for t in observer.wait(m.Ticket, count=3, timeout=20)}
    for sid in sessions.values():  # every ticket is what the engine metered
        (final,) = [t for t in observer.of(m.Telemetry, session_id=sid) if t.final]
        assert tickets[sid].consumo_kwh == final.consumo_kwh > 0
        assert tickets[sid].importe_eur == round(final.consumo_kwh * 0.30, 2)


def test_kills_while_shares_change_keep_the_limit_and_every_ticket(kafka, prefix, tmp_path,
                                                                  procs, observer):
    """kill -9 of central and of an engine while supplies start and end on a 30-kW site:
    the power the engines report never adds up to more than 30 kW, each supply gets one
    ticket, and each ticket is what its engine metered."""
    net, sites = site_network(kafka, prefix, tmp_path, procs)
    drivers = [net.start_driver(f"D-{i}", [cp] * 3, "--charge-seconds", "5", "--pause", "1",
                                "--timeout", "60")
               for i, cp in enumerate(CPS, start=1)]
    observer.wait(m.StartSupply, count=3, timeout=30)
    net.central.kill()  # kill -9 while three supplies share the site
    net.start_central("--sites", str(sites), "--security", "open")
    observer.wait(m.Ticket, count=3, timeout=60)

    def supplying_cp02() -> bool:
        ticketed = {t.session_id for t in observer.of(m.Ticket)}
        return any(t.session_id not in ticketed and not t.final
                   for t in observer.of(m.Telemetry, cp_id="CP-02"))
    wait_for(supplying_cp02, 30, lambda: f"a supply at CP-02\n{net.context()}")
    net.engines["CP-02"].kill()  # and an engine mid-supply
    killed_at = time.time()  # from here its supply (if any) draws nothing
    net.start_engine("CP-02")
    for d in drivers:
        assert d.popen.wait(120) == 0, d.output[-2000:]
    starts = {s.session_id for s in observer.of(m.StartSupply)}
    tickets = observer.wait(m.Ticket, count=len(starts), timeout=60)
    assert sorted(t.session_id for t in tickets) == sorted(starts)  # one each, none twice
    last: dict[str, float] = {}
    dead = {t.session_id for t in observer.of(m.Telemetry, cp_id="CP-02") if t.ts <= killed_at}
    # in the order the engines sent them (one machine, one clock)
    for reading in sorted(observer.of(m.Telemetry), key=lambda t: t.ts):
        if reading.ts > killed_at:  # the killed engine's last reading no longer holds
            for sid in dead:
                last.pop(sid, None)
        if reading.final:
            last.pop(reading.session_id, None)
            ticket = next(t for t in tickets if t.session_id == reading.session_id)
            assert ticket.consumo_kwh >= reading.consumo_kwh  # never under-billed
        elif reading.kw is not None:
            last[reading.session_id] = reading.kw
            assert sum(last.values()) <= 30 + 0.01, _over(observer, reading, last)


def _over(observer, reading, last) -> str:
    """What the engines were told and said around a reading that put the site over."""
    lines = [f"over at {reading.cp_id} {reading.session_id[-6:]} ts {reading.ts:.3f}: "
             + ", ".join(f"{sid[-6:]}={kw}" for sid, kw in last.items())]
    sids = set(last)
    for kind in (m.StartSupply, m.SetPower, m.EndSupply):
        for o in observer.of(kind):
            if o.session_id in sids:
                lines.append(f"  {kind.__name__} {o.cp_id} {o.session_id[-6:]} ts {o.ts:.3f} "
                             f"kw {getattr(o, 'kw', '')} seq {getattr(o, 'seq', '')} "
                             f"id {o.msg_id[-6:]}")
    for t in sorted(observer.of(m.Telemetry), key=lambda t: t.ts):
        if t.session_id in sids and abs(t.ts - reading.ts) < 8:
            lines.append(f"  reading {t.cp_id} {t.session_id[-6:]} ts {t.ts:.3f} kw {t.kw} "
                         f"order {t.power_order[-6:]} final {t.final}")
    return "\n".join(lines)
