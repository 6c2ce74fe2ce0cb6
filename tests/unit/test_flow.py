"""The in-flight budget (edged.flow) against a simulated link: a bottleneck rate and a round trip."""

from __future__ import annotations

import heapq

import pytest

from edged.flow import WINDOW_S, LinkEstimate, Stamp


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(
    rate: float, rtt: float, batch: int, seconds: float, *, live_every: float = 0.0, live: int = 50
) -> tuple[LinkEstimate, list[float], int]:
    """A sender that keeps the estimator's budget of bulk batches in flight over a link that
    serialises `rate` samples/s behind an unbounded queue (a cellular modem) and adds `rtt`; with
    `live_every`, a small live batch goes out that often too. Returns the estimator, the bulk round
    trips seen after the first 5 s, and the bulk samples delivered after them."""
    clock = Clock()
    link = LinkEstimate(clock)
    free_at = 0.0  # when the bottleneck has sent everything queued so far
    acks: list[tuple[float, int, int, bool, Stamp]] = []  # (when, order, samples, bulk, stamp): a heap
    bulk_n = in_flight = delivered = order = 0
    rtts: list[float] = []
    next_live = live_every or float("inf")

    def send(n: int, bulk: bool) -> None:
        nonlocal free_at, order, in_flight, bulk_n
        stamp = link.sent(bulk=bulk, bulk_in_flight=bulk_n)
        free_at = max(free_at, clock.now) + n / rate
        heapq.heappush(acks, (free_at + rtt, order, n, bulk, stamp))
        order += 1
        in_flight += n
        bulk_n += bulk

    while clock.now < seconds:
        while clock.now < seconds and (
            not in_flight or link.bulk_allowed(bulk_in_flight=bulk_n, in_flight=in_flight, floor=batch)
        ):
            send(batch, True)
        if next_live < acks[0][0]:
            clock.now = next_live
            send(live, False)
            next_live += live_every
            continue
        when, _, n, bulk, stamp = heapq.heappop(acks)
        clock.now = when
        link.acked(stamp, n)
        in_flight -= n
        bulk_n -= bulk
        if when > 5.0 and bulk:
            rtts.append(when - stamp.at)
            delivered += n
    return link, rtts, delivered


@pytest.mark.parametrize(
    ("rate", "rtt", "live_every"),
    [
        (20_000.0, 0.1, 0.0),
        (200_000.0, 0.1, 0.0),
        (20_000.0, 0.3, 0.0),
        (5_000.0, 0.6, 0.0),
        (100_000.0, 0.001, 0.0),
        (20_000.0, 0.3, 0.1),  # live batches always in flight: probing must not starve the backlog
        (200_000.0, 0.6, 0.05),
    ],
)
def test_the_budget_fills_the_link_with_about_one_round_trip_of_queue(
    rate: float, rtt: float, live_every: float
) -> None:
    batch = 500
    link, rtts, delivered = simulate(rate, rtt, batch, 65.0, live_every=live_every)
    live_share = 50 / live_every / rate if live_every else 0.0
    used = delivered / 60.0 / rate + live_share
    assert used > 0.9, f"the link is {used:.0%} used"
    bare = rtt + batch / rate  # a batch alone on the link
    median = sorted(rtts)[len(rtts) // 2]
    # GAIN 2 keeps about one bandwidth x delay queued; a budget that crept up (queue mistaken
    # for round trip) would grow without bound
    assert median < 2.5 * bare + 2 * batch / rate, f"round trips {median:.3f} s against {bare:.3f} s bare"
    assert max(rtts) < 4 * bare + 4 * batch / rate
    assert link.probes >= 60 / WINDOW_S / 2, "the round trip is probed again now and then"


def test_the_budget_starts_at_one_batch_and_doubles_per_round_trip() -> None:
    clock = Clock()
    link = LinkEstimate(clock)
    assert link.budget(100) == 100, "nothing measured yet: one batch"
    budgets = []
    for _ in range(5):  # a round trip of 0.1 s; the link never the bottleneck
        b = link.budget(100)
        budgets.append(b)
        stamps = [link.sent(bulk=True, bulk_in_flight=i) for i in range(b // 100)]
        clock.now += 0.1
        for s in stamps:
            link.acked(s, 100)
    assert budgets == [100, 200, 400, 800, 1600]


def test_a_probe_waits_for_the_bulk_in_flight_and_takes_its_round_trip_as_the_new_minimum() -> None:
    clock = Clock()
    link = LinkEstimate(clock)
    link.acked(link.sent(bulk=True, bulk_in_flight=0), 100)  # an instant round trip...
    clock.now = 0.05
    link.acked(link.sent(bulk=True, bulk_in_flight=0), 100)  # ...0.05 s is not shorter: the minimum stays
    assert link.rtt == pytest.approx(1e-6)
    clock.now = WINDOW_S + 1.0
    stamp = link.sent(bulk=True, bulk_in_flight=3)  # the minimum is too old: probing starts
    assert link.probing and not stamp.probe, "not into a link with bulk in flight"
    assert not link.bulk_allowed(bulk_in_flight=3, in_flight=300, floor=100), "no more bulk until it is acked"
    live = link.sent(bulk=False, bulk_in_flight=0)
    assert not live.probe, "live batches go on meanwhile, and do not end the probe"
    assert link.bulk_allowed(bulk_in_flight=0, in_flight=5, floor=100), "a live batch in flight does not block it"
    probe = link.sent(bulk=True, bulk_in_flight=0)
    assert probe.probe
    clock.now += 0.2
    link.acked(probe, 100)
    assert not link.probing
    assert link.rtt == pytest.approx(0.2), "the probe's round trip replaces the expired minimum"


def test_rates_older_than_the_window_are_forgotten() -> None:
    clock = Clock()
    link = LinkEstimate(clock)
    s = link.sent(bulk=True, bulk_in_flight=0)
    clock.now = 0.01
    link.acked(s, 10_000)  # 1 M samples/s
    assert link.rate == pytest.approx(1e6)
    clock.now = WINDOW_S + 1
    s = link.sent(bulk=True, bulk_in_flight=0)
    clock.now += 1.0
    link.acked(s, 100)
    assert link.rate == pytest.approx(100.0)
