"""Prometheus metrics and a health check on a local HTTP port (`gateway.metrics_listen`), served
by aiohttp (the web UI's server, edged.ui, which carries the same routes). The text format comes
from a per-daemon prometheus-client registry (no global state); a scrape never touches the disk.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from edged.config import parse_listen
from edged.errors import ConfigError

if TYPE_CHECKING:
    from aiohttp import web

    from edged.daemon import Daemon

log = logging.getLogger("edged.metrics")

LAG_UNHEALTHY_S = 5.0
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def health(daemon: Daemon) -> tuple[bool, dict[str, Any]]:
    """Healthy when the loop is responsive and the buffer accepts writes; device or uplink outages
    are reported but are not a reason to restart the gateway (restarting would not fix them), and
    so is a buffer file set aside at startup (already recovered from; shown for the operator)."""
    problems = []
    if daemon.loop_lag_s > LAG_UNHEALTHY_S:
        problems.append(f"event loop lag {daemon.loop_lag_s:.1f}s")
    if daemon.buffer.alarm:
        problems.append(daemon.buffer.alarm)
    doc = {
        "healthy": not problems,
        "problems": problems,
        "devices": {d.name: d.stats.state for d in daemon.devices},
        "uplinks": {s.name: s.stats.state for s in daemon.senders},
    }
    if daemon.buffer.set_aside:
        last = daemon.buffer.set_aside[-1]
        doc["buffer_set_aside"] = {
            "count": len(daemon.buffer.set_aside),
            "path": last.path,
            "at": _iso(last.at_ns),
            "reason": last.reason,
            "salvaged": last.salvaged,
            "lost": last.lost,
            "gaps": last.gaps,
        }
    return not problems, doc


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


class _Collector:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        d = self.d
        now = time.time_ns()
        read = CounterMetricFamily("edged_device_samples", "Samples read from the device", labels=["device"])
        errors = CounterMetricFamily("edged_device_errors", "Device failures (connect or read)", labels=["device"])
        up = GaugeMetricFamily("edged_device_up", "1 while the device is connected and polled", labels=["device"])
        age = GaugeMetricFamily("edged_device_last_sample_age_seconds", "Age of the newest sample", labels=["device"])
        for r in d.devices:
            read.add_metric([r.name], r.stats.samples)
            errors.add_metric([r.name], r.stats.errors)
            up.add_metric([r.name], 1.0 if r.stats.state == "running" else 0.0)
            if r.stats.last_sample_ns:
                age.add_metric([r.name], (now - r.stats.last_sample_ns) / 1e9)
        yield from (read, errors, up, age, _plugin_counters("device", {r.name: r.tally.totals() for r in d.devices}))

        b = d.buffer
        yield CounterMetricFamily("edged_buffer_stored_samples", "Samples committed to the buffer", value=b.stored)
        yield GaugeMetricFamily("edged_buffer_head_seq", "Newest sequence number", value=b.head)
        yield CounterMetricFamily(
            "edged_buffer_ingest_dropped_samples", "Samples lost before reaching disk", value=b.dropped_ingest
        )
        yield CounterMetricFamily("edged_buffer_write_errors", "Failed buffer commits", value=b.write_errors)
        yield GaugeMetricFamily("edged_buffer_alarm", "1 while the disk refuses writes", value=1.0 if b.alarm else 0.0)
        # measured by the status writer on the buffer thread: a scrape never touches the disk
        yield GaugeMetricFamily("edged_buffer_bytes", "Buffer files on disk (db, wal, shm)", value=d.buffer_file_bytes)

        sent = CounterMetricFamily("edged_uplink_sent_samples", "Samples acknowledged", labels=["uplink", "stream"])
        rejected = CounterMetricFamily("edged_uplink_rejected_samples", "Samples refused for good", labels=["uplink"])
        uerr = CounterMetricFamily("edged_uplink_errors", "Connection/send failures", labels=["uplink"])
        conn = GaugeMetricFamily("edged_uplink_connected", "1 while connected", labels=["uplink"])
        backlog = GaugeMetricFamily("edged_uplink_backlog_samples", "Samples owed to the uplink", labels=["uplink"])
        oldest = GaugeMetricFamily(
            "edged_uplink_oldest_unsent_age_seconds", "Age of the oldest owed sample", labels=["uplink"]
        )
        dropped = CounterMetricFamily(
            "edged_uplink_dropped_samples", "Samples deleted (retention, size cap) before delivery", labels=["uplink"]
        )
        gaps = CounterMetricFamily("edged_uplink_gaps_sent", "Gap records sent to the uplink", labels=["uplink"])
        gaps_owed = GaugeMetricFamily("edged_uplink_gaps_pending", "Gap records still to send", labels=["uplink"])
        in_flight = GaugeMetricFamily("edged_uplink_in_flight_batches", "Batches awaiting their ack", labels=["uplink"])
        rtt = GaugeMetricFamily(
            "edged_uplink_round_trip_seconds", "Shortest recent send-to-acknowledgement time", labels=["uplink"]
        )
        for s in d.senders:
            n_dropped, n_gaps = d.delivery.get(s.name, (0, 0))
            dropped.add_metric([s.name], n_dropped)
            gaps.add_metric([s.name], s.stats.gaps_sent)
            gaps_owed.add_metric([s.name], n_gaps)
            sent.add_metric([s.name, "live"], s.stats.sent_live)
            sent.add_metric([s.name, "historical"], s.stats.sent_historical)
            rejected.add_metric([s.name], s.stats.rejected)
            uerr.add_metric([s.name], s.stats.errors)
            conn.add_metric([s.name], 1.0 if s.stats.state == "connected" else 0.0)
            n, ts = d.backlog.get(s.name, (0, None))
            backlog.add_metric([s.name], n)
            oldest.add_metric([s.name], (now - ts) / 1e9 if ts else 0.0)
            in_flight.add_metric([s.name], s.stats.in_flight)
            if s.stats.rtt_ms is not None:
                rtt.add_metric([s.name], s.stats.rtt_ms / 1000)
        yield from (sent, rejected, uerr, conn, backlog, oldest, dropped, gaps, gaps_owed, in_flight, rtt)
        yield _plugin_counters("uplink", {s.name: s.tally.totals() for s in d.senders})
        yield GaugeMetricFamily("edged_event_loop_lag_seconds", "Event loop lag, last second", value=d.loop_lag_s)
        cmds = CounterMetricFamily("edged_commands", "Write commands by source and result", labels=["source", "result"])
        for (source, result), n in sorted(d.commands.outcomes.items()):
            cmds.add_metric([source, result], n)
        yield cmds
        refused = CounterMetricFamily(
            "edged_command_refusals", "Write commands not accepted, by source and code", labels=["source", "code"]
        )
        for (source, code), n in sorted(d.commands.refusals.items()):
            refused.add_metric([source, code], n)
        yield refused
        if d.alarms is not None:  # process alarms (edged.alarms, docs/alarms.md)
            yield from _alarm_metrics(d.alarms.summary())


def _alarm_metrics(al: dict[str, Any]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield GaugeMetricFamily("edged_alarms_active", "Alarms active now (acknowledged or not)", value=al["active"])
    unacked = al["unacknowledged"]
    yield GaugeMetricFamily("edged_alarms_unacknowledged", "Alarms awaiting acknowledgement", value=unacked)
    yield GaugeMetricFamily("edged_alarms_shelved", "Alarms shelved now", value=al["shelved"])
    yield GaugeMetricFamily("edged_alarms_out_of_service", "Alarms out of service (config)", value=al["out_of_service"])
    yield CounterMetricFamily("edged_alarm_events", "Alarm events stored", value=al["events"])
    yield CounterMetricFamily(
        "edged_alarm_events_suppressed", "Alarm events summarised by the flood limit", value=al["suppressed"]
    )
    by = GaugeMetricFamily("edged_alarm_state", "1 per alarm not in the normal state", labels=["alarm", "state"])
    for row in al["list"]:
        by.add_metric([row["path"], row["state"]], 1.0)
    yield by


def _plugin_counters(kind: str, counts: dict[str, dict[str, float]]) -> Any:
    """Each plugin's own counters (Modbus exceptions by code, HART retries, OPC UA refused
    sessions...) as one family labelled by plugin and counter name."""
    from prometheus_client.core import CounterMetricFamily

    fam = CounterMetricFamily(
        f"edged_{kind}_plugin_events", f"Counters the {kind} plugin keeps itself", labels=[kind, "counter"]
    )
    for name, values in counts.items():
        for key, value in sorted(values.items()):
            fam.add_metric([name, key], value)
    return fam


def _parse_listen(listen: str) -> tuple[str, int]:
    try:
        return parse_listen(listen)  # the config load already checked it: check-config and run agree
    except ValueError as exc:
        raise ConfigError(f"gateway.metrics_listen {exc}") from None


def add_routes(app: web.Application, daemon: Daemon) -> None:
    """/metrics (when prometheus-client is installed), /health and /healthz on an aiohttp app."""
    from aiohttp import web

    try:
        from prometheus_client import CollectorRegistry, generate_latest
    except ImportError:
        log.error("prometheus-client is missing, /metrics is off: pip install 'edged[metrics]'")
    else:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(daemon))

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(registry), headers={"Content-Type": PROMETHEUS_TYPE})

        app.router.add_get("/metrics", metrics, allow_head=False)

    async def healthcheck(request: web.Request) -> web.Response:
        ok, doc = health(daemon)
        return web.Response(body=json.dumps(doc).encode() + b"\n", status=200 if ok else 503,
                            content_type="application/json")  # fmt: skip

    app.router.add_get("/health", healthcheck, allow_head=False)
    app.router.add_get("/healthz", healthcheck, allow_head=False)


async def serve(daemon: Daemon, listen: str) -> None:
    """Serve /metrics and /health until cancelled (with the web UI when `[ui] listen` is the same
    address)."""
    if daemon.config.ui.enabled and daemon.config.ui.listen == listen:
        from edged.ui import serve as serve_ui

        await serve_ui(daemon)
        return
    try:
        from aiohttp import web
    except ImportError:
        log.error("metrics_listen is set but aiohttp is missing: pip install 'edged[metrics]'")
        return
    from edged.ui import run_app

    @web.middleware
    async def plain_errors(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method != "GET":
            return web.Response(status=405, text="GET only\n")
        try:
            resp: web.StreamResponse = await handler(request)
        except web.HTTPNotFound:
            return web.Response(status=404, text="try /metrics or /health\n")
        return resp

    app = web.Application(middlewares=[plain_errors])
    add_routes(app, daemon)
    host, port = _parse_listen(listen)
    await run_app(app, host, port, None, "metrics", f"metrics on http://{host}:{port}/metrics, health on /health")
