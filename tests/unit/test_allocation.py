"""The sharing of a site's limit (central/allocation.py): examples, then its properties."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from evc.central.allocation import Demand, allocate, minimum, water_fill

TOL = 1e-6


def demands(*caps: float) -> list[Demand]:
    return [Demand(f"s{i}", cap, float(i)) for i, cap in enumerate(caps)]


def test_the_examples_of_the_issue():
    three = demands(22, 22, 22)
    assert allocate(30, three) == {"s0": 10, "s1": 10, "s2": 10}
    assert allocate(30, three[1:]) == {"s1": 15, "s2": 15}
    assert allocate(8, three[1:]) == {"s1": 8, "s2": 0}  # two minimums do not fit in 8
    assert allocate(None, three) == {"s0": 22, "s1": 22, "s2": 22}


def test_a_capped_supply_hands_its_rest_on():
    assert water_fill(30, [5, 22, 22]) == [5, 12.5, 12.5]
    shares = allocate(30, demands(22, 5, 22))
    assert shares == {"s0": 12.5, "s1": 5, "s2": 12.5}


def test_first_come_first_served_when_power_is_short():
    shares = allocate(10, demands(22, 22, 22))
    assert shares == {"s0": 5, "s1": 5, "s2": 0}
    # a small EV behind a waiting one waits too: nobody jumps the queue
    shares = allocate(10, [*demands(22, 22, 22), Demand("late", 1.0, 9.0)])
    assert shares["late"] == 0


def test_an_ev_that_asks_less_than_the_minimum_gets_what_it_asks():
    assert allocate(30, demands(3.0)) == {"s0": 3.0}
    assert minimum(Demand("x", 3.0, 0), 4.2) == 3.0


caps = st.floats(min_value=0.0, max_value=350.0, allow_nan=False)
lists = st.lists(caps, max_size=25)
limits = st.one_of(st.none(), st.floats(min_value=0.0, max_value=1000.0, allow_nan=False))
mins = st.floats(min_value=0.5, max_value=11.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(lists, limits, mins, st.randoms(use_true_random=False))
def test_properties(cap_list, limit, min_kw, rnd: random.Random):
    ds = [Demand(f"s{i}", c, float(rnd.randint(0, 5))) for i, c in enumerate(cap_list)]
    shares = allocate(limit, ds, min_kw)
    assert set(shares) == {d.session_id for d in ds}
    by_id = {d.session_id: d for d in ds}
    for sid, share in shares.items():
        assert 0 <= share <= by_id[sid].cap_kw + TOL  # no share over its cap
        assert share == 0 or share + TOL >= minimum(by_id[sid], min_kw)  # 0, or its minimum
    if limit is None:
        assert all(shares[d.session_id] == max(0.0, d.cap_kw) for d in ds)
        return
    total = sum(shares.values())
    assert total <= limit + TOL  # never over the limit
    served = [d for d in ds if shares[d.session_id] > 0]
    waiting = [d for d in ds if shares[d.session_id] == 0 and d.cap_kw > 1e-9]
    # the power is used: all of the limit, or every served supply has its cap
    assert total >= limit - TOL or all(shares[d.session_id] >= d.cap_kw - TOL for d in served)
    if waiting:  # the first waiting one would push someone under a minimum
        first = min(waiting, key=lambda d: (d.arrived, d.session_id))
        trial = [d for d in ds if shares[d.session_id] > 0] + [first]
        filled = water_fill(limit, [d.cap_kw for d in trial])
        assert any(s + 1e-9 < minimum(d, min_kw) for d, s in zip(trial, filled, strict=True))
    shuffled = list(ds)
    rnd.shuffle(shuffled)
    assert allocate(limit, shuffled, min_kw) == shares  # the list's order does not matter
