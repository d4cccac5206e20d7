"""Benchmark: one replay at a time versus two at once, into different topics.

Run with ``make bench-parallel`` (= ``.venv/bin/python benchmarks/bench_parallel.py``).

Replays into different topics are not queued behind each other (the run tag limit is per
topic), so a deployment can run several at once. This measures what that buys on this
machine: the aggregate rate (messages per second summed over the replays running together)
for 1 and for 2 replays.

* The data: the 400,000-row generated log (``benchmarks/out/``, shared with the other
  benchmarks), all 15 days prepared once by the real ``clickstream_events`` asset into a
  temporary storage directory on a temporary SQLite instance.
* A replay: the real ``replay_clickstream`` job (the ``click_data`` asset, max pacing,
  exactly-once delivery as deployed) run with ``execute_in_process`` in its own Python
  process, as a run worker does: each process loads the definitions, then waits for a common
  start signal, so that imports do not count.
* Per round: 1 replay (a day into a fresh topic), then 2 replays of two other days into two
  fresh topics, started at the same instant; rounds alternate which goes first.
* Aggregate rate: the messages of the replays together / the span from the first send to the
  last acknowledgement (from each run's materialization: its time minus ``duration_s``);
  "whole runs": the same messages / the span from the start signal to the last run's end
  (Dagster's run start, the day's load and encoding included).

The broker is ``$KAFKA_BOOTSTRAP_SERVERS`` if set, else a local KRaft broker on a free port
(``scripts/local_kafka.py``), stopped at the end. It runs on the same 2 cores as the replays.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare import FULL_ROWS, OUT, ROOT, ensure_log, machine, write_readme  # noqa: E402
from bench_replay import bench_broker  # noqa: E402

SECTION = ("<!-- bench-parallel:start -->", "<!-- bench-parallel:end -->")
# Days with similar counts; each replay of a round takes a different one.
SINGLE_DAY, PAIR_DAYS = "2012-03-07", ("2012-03-08", "2012-03-09")


# ----------------------------------------------------------------------------- one replay (worker)


def worker(day: str, topic: str) -> int:
    """Load the definitions, say ready, wait for "go" on stdin, replay ``day`` into ``topic``."""
    from dagster import DagsterEventType, DagsterInstance

    from clickstream_dagster.definitions import defs

    job = defs.resolve_job_def("replay_clickstream")
    instance = DagsterInstance.get()
    print("ready", flush=True)
    sys.stdin.readline()
    t_go = time.time()
    result = job.execute_in_process(
        partition_key=day,
        run_config={"ops": {"click_data": {"config": {"topic": topic, "pacing": "max"}}}},
        instance=instance,
    )
    t_end = time.time()
    # The stored event has the time the materialization was logged: right after the last ack.
    [entry] = instance.all_logs(result.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    meta = {k: v.value for k, v in entry.asset_materialization.metadata.items()}
    ts = entry.timestamp
    print(
        json.dumps({
            "day": day, "topic": topic, "ok": result.success, "t_go": t_go, "t_end": t_end,
            "messages": meta["messages"], "duration_s": meta["duration_s"],
            "send_end": ts, "send_start": ts - meta["duration_s"],
        }),
        flush=True,
    )  # fmt: skip
    return 0


# ----------------------------------------------------------------------------- the runner


def run_together(days: list[str], env: dict[str, str], topics: list[str]) -> dict:
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", day, topic], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        for day, topic in zip(days, topics)
    ]
    try:
        for proc in procs:
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a replay worker did not start: {line!r}")
        for proc in procs:  # as close to the same instant as two pipe writes get
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(proc.stdout.read().strip().splitlines()[-1]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.wait(timeout=600)
    messages = sum(r["messages"] for r in results)
    send_span = max(r["send_end"] for r in results) - min(r["send_start"] for r in results)
    run_span = max(r["t_end"] for r in results) - min(r["t_go"] for r in results)
    return {
        "replays": len(days),
        "ok": all(r["ok"] for r in results),
        "messages": messages,
        "send_rate": messages / send_span,
        "run_rate": messages / run_span,
        "each_rate": [r["messages"] / r["duration_s"] for r in results],
        "results": results,
    }


def prepare_all_days(env: dict[str, str]) -> None:
    code = (
        "from dagster import DagsterInstance, materialize\n"
        "from clickstream_dagster.definitions import defs\n"
        "from clickstream_dagster.partitions import DATASET_WINDOW\n"
        "days = DATASET_WINDOW.days()\n"
        "job = defs.resolve_job_def('prepare_clickstream')\n"
        "r = job.execute_in_process(instance=DagsterInstance.get(), tags={"
        "'dagster/asset_partition_range_start': days[0], 'dagster/asset_partition_range_end': days[-1]})\n"
        "assert r.success\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True, timeout=900)


def med(values) -> float:
    return statistics.median(values)


def render(r: dict) -> str:
    m, lines = r["machine"], []
    lines.append(
        f"`make bench-parallel` (= `.venv/bin/python benchmarks/bench_parallel.py`), run {r['date']} on "
        f"{m['nproc']} cores ({m['cpu']}), shared with other work (load average {r['load_start']:.1f} at the "
        f"start, {r['load_end']:.1f} at the end); {r['broker']} on the same cores; code at `{m['rev']}`. "
        f"Total benchmark time {r['total_s'] / 60:.1f} min."
    )
    lines.append("")
    lines.append(
        "Each replay is the real `replay_clickstream` job (max pacing, exactly-once) run in its own process "
        "like a run worker, on a full-scale day (about 28,000 page views) of the 400,000-row generated log, "
        f"into its own fresh topic; {r['rounds']} rounds, 1 and 2 replays alternating; medians."
    )
    lines.append("")
    lines.append("| replays at once | aggregate msgs/s (sending) | min-max | aggregate msgs/s (whole runs) | each replay's own rate | vs 1 |")
    lines.append("| --- | --- | --- | --- | --- | --- |")
    one = med([x["send_rate"] for x in r["by_n"]["1"]])
    for n, runs in r["by_n"].items():
        rates = [x["send_rate"] for x in runs]
        each = [e for x in runs for e in x["each_rate"]]
        lines.append(
            f"| {n} | {med(rates):,.0f} | {min(rates):,.0f}-{max(rates):,.0f} | "
            f"{med([x['run_rate'] for x in runs]):,.0f} | {med(each):,.0f} | {med(rates) / one:.2f}x |"
        )
    lines.append("")
    two = med([x["send_rate"] for x in r["by_n"]["2"]])
    each_one = med([e for x in r["by_n"]["1"] for e in x["each_rate"]])
    each_two = med([e for x in r["by_n"]["2"] for e in x["each_rate"]])
    lines.append(
        f"Two replays at once delivered **{two / one:.2f}x** the messages per second of one (sending spans); "
        f"each replay's own rate went from {each_one:,.0f} to {each_two:,.0f} msgs/s: the two replay processes "
        "compete for the two cores with each other, the broker and the other work on the machine (see the "
        "load averages). Dagster did run them side by side. Every run's delivery was checked by reading the "
        f"topics back (read_committed): {'every message of every run is there' if r['all_ok'] else 'SOME DID NOT MATCH'}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of (1 replay, 2 replays) (default 3)")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite the README section")
    ap.add_argument("--worker", nargs=2, metavar=("DAY", "TOPIC"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(*args.worker)

    t_start = time.perf_counter()
    info = machine()
    load_start = os.getloadavg()[0]
    log_path, _ = ensure_log(FULL_ROWS)
    work = Path(tempfile.mkdtemp(prefix="bench-parallel-", dir=OUT))
    broker = None
    try:
        bootstrap, broker_desc, broker = bench_broker(work)
        home = work / "dagster_home"
        home.mkdir()
        shutil.copy(ROOT / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPLAY_CYCLE_")}
        env |= {
            "DAGSTER_HOME": str(home), "CLICKSTREAM_CSV": str(log_path),
            "CLICKSTREAM_STORAGE_DIR": str(work / "parquet"), "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        }  # fmt: skip
        t0 = time.perf_counter()
        prepare_all_days(env)
        print(f"15 days prepared in {time.perf_counter() - t0:.1f} s", flush=True)

        by_n: dict[str, list] = {"1": [], "2": []}
        for i in range(args.rounds):
            order = [[SINGLE_DAY], list(PAIR_DAYS)]
            if i % 2:
                order.reverse()
            for days in order:
                topics = [f"bench-parallel-{uuid.uuid4().hex[:8]}" for _ in days]
                res = run_together(days, env, topics)
                res["ok"] = res["ok"] and delivered(bootstrap, topics) == res["messages"]
                by_n[str(len(days))].append(res)
                print(
                    f"  round {i + 1}: {len(days)} at once: {res['send_rate']:,.0f} msgs/s sending, "
                    f"{res['run_rate']:,.0f} msgs/s whole runs, each {[round(e) for e in res['each_rate']]}"
                    + ("" if res["ok"] else "  !! FAILED"),
                    flush=True,
                )
                delete_topics(bootstrap, topics)
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)

    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": info, "broker": broker_desc, "rounds": args.rounds, "by_n": by_n,
        "all_ok": all(x["ok"] for runs in by_n.values() for x in runs),
        "load_start": load_start, "load_end": os.getloadavg()[0], "total_s": time.perf_counter() - t_start,
    }  # fmt: skip
    (OUT / "bench_parallel.json").write_text(json.dumps(report, indent=1, default=str))
    text = render(report)
    print("\n" + text + "\n")
    if not args.no_readme:
        write_readme(text, SECTION)
    return 0 if report["all_ok"] else 1


def delivered(bootstrap: str, topics: list[str]) -> int:
    """Committed records in the topics, read back (end offsets would also count the markers
    that transactions write)."""
    from kafka import KafkaConsumer, TopicPartition

    from clickstream_dagster.kafka_client import KafkaSettings, stable_end_offsets

    total = 0
    for topic in topics:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False, group_id=None
        )
        try:
            parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            consumer.assign(parts)
            consumer.seek_to_beginning(*parts)
            ends = stable_end_offsets(KafkaSettings(bootstrap_servers=bootstrap), consumer, parts)  # markers written
            deadline = time.monotonic() + 120
            while any(consumer.position(tp) < ends[tp] for tp in parts) and time.monotonic() < deadline:
                total += sum(len(batch) for batch in consumer.poll(timeout_ms=1000, max_records=10_000).values())
        finally:
            consumer.close()
    return total


def delete_topics(bootstrap: str, topics: list[str]) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-parallel")
    try:
        admin.delete_topics(topics, timeout_ms=30_000)
    except Exception as error:  # noqa: BLE001 - cleanup only
        print(f"  (could not delete {topics}: {error!r})")
    finally:
        admin.close()


if __name__ == "__main__":
    sys.exit(main())
