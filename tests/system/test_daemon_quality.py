"""The daemon applies quality over time: silent devices go stale, outages reset the deadband."""

from __future__ import annotations

import asyncio
from pathlib import Path

from buffer import Store
from edged.config import parse
from edged.daemon import Daemon
from edged.model import Status


async def run_for(cfg_doc: dict, seconds: float) -> Daemon:  # type: ignore[type-arg]
    d = Daemon(parse(cfg_doc))
    async with asyncio.TaskGroup() as tg:
        tg.create_task(d.run(), name="daemon")
        await asyncio.sleep(seconds)
        d.request_stop()
    return d


def statuses(db: Path, tag: str) -> list[tuple[int, object]]:
    with Store(db) as s:
        first = s.first_seq()
        assert first is not None
        rows, _ = s.read(first, s.head, 100_000)
    return [(r.status, r.value) for r in rows if r.tag == tag]


async def test_a_quiet_device_turns_stale_without_new_batches(tmp_path: Path) -> None:
    doc = {
        "gateway": {"id": "gw", "data_dir": str(tmp_path)},
        "devices": [{
            "name": "slow", "type": "sim", "interval": "5s",
            "tags": [{"name": "t", "signal": "stuck", "offset": 3.0, "quality": {"stale_after": "1s"}}],
        }],
    }  # fmt: skip
    await run_for(doc, 2.8)
    got = statuses(tmp_path / "buffer.db", "slow/t")
    assert got[0] == (Status.GOOD, 3.0)
    assert (Status.UNCERTAIN_LAST_USABLE_VALUE, 3.0) in got[1:], got


async def test_first_value_after_an_outage_is_stored_despite_the_deadband(tmp_path: Path) -> None:
    doc = {
        "gateway": {"id": "gw", "data_dir": str(tmp_path)},
        "devices": [{
            "name": "flaky", "type": "sim", "interval": "20ms", "dropout": 0.05, "seed": 3,
            "tags": [{"name": "t", "signal": "stuck", "offset": 1.0, "deadband": 10.0}],
        }],
    }  # fmt: skip
    d = await run_for(doc, 5.0)
    got = statuses(tmp_path / "buffer.db", "flaky/t")
    bad = [i for i, (st, _) in enumerate(got) if st == Status.BAD_NO_COMMUNICATION]
    assert bad, f"the device failed at least once: {d.snapshot()['devices']}"
    after = [got[i + 1] for i in bad if i + 1 < len(got)]
    assert after, "it recovered"
    assert all(x == (Status.GOOD, 1.0) for x in after), "the value came back right after each outage"
