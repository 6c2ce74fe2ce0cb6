"""A record that crashes an uplink plugin (a bug triggered by its content) must not block the uplink:
the Sender retries that window a few times, then skips it (counted, logged) and delivers the rest."""

from __future__ import annotations

import time
from pathlib import Path

from contract.test_sparkplug import host_and_node
from edged.delivery import POISON_TRIES
from edged.model import Sample, Status
from peers.mosquitto import Mosquitto
from peers.waiting import eventually


async def test_a_poison_batch_is_skipped_and_the_rest_flows(tmp_path: Path, mosquitto: Mosquitto) -> None:
    # Sparkplug timestamps are unsigned milliseconds: a source time before 1970 (a device with a
    # broken clock) makes protobuf raise ValueError inside the plugin.
    async with host_and_node(tmp_path, mosquitto.port, batch_size=10) as (host, buf, sender, _tg):
        await eventually(lambda: len(host.of("DBIRTH")) >= 1, 5, "births")
        buf.put([Sample("boiler/pressure", -5 * 10**12, 1.0, Status.GOOD, 100)])
        await buf.flush()
        await eventually(lambda: sender.stats.rejected >= 1, 20, "the poison batch to be skipped")
        assert sender.stats.errors >= POISON_TRIES - 1
        buf.put([Sample("boiler/pressure", time.time_ns(), 2.0, Status.GOOD, 100)])
        await eventually(lambda: any(m.kind == "DDATA" for m in host.messages), 10, "the next sample delivered")
        assert not buf.store.unacked("spb", buf.head), "nothing stays owed: the uplink is not blocked"
