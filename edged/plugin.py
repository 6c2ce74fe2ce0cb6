"""The small async interfaces every driver and uplink implements, and what they are given."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

from edged.model import Batch, Sample

if TYPE_CHECKING:
    from edged.commands import CommandGate
    from edged.config import Config


@dataclass(frozen=True, slots=True)
class PluginContext:
    """What the core hands a plugin: no globals, so two daemons can share one process in tests.

    The optional services are None where they do not exist (a CLI tool, a contract test): a plugin
    must then work without them, e.g. refuse every write when there is no command gate.
    """

    gateway_id: str
    data_dir: Path
    log: logging.Logger
    config: Config | None = None  # the whole daemon config (an uplink mirroring devices reads their tags)
    commands: CommandGate | None = None  # the one way to write to a device (edged.commands)
    latest: Callable[[], Awaitable[list[Sample]]] | None = None  # each tag's newest stored sample


class Driver(Protocol):
    """Reads one device. `__aenter__` connects (raising Transient or Permanent); `samples` yields
    batches until cancelled, raising Transient when the connection is lost."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def samples(self) -> AsyncIterator[list[Sample]]: ...


class Uplink(Protocol):
    """Forwards batches to one peer. `send` returns only once the peer acknowledged the batch; it
    raises Transient (keep and retry), Permanent (the peer rejects this batch) or Partial."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def send(self, batch: Batch) -> None: ...


# Optional uplink methods the Sender uses when present (not part of the Protocol, so plugins stay
# minimal): `is_closed() -> bool`; see edged.delivery.Sender.


@runtime_checkable
class Counted(Protocol):
    """A driver or uplink that counts its own problems and work (requests, retries, refusals...).
    The core shows them in status.json and /metrics, summed over the plugin's reconnects."""

    def counters(self) -> Mapping[str, float]: ...


class Tally:
    """A plugin's counters summed over its instances: each reconnect builds a new driver/uplink
    whose counts start at 0, while the figures shown must only ever grow."""

    def __init__(self) -> None:
        self._past: Counter[str] = Counter()
        self._current: Counted | None = None

    def attach(self, plugin: object) -> None:
        self.detach()
        self._current = plugin if isinstance(plugin, Counted) else None

    def detach(self) -> None:
        if self._current is not None:
            self._past.update(dict(self._current.counters()))
            self._current = None

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = dict(self._past)
        if self._current is not None:
            for k, v in self._current.counters().items():
                out[k] = out.get(k, 0) + v
        return out


@dataclass(slots=True)
class Backoff:
    """Capped exponential backoff with full jitter, so a hundred gateways do not retry in step."""

    initial: float = 0.5
    cap: float = 60.0
    factor: float = 2.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempt = 0
