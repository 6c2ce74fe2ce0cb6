"""How much one uplink may have in flight: the link's bandwidth x round trip, measured from acks.

A window of batches in flight fills a long, fat link (cellular, satellite, a VPN) that stop-and-wait
leaves mostly idle. Too much in flight only queues up in TCP buffers and middleboxes, and a live
batch then waits behind all of it. So the window is sized like BBR sizes a congestion window, in
miniature: the delivery rate (samples acknowledged per second, the best seen over the last ten
seconds) times the shortest round trip seen, doubled, gives a budget that keeps the link busy with
about one round trip of queue. The budget starts at one batch and doubles every round trip while the
link keeps up, so it needs no configured bandwidth. A queue that never drains would hide the true
round trip (every ack then measures the queue too), so when the shortest round trip is ten seconds
old the estimator probes: no new bulk (historical) batch goes out until those in flight are
acknowledged, then one does, and its round trip is the new minimum. Live batches keep flowing
meanwhile: they are small, and the link must not wait for a quiet moment that never comes.

No TCP-level measurement is used on purpose: acknowledgements are what count here (a PUBACK, a 2xx),
and they include the peer's own processing, which the window must cover too.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 10.0  # how long a best rate / shortest round trip is remembered
GAIN = 2.0  # budget = GAIN x rate x round trip: the link stays busy while acks are on their way


@dataclass(frozen=True, slots=True)
class Stamp:
    """What the estimator noted when a batch was sent, handed back with its acknowledgement."""

    at: float
    delivered: int  # samples acknowledged when it was sent
    probe: bool  # sent into a link emptied of bulk, to measure the bare round trip


class LinkEstimate:
    """Bandwidth-delay product of one uplink's path in samples, from send and ack times."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.delivered = 0  # samples acknowledged in all
        self._rates: deque[tuple[float, float]] = deque()  # (when, samples/s), for a windowed max
        self._rtt: float | None = None  # shortest round trip since _rtt_at
        self._rtt_at = 0.0
        self.probing = False  # bulk waits for an empty link, then one probe batch, until it is acked
        self.probes = 0

    def sent(self, *, bulk: bool, bulk_in_flight: int) -> Stamp:
        """Note a batch going out now: `bulk` (historical) or not, with `bulk_in_flight` bulk
        batches already outstanding."""
        now = self.clock()
        if self._rtt is not None and now - self._rtt_at > WINDOW_S:
            self.probing = True
        probe = self.probing and bulk and bulk_in_flight == 0
        if probe:
            self.probes += 1
        return Stamp(now, self.delivered, probe)

    def acked(self, stamp: Stamp, samples: int) -> None:
        """A batch of `samples` sent at `stamp` was acknowledged now."""
        now = self.clock()
        self.delivered += samples
        rtt = max(now - stamp.at, 1e-6)
        if self._rtt is None or rtt <= self._rtt or stamp.probe:
            self._rtt, self._rtt_at = rtt, now
            if stamp.probe:
                self.probing = False
        rate = (self.delivered - stamp.delivered) / rtt
        rates = self._rates  # a monotonic deque: its front is the best rate of the window
        while rates and rates[-1][1] <= rate:
            rates.pop()
        rates.append((now, rate))
        while now - rates[0][0] > WINDOW_S:
            rates.popleft()

    @property
    def rtt(self) -> float | None:
        """The shortest round trip seen lately, seconds (None before the first ack)."""
        return self._rtt

    @property
    def rate(self) -> float:
        """The best delivery rate of the last WINDOW_S, samples/s (0 before the first ack)."""
        now = self.clock()
        while self._rates and now - self._rates[0][0] > WINDOW_S:
            self._rates.popleft()
        return self._rates[0][1] if self._rates else 0.0

    def bulk_allowed(self, *, bulk_in_flight: int, in_flight: int, floor: int) -> bool:
        """Whether another bulk batch may go out now, with `in_flight` samples outstanding: within
        the budget; while probing only into a link with no bulk in flight (that batch is the probe)."""
        if self.probing:
            return bulk_in_flight == 0
        return in_flight < self.budget(floor)

    def budget(self, floor: int) -> int:
        """Samples that may be in flight: GAIN x rate x round trip, at least `floor` (one batch);
        `floor` before anything was measured."""
        if self._rtt is None:
            return floor
        return max(floor, round(GAIN * self.rate * self._rtt))
