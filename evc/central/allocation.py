"""How a site's power limit is shared among its running supplies: one pure function.

Each supply asks for at most its cap: the smaller of its CP's maximum and its EV's own
request (the driver's ``--max-kw``). Without a limit every supply gets its cap. With one,
the supplies are taken in the order they arrived (first come, first served) and the
limit is shared by water-filling: equal shares, none above its cap, what a capped one
leaves handed on to the others. A supply is admitted only if, with it, every admitted
supply still gets at least its minimum (``min_kw``, or its cap when that is smaller); the
first one that does not fit waits with 0 kW, and so does every later one, until power
frees up.

Properties (tests/unit/test_allocation.py, with Hypothesis): the sum never exceeds the
limit; no share exceeds its cap; every share is 0 or at least its minimum; the power is
used (the sum is the limit, or every admitted supply has its cap, and a waiting one would
push some share under its minimum); the result depends on the supplies, not on the order
of the list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DEFAULT_MIN_KW = 4.2  # 6 A on three phases at 230 V
EPSILON = 1e-9


@dataclass(frozen=True)
class Demand:
    session_id: str
    cap_kw: float  # min(the CP's maximum, the EV's request)
    arrived: float  # when the supply was authorized: earlier ones are served first


def minimum(demand: Demand, min_kw: float) -> float:
    """The least share worth giving: the site's minimum, or the cap when it is smaller."""
    return min(min_kw, demand.cap_kw)


def water_fill(limit_kw: float, caps: Sequence[float]) -> list[float]:
    """Equal shares of ``limit_kw``, none above its cap, the remainder handed on (in the
    order of ``caps``)."""
    order = sorted(range(len(caps)), key=lambda i: caps[i])
    shares = [0.0] * len(caps)
    left, count = max(0.0, limit_kw), len(caps)
    for i in order:
        share = min(caps[i], left / count)
        shares[i] = share
        left -= share
        count -= 1
    return shares


def allocate(limit_kw: float | None, demands: Iterable[Demand],
             min_kw: float = DEFAULT_MIN_KW) -> dict[str, float]:
    """Each supply's share in kW (0: it waits), by session id."""
    queue = sorted(demands, key=lambda d: (d.arrived, d.session_id))
    if limit_kw is None:
        return {d.session_id: max(0.0, d.cap_kw) for d in queue}
    admitted: list[Demand] = []
    shares: list[float] = []
    waiting: list[Demand] = []
    for demand in queue:
        if demand.cap_kw <= EPSILON:  # asks for nothing: holds no place in the queue
            waiting.append(demand)
            continue
        if any(w.cap_kw > EPSILON for w in waiting):  # nobody jumps the queue
            waiting.append(demand)
            continue
        trial = admitted + [demand]
        filled = water_fill(limit_kw, [d.cap_kw for d in trial])
        if all(s + EPSILON >= minimum(d, min_kw) for d, s in zip(trial, filled, strict=True)):
            admitted, shares = trial, filled
        else:
            waiting.append(demand)
    out = {d.session_id: s for d, s in zip(admitted, shares, strict=True)}
    out.update({d.session_id: 0.0 for d in waiting})
    return out
