"""One replay by one candidate tree's replay core, for ``bench_compare.py``.

Run as ``PYTHONPATH=<tree> python -P benchmarks/replay_candidate.py`` with a JSON job on stdin;
prints one JSON line (the figures) on stdout. ``-P`` keeps this script's directory (and the
current directory) off ``sys.path``, and ``PYTHONPATH`` comes before site-packages, where the
venv's editable install of the checkout lives: ``import clickstream_dagster`` resolves to
``<tree>``, and the output names the file it found so that the parent can check it.

What it does is ``bench_replay.run_project_replay`` (encode_messages + send_offsets, then
``run_replay`` through a ``KafkaPublisher`` or ``LibrdkafkaPublisher``, exactly_once, the
checkpoints in the transaction), written out again here on purpose: this script must import
only the replay API that both candidates have (bench_replay imports typed encoding, the schema
registry and the cleaning of the current tree), and no benchmark code of the current tree,
which is not on the path. Topics are made and checked by the parent, with the current tree.
"""

from __future__ import annotations

import json
import sys
import time
import uuid


def main() -> int:
    job = json.loads(sys.stdin.read())
    import clickstream_dagster

    if job.get("where_only"):
        print(json.dumps({"package": clickstream_dagster.__file__}))
        return 0

    import polars as pl

    from clickstream_dagster.checkpoints import DEFAULT_CHECKPOINT_TOPIC, Checkpoint, transactional_id
    from clickstream_dagster.encoding import encode_messages, replay_headers
    from clickstream_dagster.kafka_client import KafkaPublisher, KafkaSettings
    from clickstream_dagster.pacing import Pacing, send_offsets
    from clickstream_dagster.replay import ReplayProgress, progress_line, run_replay

    events = pl.read_parquet(job["events"])
    if job.get("messages"):
        events = events.head(job["messages"])
    interval_ms = job.get("interval_ms")
    pacing = Pacing(mode="fixed", interval_ms=interval_ms) if interval_ms else Pacing(mode="max")
    t0 = time.perf_counter()
    messages = encode_messages(events, "json")
    offsets = send_offsets(events["original_timestamp"].to_numpy(), pacing)
    encode_s = time.perf_counter() - t0

    settings = KafkaSettings(bootstrap_servers=job["bootstrap_servers"], client_id="bench-compare")
    if job["client"] == "librdkafka":
        from clickstream_dagster.librdkafka_client import LibrdkafkaPublisher as publisher_class
    else:
        publisher_class = KafkaPublisher
    topic = job["topic"]
    publisher = publisher_class(
        settings, topic, replay_headers(job["day"], uuid.uuid4().hex),
        checkpoint_topic=DEFAULT_CHECKPOINT_TOPIC, transactional_id=transactional_id(topic),
    )

    def checkpoint(next_row, status):
        now_ms = time.time_ns() // 1_000_000
        record = Checkpoint(topic, job["day"], "bench", "bench", next_row, len(messages), status, now_ms)
        return record.key, record.to_bytes()

    progress = ReplayProgress(total=len(messages))
    try:
        # progress_line as the asset calls it: its cost is part of the loop's.
        run_replay(
            messages, offsets, publisher, checkpoint=checkpoint, progress=progress, paced=pacing.is_paced,
            on_progress=lambda p: progress_line(p, offsets),
        )
    finally:
        publisher.close()
    sent_at = offsets[: progress.sent] + progress.lateness_s[: progress.sent]  # s after the start
    print(json.dumps({
        "package": clickstream_dagster.__file__,
        "replay_module": sys.modules[run_replay.__module__].__file__,
        "messages": len(messages),
        "sent": progress.sent,
        "delivered": progress.delivered,
        "seconds": progress.elapsed_s,
        "rate": progress.delivered / progress.elapsed_s,
        "commits": progress.commits,
        "encode_s": encode_s,
        "lateness": progress.figures_ms(),
        "mean_interval_ms": (
            float((sent_at[-1] - sent_at[0]) / (len(sent_at) - 1) * 1000) if len(sent_at) > 1 else None
        ),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
