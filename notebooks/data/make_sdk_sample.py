"""Regenerate ``sdk_heartbeats.otlp.jsonl``: the official SDK worker's heartbeats
against leasekit's reference server with injected faults, as OpenTelemetry spans.

Three workers run the official ``anthropic`` SDK worker's own heartbeat loop
(``anthropic.lib.environments._worker._heartbeat_loop``, the loop
``EnvironmentWorker`` runs while it serves a session; the SDK pinned in
pyproject.toml) on one work item each, against a reference server on
loopback with the API's default TTL (90 s), a few milliseconds of added
latency, and one scripted fault each on its third heartbeat:

* ``sdk-worker-1``: the server applies the heartbeat but its answer is lost;
* ``sdk-worker-2``: the heartbeat request is lost before the server sees it;
* ``sdk-worker-3``: the server answers 500 (the SDK's HTTP retries absorb it),
  and an operator force-stops the item after about two minutes.

The SDK records its calls with the OpenTelemetry Python SDK (one tracer
provider per worker, ``service.instance.id`` naming it); the spans are
written as OTLP/JSON, one ``ExportTraceServiceRequest`` a line, as an
OpenTelemetry collector's file exporter writes them. Needs the dev extras
(``anthropic``, ``opentelemetry-sdk``, ``opentelemetry-exporter-otlp-proto-common``)
and takes about three minutes of real time::

    .venv/bin/python notebooks/data/make_sdk_sample.py
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import anyio

from leasekit.lease import LeaseConfig
from leasekit.server import FaultConfig, create_app, running_server

OUT = Path(__file__).with_name("sdk_heartbeats.otlp.jsonl")
ENV, KEY = "env_sample", "key_sample"
TTL_SECONDS = 90  # the API's default: the official worker then beats every 30 s
START_GAP_S = 5.0  # workers start this far apart, so their heartbeats never meet
FAULTS = {1: "drop_answer", 2: "drop_request", 3: "error"}  # worker -> fault on beat 3
FORCE_STOP_AFTER_S = 125.0  # the operator stops worker 3's item
SPANS_PER_LINE = 10  # the collector writes one export request per batch


def _otlp_json(spans: Any) -> dict[str, Any]:
    """Spans as one OTLP ``ExportTraceServiceRequest`` in the JSON dialect of the
    collector's file exporter (hex ids, integer enums)."""
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    body: dict[str, Any] = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    for resource in body["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return body


async def _worker(number: int, base_url: str, app: Any, exporters: list[Any]) -> str:
    import httpx2  # the SDK's own HTTP client
    from anthropic import AsyncAnthropic
    from anthropic.lib.environments._worker import _heartbeat_loop, _Lease
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    await anyio.sleep((number - 1) * START_GAP_S)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.instance.id": f"sdk-worker-{number}"})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    exporters.append((provider, exporter))
    beats = 0

    async def on_request(request: Any) -> None:
        nonlocal beats
        if request.url.path.endswith("/heartbeat"):
            beats += 1
            if beats == 3:  # queued just before this very request reaches the server
                app.faults.queue(FAULTS[number])

    http = httpx2.AsyncClient(event_hooks={"request": [on_request]})
    async with AsyncAnthropic(
        base_url=base_url,
        api_key=KEY,
        http_client=http,
        open_telemetry={"tracer_provider": provider},
    ) as client:
        work = client.beta.environments.work
        item = await work.poll(environment_id=ENV, block_ms=999)
        assert item is not None, "the reference server has no queued item"
        await work.ack(item.id, environment_id=ENV)
        lease = _Lease()
        async with anyio.create_task_group() as group:
            if number == 3:

                async def operator() -> None:
                    await anyio.sleep(FORCE_STOP_AFTER_S)
                    await work.stop(item.id, environment_id=ENV, force=True)

                group.start_soon(operator)
            await _heartbeat_loop(work, work_id=item.id, environment_id=ENV, lease=lease)
            group.cancel_scope.cancel()
    provider.shutdown()
    return f"sdk-worker-{number}: {item.id} ended with {lease._end_reason}"


async def _main(base_url: str, app: Any) -> list[Any]:
    exporters: list[Any] = []
    results: list[str] = []

    async def run(number: int) -> None:
        results.append(await _worker(number, base_url, app, exporters))

    async with anyio.create_task_group() as group:
        for number in FAULTS:
            group.start_soon(run, number)
    for line in sorted(results):
        print(line)
    spans = [span for _provider, exporter in exporters for span in exporter.get_finished_spans()]
    return sorted(spans, key=lambda span: span.start_time)


def main() -> None:
    app = create_app(
        keys={ENV: KEY},
        config=LeaseConfig(default_ttl_seconds=TTL_SECONDS),
        # a few milliseconds each way; the seed fixes the draws, not the timing
        faults=FaultConfig(latency="shiftexp:0.002,0.01", seed=random.Random(12).getrandbits(32)),
        seed_work={ENV: len(FAULTS)},
    )
    with running_server(app) as base_url:
        spans = anyio.run(_main, base_url, app)
    heartbeats = [s for s in spans if s.name == "anthropic.environments.work.heartbeat"]
    lines = [
        json.dumps(_otlp_json(heartbeats[i : i + SPANS_PER_LINE]), separators=(",", ":"))
        for i in range(0, len(heartbeats), SPANS_PER_LINE)
    ]
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(heartbeats)} heartbeat spans to {OUT}")


if __name__ == "__main__":
    main()
