"""The small async interfaces every driver and uplink implements, and what they are given."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar, runtime_checkable

from edged.model import Batch, Sample, Value

if TYPE_CHECKING:
    from buffer.history import TagHistory
    from edged.commands import CommandGate
    from edged.config import Config, DeviceBase, UplinkBase


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
    history: TagHistory | None = None  # one tag's stored samples by source time (buffer.history)


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


# ----------------------------------------------------------------------------------------- capabilities
# Optional, each a Protocol of its own so a plugin implements only what it can; the core asks with
# isinstance (runtime_checkable), and mypy checks the signatures where a plugin declares its spec.


@runtime_checkable
class Writable(Protocol):
    """A driver that can write a setpoint (through the command gate only): write one tag, in
    engineering units, and read it back. Returns the read-back Sample (or the bare value); raises
    Permanent (with `.status`, an OPC UA StatusCode, when it has one) for a refusal,
    edged.errors.ReadbackMismatch, or Transient when the device did not answer."""

    async def write(self, tag: str, value: Value) -> Sample | Value: ...


@runtime_checkable
class ClosedAware(Protocol):
    """An uplink that can tell its connection died while idle, so the Sender replaces it before
    data has to wait on it (checked about once a second while there is nothing to send)."""

    def is_closed(self) -> bool: ...


@runtime_checkable
class Windowed(Protocol):
    """An uplink that takes several batches in flight: `send` may be called again before earlier
    calls returned, up to `window()` at once (the peer's own limit, e.g. an MQTT 5 broker's Receive
    Maximum; the Sender also applies the config's `max_inflight`). Each send must put its batch on
    the connection before its first await, so batches reach the peer in the order of the calls;
    an uplink that cannot promise that order (HTTP requests over several connections) says so in
    its README. Counting `payload_bytes` (Counted) lets the Sender size batches and the window
    in bytes."""

    def window(self) -> int: ...


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


# ----------------------------------------------------------------------------------------- specs
# Every plugin package ends with one declaration, `plugin = DriverSpec(...)` or `UplinkSpec(...)`:
# the registry loads it by the config's `type`, and mypy --strict checks there that the package's
# Config, Driver/Uplink and optional hooks fit these types (docs/plugins.md).

C = TypeVar("C", bound="DeviceBase")
U = TypeVar("U", bound="UplinkBase")


@dataclass(frozen=True, slots=True)
class DriverSpec(Generic[C]):
    """A driver package: its config struct and how to build a driver from it."""

    config: type[C]
    driver: Callable[[C, PluginContext], Driver]

    @property
    def can_write(self) -> bool:
        """The driver class implements Writable (checked on the class, without building one)."""
        return isinstance(self.driver, type) and issubclass(self.driver, Writable)


CommandListener = Callable[[U, PluginContext, "CommandGate"], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class UplinkSpec(Generic[U]):
    """An uplink package: its config struct, how to build an uplink, and optionally a command
    listener the daemon runs as a task of its own while the uplink's config takes commands
    (`UplinkBase.takes_commands`)."""

    config: type[U]
    uplink: Callable[[U, PluginContext], Uplink]
    serve_commands: CommandListener[U] | None = None
