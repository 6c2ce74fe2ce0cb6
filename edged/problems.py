"""How a driver reports field problems: count each one, log it once, give up after N silent polls.

A device that answers with a bad frame on every poll at 10 Hz must not write ten log lines a
second, yet every occurrence must be counted (the counters reach status.json and /metrics), and a
device that stops answering altogether must be reconnected after a few polls rather than polled
forever. Modbus, HART and analog drivers share these rules through `Problems`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Hashable

from edged.errors import Transient


class Problems:
    """Per-device problem bookkeeping; `counts` is what the driver's `counters()` returns."""

    def __init__(self, device: str, log: logging.Logger, *, max_failed_polls: int = 0) -> None:
        self.device = device
        self.log = log
        self.max_failed_polls = max_failed_polls  # 0: never give up on silence
        self.counts: Counter[str] = Counter()
        self.failed_polls = 0
        self._open: dict[Hashable, tuple[str, str]] = {}  # where -> (kind, what it is called in the log)

    def report(self, where: Hashable, kind: str, reason: str, *, what: str | None = None) -> None:
        """A problem of `kind` at a place (a request, a tag, "burst"): logged when it first
        appears there or changes kind, not on every poll. Counting is the caller's choice (a
        retry that succeeds may count differently from a failure)."""
        label = what if what is not None else str(where)
        if self._open.get(where, ("", ""))[0] != kind:
            self._open[where] = (kind, label)
            self.log.warning("%s: %s: %s", self.device, label, reason, extra={"device": self.device})

    def resolved(self, where: Hashable) -> None:
        """The place works again: one line saying so, if it had a problem."""
        gone = self._open.pop(where, None)
        if gone is not None:
            self.log.info("%s: %s: recovered", self.device, gone[1], extra={"device": self.device})

    def poll_answered(self) -> None:
        self.failed_polls = 0

    def poll_unanswered(self, message: Callable[[int], str]) -> None:
        """One more poll without any answer; after `max_failed_polls` in a row the connection is
        given up (Transient, so the supervisor reconnects with backoff). `message(n)` says why."""
        self.failed_polls += 1
        if self.max_failed_polls and self.failed_polls >= self.max_failed_polls:
            raise Transient(message(self.failed_polls))
