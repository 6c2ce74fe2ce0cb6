"""The only module that talks to python-snap7: the connection, its thread, and error mapping.

python-snap7's `Client` is blocking: every call sits in a socket `recv` until the PLC answers (in
3.x a pure-Python socket client, in 2.x a ctypes call into libsnap7). So each connection gets one
worker thread of its own and every call on it runs there, one after the other:

* the event loop never blocks on a slow or dead PLC, and one PLC never holds up another;
* calls on one connection are serialised by construction (one S7 job in flight, matching the
  single job the CPU grants a PG connection), without a lock to forget;
* a call abandoned by a cancelled or timed-out coroutine still finishes in its thread (bounded by
  the socket timeout) before the next one starts, so two jobs never interleave on the socket.

What goes wrong becomes one of two things, so nothing above this module sees snap7:

* a `Failure` for one job (timeout, garbled answer, the PLC refusing the job or an item). After a
  timeout or a garbled answer the connection is `broken`: a late answer would otherwise be read
  as the answer to the next job, so the driver gives the connection up (Transient) after the poll.
* `LinkDown` when the connection is gone (refused, reset, closed by the PLC).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from snap7.client import Client
from snap7.error import S7ConnectionError, S7Error, S7TimeoutError, get_protocol_error_message
from snap7.type import Parameter

from drivers.s7.pdu import HeaderError, item_reason
from edged.model import Status

log = logging.getLogger("edged.s7")
T = TypeVar("T")

# header error codes (error class << 8 | code) that say the CPU will not do this job at all
NOT_PERMITTED = frozenset({0x8104, 0x8500, 0xD602})  # function/context not supported, PDU size, protection


@dataclass(frozen=True, slots=True)
class Failure:
    """One job (or one item of it) that produced no data. `answered`: the PLC itself replied."""

    status: Status
    kind: str  # a stable counter key: "timeout", "bad_frame", "item_05", "job_8104", ...
    reason: str
    answered: bool


class LinkDown(Exception):
    """The connection is gone; nothing on it can succeed now."""


def no_answer(timeout: float) -> Failure:
    return Failure(Status.BAD_TIMEOUT, "timeout", f"no answer within {timeout:g}s", False)


def bad_frame(detail: str) -> Failure:
    return Failure(Status.BAD_COMMUNICATION_ERROR, "bad_frame", f"malformed answer: {detail}", False)


# item return codes -> status (0x05 and 0x0A: the configured map does not match the PLC's memory)
_ITEM_STATUS: dict[int, Status] = {
    0x01: Status.BAD_DEVICE_FAILURE,
    0x03: Status.BAD_CONFIGURATION_ERROR,
    0x05: Status.BAD_CONFIGURATION_ERROR,
    0x06: Status.BAD_CONFIGURATION_ERROR,
    0x07: Status.BAD_CONFIGURATION_ERROR,
    0x0A: Status.BAD_CONFIGURATION_ERROR,
}


def item_failure(code: int) -> Failure:
    return Failure(_ITEM_STATUS.get(code, Status.BAD_DEVICE_FAILURE), f"item_{code:02x}", item_reason(code), True)


def job_failure(exc: HeaderError) -> Failure:
    hint = ""
    if exc.code == 0x8104:
        hint = " (S7-1200/1500: enable 'Permit access with PUT/GET' and use DBs without optimised block access)"
    status = Status.BAD_CONFIGURATION_ERROR if exc.code in NOT_PERMITTED else Status.BAD_DEVICE_FAILURE
    text = get_protocol_error_message(exc.code)
    return Failure(status, f"job_{exc.code:04x}", f"job refused with error 0x{exc.code:04X}: {text}{hint}", True)


class Link:
    """One ISO-on-TCP connection to one CPU, with its own worker thread."""

    def __init__(
        self, name: str, host: str, port: int, rack: int, slot: int, connection_type: int, pdu_size: int
    ) -> None:
        self.name = name
        self.where = f"{host}:{port} rack {rack} slot {slot}"
        self._target = (host, rack, slot, port)
        self._connection_type = connection_type
        self._pdu_request = pdu_size
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"s7-{name}")
        self._client: Client | None = None
        self._ref = 0
        self.pdu = 0  # negotiated at open()
        self.exchanges = 0  # jobs sent: requests per cycle are counted from this
        self.broken: str | None = None  # why the connection can no longer be trusted

    def next_ref(self) -> int:
        """A PDU reference for the next job (1..65535): a reply must carry it back."""
        self._ref = self._ref % 0xFFFF + 1
        return self._ref

    async def _run(self, fn: Callable[[], T], limit: float) -> T:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(limit):
            return await loop.run_in_executor(self._pool, fn)

    async def open(self, timeout: float) -> None:
        """Connect (TCP, COTP with the rack/slot TSAP, PDU negotiation); LinkDown when it fails."""

        def connect() -> int:
            client = Client()
            client.set_connection_type(self._connection_type)
            client.set_param(Parameter.PDURequest, self._pdu_request)
            client.connect(*self._target)
            conn = client.connection  # snap7 connects with a 5 s socket timeout; ours applies from here
            if conn is not None:
                conn.timeout = timeout
                if conn.socket is not None:
                    conn.socket.settimeout(timeout)
            self._client = client
            return min(int(client.get_pdu_length()), self._pdu_request)  # never more than we asked

        try:
            self.pdu = await self._run(connect, max(timeout, 5.0) + 1.0)
        except TimeoutError:
            raise LinkDown(f"cannot connect to {self.where}: no answer") from None
        except S7Error as exc:
            raise LinkDown(f"cannot connect to {self.where}: {exc} (check host, port, rack and slot)") from None
        except OSError as exc:
            raise LinkDown(f"cannot connect to {self.where}: {exc.strerror or exc}") from None

    async def exchange(self, request: bytes, timeout: float) -> bytes | Failure:
        """Send one job PDU and return the answer PDU, or why there is none."""
        client = self._client
        if client is None or self.broken is not None:
            raise LinkDown(f"connection to {self.where} is {self.broken or 'closed'}")
        self.exchanges += 1
        try:
            return bytes(await self._run(lambda: client.iso_exchange_buffer(bytearray(request)), timeout + 1.0))
        except (TimeoutError, S7TimeoutError):
            self.broken = "broken after a timeout"
            return no_answer(timeout)
        except S7ConnectionError as exc:
            self.broken = "lost"
            raise LinkDown(f"connection to {self.where} lost: {exc}") from None
        except OSError as exc:
            self.broken = "lost"
            raise LinkDown(f"connection to {self.where} lost: {exc.strerror or exc}") from None
        except S7Error as exc:  # an answer the transport could not frame (TPKT/COTP)
            self.broken = "broken after a malformed answer"
            return bad_frame(str(exc))

    def garbled(self, detail: str) -> Failure:
        """An answer that did not parse: the stream can no longer be trusted."""
        self.broken = "broken after a malformed answer"
        return bad_frame(detail)

    async def close(self) -> None:
        """Disconnect in the worker thread, after whatever call is still running there."""
        client, self._client = self._client, None

        def disconnect() -> None:
            if client is not None:
                with contextlib.suppress(Exception):  # closing a dead socket: nothing to report
                    client.disconnect()

        try:
            future = asyncio.get_running_loop().run_in_executor(self._pool, disconnect)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await asyncio.shield(future)
        finally:
            self._pool.shutdown(wait=False)
