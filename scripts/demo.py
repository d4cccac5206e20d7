"""`make demo`: broker up, all 15 days prepared, one day replayed, a few messages read back.

Runs are recorded in the project-local DAGSTER_HOME (.dagster_home), so `make dev` shows
them in the UI afterwards. Set KAFKA_BOOTSTRAP_SERVERS to use your own cluster instead of
the local broker; DEMO_DAY (default 2012-03-01) and DEMO_RATE (msgs/s, default 2000)
choose what is replayed and how fast.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAY = os.environ.get("DEMO_DAY", "2012-03-01")
RATE = float(os.environ.get("DEMO_RATE", "2000"))
SHOW_MESSAGES = 5
# Progress lines (INFO) on the console, without Dagster's step-by-step DEBUG events.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def start_local_broker() -> str:
    spec = importlib.util.spec_from_file_location("local_kafka", REPO / "scripts" / "local_kafka.py")
    local_kafka = importlib.util.module_from_spec(spec)
    sys.modules["local_kafka"] = local_kafka
    spec.loader.exec_module(local_kafka)
    broker = local_kafka.start_broker(REPO / ".kafka", port=int(os.environ.get("KAFKA_PORT", "9092")))
    state = "already up" if broker.already_running else "started"
    print(f"Kafka broker {state} at {broker.bootstrap_servers} (log: {broker.log_path}; stop: make kafka-down)")
    return broker.bootstrap_servers


def main() -> int:
    warnings.filterwarnings("ignore", message=".*(beta|preview).*", category=Warning)
    os.environ.setdefault("DAGSTER_HOME", str(REPO / ".dagster_home"))
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = start_local_broker()
    # Imported after the environment is set: definitions read it at load time.
    from dagster import DagsterInstance

    from clickstream_dagster.definitions import defs

    instance = DagsterInstance.get()
    days = defs.resolve_job_def("prepare_clickstream").partitions_def.get_partition_keys()
    print(f"Preparing {days[0]}..{days[-1]} from {defs.resources['clickstream_log'].path} ...")
    prepared = defs.resolve_job_def("prepare_clickstream").execute_in_process(
        instance=instance,
        run_config=QUIET,
        tags={"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]},
    )
    checks = [e.event_specific_data for e in prepared.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    print(f"  run {prepared.run_id[:8]}: checks " + ", ".join(f"{c.check_name}={'ok' if c.passed else 'FAILED'}" for c in checks))

    config = {"pacing": "max", "max_rate": RATE}
    print(f"Replaying {DAY} into click-data at up to {RATE:g} msgs/s ...")
    replayed = defs.resolve_job_def("replay_clickstream").execute_in_process(
        instance=instance, partition_key=DAY, run_config={"ops": {"click_data": {"config": config}}, **QUIET}
    )
    [mat] = replayed.asset_materializations_for_node("click_data")
    meta = {k: v.value for k, v in mat.metadata.items()}
    print(
        f"  run {replayed.run_id[:8]}: {meta['messages']} messages ({meta['bytes']} bytes) acknowledged in "
        f"{meta['duration_s']:.1f} s, {meta['rate_msgs_per_s']:.0f} msgs/s, lateness p99 "
        f"{meta.get('lateness_p99_ms', 0):.2f} ms"
    )
    print(f"Reading {SHOW_MESSAGES} of them back from the topic:")
    for partition, offset, key, value in read_back(meta["kafka_offsets"].records, SHOW_MESSAGES):
        body = json.loads(value)
        print(f"  p{partition}@{offset} key={key} product={body['productId']} ip={body['ip']} t={body['original_timestamp']}")
    print(f"\nDone. `make dev` opens the Dagster UI at http://127.0.0.1:3000 with these runs (DAGSTER_HOME={instance.root_directory}).")
    return 0


def read_back(offset_records, count: int):
    """The first messages this run wrote, read from the broker at the offsets it reported."""
    from kafka import KafkaConsumer, TopicPartition

    from clickstream_dagster.definitions import defs

    settings = defs.resources["kafka"].settings()
    consumer = KafkaConsumer(**settings.client_config(), enable_auto_commit=False, consumer_timeout_ms=10_000)
    try:
        spans = {r.data["partition"]: r.data["first_offset"] for r in offset_records}
        partitions = [TopicPartition("click-data", p) for p in spans]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, spans[tp.partition])
        out = []
        for record in consumer:
            out.append((record.partition, record.offset, record.key.decode(), record.value))
            if len(out) >= count:
                break
        return out
    finally:
        consumer.close()


if __name__ == "__main__":
    raise SystemExit(main())
