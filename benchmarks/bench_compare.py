"""Benchmark: this tree's replay core side by side with another commit's, in one run.

Run with ``make bench-compare AGAINST=<ref>`` (= ``.venv/bin/python benchmarks/bench_compare.py
--against <ref>``; default ``HEAD~1``: the commit before this one along the first parent, which
after a merge is the main line before it).

The two candidates are this working tree ("new", uncommitted changes included) and the
package of ``<ref>`` ("old"), extracted with ``git archive`` into a temporary directory (removed
at the end; nothing is registered in the repository, unlike a worktree). Every replay is a fresh
process, ``benchmarks/replay_candidate.py`` run with ``PYTHONPATH=<candidate's tree>`` and ``-P``,
so that ``import clickstream_dagster`` is the candidate's package and not the venv's editable
install of this checkout: each child reports the file it imported and the run stops if it is
not the candidate's. The harness (the day, the broker, the topics and their check, the figures)
is this tree's, the same for both.

On ONE broker (``$KAFKA_BOOTSTRAP_SERVERS``, else a local one, as in ``bench_replay.py``), the
day of ``bench_replay.py`` (one full-scale day of the 400,000-row generated log), exactly_once,
each run into a fresh 3-partition topic whose delivered count is checked (read_committed):

* throughput at max pacing, through ``KafkaPublisher`` (kafka-python) and ``LibrdkafkaPublisher``:
  delivered messages / ``ReplayProgress.elapsed_s`` (first send to last commit);
* timing fidelity at a fixed 20 ms interval over the first ``--fixed-messages`` of the day, on
  both clients: lateness p50 / p99 (hand-off - scheduled time) and delivery latency p99.

Each pair of runs (one kind, one round) runs both candidates back to back, in an order that
alternates from round to round and from kind to kind; the ratio new/old is taken per pair, and
its median reported beside the candidates' medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare import OUT, ROOT, machine, write_readme
from bench_replay import DAY, FIXED_INTERVAL_MS, Topics, bench_broker, day_events

from clickstream_dagster.kafka_client import KafkaSettings

SECTION = ("<!-- bench-compare:start -->", "<!-- bench-compare:end -->")
CANDIDATE_SCRIPT = Path(__file__).resolve().parent / "replay_candidate.py"
FIXED_MESSAGES = 500  # 10 s at 20 ms: bench_replay's 2,000 would make 4 x 2 runs per round 40 s each
RUN_TIMEOUT_S = 300
# (kind, client, paced): the kinds of run every round makes, in this order
THROUGHPUT = (("max", "kafka-python"), ("max_rdk", "librdkafka"))
FIDELITY = (("fixed", "kafka-python"), ("fixed_rdk", "librdkafka"))
LABELS = {
    "max": "max pacing, kafka-python",
    "max_rdk": "max pacing, librdkafka",
    "fixed": "fixed 20 ms, kafka-python",
    "fixed_rdk": "fixed 20 ms, librdkafka",
}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def extract_package(ref: str, into: Path) -> str:
    """``clickstream_dagster/`` of ``ref`` into ``into``; returns the commit's short hash."""
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "clickstream_dagster"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return git("rev-parse", "--short", commit)


def run_candidate(tree: Path, job: dict) -> dict:
    """One replay_candidate.py process with ``tree`` first on the path; its JSON line."""
    env = os.environ | {"PYTHONPATH": str(tree)}
    proc = subprocess.run(
        [sys.executable, "-P", str(CANDIDATE_SCRIPT)], input=json.dumps(job), env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"replay_candidate.py on {tree} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # The whole point: the package must be the candidate's, not the editable install's.
    for module in (result["package"], result.get("replay_module", result["package"])):
        if not Path(module).resolve().is_relative_to(tree.resolve()):
            raise RuntimeError(f"candidate {tree} imported {module}, not its own clickstream_dagster")
    return result


# ----------------------------------------------------------------------------- report


def med(values) -> float:
    return statistics.median(values)


def span(values) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def render(r: dict) -> str:
    m = r["machine"]
    load = f"load average {m['load'][0]:.1f} at the start, {r['load_end'][0]:.1f} at the end"
    checked = "(all matched)." if r["all_ok"] else "(**some did NOT match**, see the run log)."
    new, old = r["new"], r["old"]
    lines = [
        (
            f"`make bench-compare AGAINST={r['against']}` (= `.venv/bin/python "
            f"benchmarks/bench_compare.py --against {r['against']}`), run {r['date']} on {m['nproc']} cores "
            f"({m['cpu']}), shared with other work ({load}); {r['broker']}. New: this tree at `{new}`; "
            f"old: `{old}` ({r['against']}). Total benchmark time {r['total_s'] / 60:.1f} min."
        ),
        "",
        (
            f"The same day as `make bench-replay` ({DAY}: {r['day_rows']:,} page views), exactly_once, "
            "each run a fresh process importing its candidate's `clickstream_dagster` (checked), into a "
            "fresh 3-partition topic on the same broker; each pair of runs alternates the candidates' "
            f"order; every run's message count was checked in the topic {checked}"
            + (
                ""
                if r["package_differs"]
                else " The package is the same in both trees: the ratios show the noise, nothing else."
            )
        ),
        "",
        (
            f"Throughput ({plural(r['runs'], 'round')}; msgs/s median (min-max); time = first send to last "
            "commit, median; new/old = median of the per-round ratios, which show the noise):"
        ),
        "",
        "| run | old msgs/s | new msgs/s | time old / new | new/old | new/old per round |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind, _ in THROUGHPUT:
        k = r["kinds"][kind]
        seconds = {name: med([x["seconds"] for x in r["all_runs"][kind][name]]) for name in ("old", "new")}
        lines.append(
            f"| {LABELS[kind]} | {med(k['old_rates']):,.0f} ({span(k['old_rates'])}) "
            f"| {med(k['new_rates']):,.0f} ({span(k['new_rates'])}) "
            f"| {seconds['old']:.2f} s / {seconds['new']:.2f} s "
            f"| **{k['ratio']:.2f}** | {', '.join(f'{x:.2f}' for x in k['ratios'])} |"
        )
    lines += [
        "",
        (
            f"Timing fidelity ({plural(r['fidelity_runs'], 'round')}; the first {r['fixed_messages']:,} "
            f"messages of the day at a fixed {FIXED_INTERVAL_MS:.0f} ms; medians, ms; lateness = hand-off - "
            "scheduled time, delivery latency = commit confirmed - scheduled time; p99 new/old = of the "
            "medians, then per round):"
        ),
        "",
        "| run | lateness p50 old / new | lateness p99 old / new | p99 new/old | p99 new/old per round "
        "| delivery p99 old / new | commits old / new |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, _ in FIDELITY:
        k = r["kinds"][kind]
        pairs = zip(r["all_runs"][kind]["new"], r["all_runs"][kind]["old"], strict=True)
        p99_ratios = [n["lateness"]["lateness_p99_ms"] / o["lateness"]["lateness_p99_ms"] for n, o in pairs]
        # how many commits the cadence made: fewer when commits were slow, hence later delivery
        commits = {name: med([x["commits"] for x in r["all_runs"][kind][name]]) for name in ("old", "new")}
        lines.append(
            f"| {LABELS[kind]} | {k['old_p50']:.2f} / {k['new_p50']:.2f} "
            f"| {k['old_p99']:.2f} / {k['new_p99']:.2f} | {k['p99_ratio']:.2f} "
            f"| {', '.join(f'{x:.2f}' for x in p99_ratios)} "
            f"| {k['old_delivery_p99']:.2f} / {k['new_delivery_p99']:.2f} "
            f"| {commits['old']:.0f} / {commits['new']:.0f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", default="HEAD~1", help="the commit to compare with (default HEAD~1)")
    # max-pacing runs take seconds: 7 rounds for a median that one noisy pair cannot move far
    ap.add_argument("--runs", type=int, default=7, help="max-pacing rounds (default 7)")
    ap.add_argument("--fidelity-runs", type=int, default=3, help="fixed-pacing rounds (default 3)")
    ap.add_argument(
        "--fixed-messages", type=int, default=FIXED_MESSAGES,
        help=f"messages per fixed-pacing run (default {FIXED_MESSAGES})",
    )
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite the README section")
    args = ap.parse_args(argv)
    if min(args.runs, args.fidelity_runs, args.fixed_messages) < 1:
        ap.error("--runs, --fidelity-runs and --fixed-messages must be at least 1")

    t_start = time.perf_counter()
    info = machine()
    OUT.mkdir(parents=True, exist_ok=True)
    # outside both trees: neither candidate's path may hold the other's package
    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    broker = None
    try:
        old_tree = work / "old"
        old = extract_package(args.against, old_tree)
        trees = {"new": ROOT, "old": old_tree}
        # against the working tree, uncommitted changes included, as "new" is
        package_differs = subprocess.run(
            ["git", "diff", "--quiet", old, "--", "clickstream_dagster"], cwd=ROOT, check=False
        ).returncode != 0
        print(f"new: {ROOT} at {info['rev']}; old: {args.against} = {old}, in {old_tree}", flush=True)
        if not package_differs:
            print("  the package is the same in both trees: the ratios will show the noise", flush=True)
        for name, tree in trees.items():
            print(f"  {name} imports {run_candidate(tree, {'where_only': True})['package']}", flush=True)

        events = day_events()
        events_path = work / "day.parquet"
        events.write_parquet(events_path)
        print(f"day {DAY}: {events.height:,} page views", flush=True)

        bootstrap, broker_desc, broker = bench_broker(work)
        topics = Topics(KafkaSettings(bootstrap_servers=bootstrap, client_id="bench-compare"))
        try:
            report = measure(args, trees, topics, bootstrap, events_path)
        finally:
            topics.close()
    finally:
        if broker is not None:
            broker.stop()
            print("broker stopped", flush=True)
        shutil.rmtree(work, ignore_errors=True)

    report |= {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": info,
        "against": args.against,
        "new": info["rev"],
        "old": old,
        "package_differs": package_differs,
        "broker": broker_desc,
        "day_rows": events.height,
        "load_end": os.getloadavg(),
        "total_s": time.perf_counter() - t_start,
    }
    (OUT / "bench_compare.json").write_text(json.dumps(report, indent=1, default=str))
    text = render(report)
    print("\n" + text + "\n")
    if not args.no_readme:
        write_readme(text, SECTION)
    return 0


def measure(args, trees: dict[str, Path], topics: Topics, bootstrap: str, events_path: Path) -> dict:
    runs: dict[str, dict[str, list]] = {kind: {"new": [], "old": []} for kind, _ in THROUGHPUT + FIDELITY}
    all_ok = True
    for i in range(max(args.runs, args.fidelity_runs)):
        kinds = (THROUGHPUT if i < args.runs else ()) + (FIDELITY if i < args.fidelity_runs else ())
        for k, (kind, client) in enumerate(kinds):
            # alternate by round and by kind, so that no kind has the same candidate first every round
            order = ("new", "old") if (i + k) % 2 == 0 else ("old", "new")
            for name in order:
                topic = topics.fresh(f"cmp-{name}-{kind.replace('_', '-')}")
                job = {
                    "events": str(events_path), "bootstrap_servers": bootstrap, "topic": topic,
                    "client": client, "day": DAY,
                }
                if kind.startswith("fixed"):
                    job |= {"messages": args.fixed_messages, "interval_ms": FIXED_INTERVAL_MS}
                res = run_candidate(trees[name], job)
                res["ok"] = res["delivered"] == res["messages"]
                res["ok"] = topics.check_and_delete(topic, res["messages"]) and res["ok"]
                all_ok &= res["ok"]
                runs[kind][name].append(res)
                lat = res["lateness"]  # timing figures only for paced runs
                print(
                    f"  round {i + 1} {kind:<9} {name}: {res['rate']:8,.0f} msgs/s ({res['seconds']:.2f} s)"
                    + (
                        f", lateness p50 {lat['lateness_p50_ms']:.2f} p99 {lat['lateness_p99_ms']:.2f} ms"
                        if "lateness_p50_ms" in lat
                        else ""
                    )
                    + ("" if res["ok"] else "  !! delivery check failed"),
                    flush=True,
                )

    kinds: dict[str, dict] = {}
    for kind, _ in THROUGHPUT:
        new, old = runs[kind]["new"], runs[kind]["old"]
        ratios = [n["rate"] / o["rate"] for n, o in zip(new, old, strict=True)]
        kinds[kind] = {
            "new_rates": [x["rate"] for x in new], "old_rates": [x["rate"] for x in old],
            "ratios": ratios, "ratio": med(ratios),
        }
    for kind, _ in FIDELITY:
        figures = {
            f"{name}_{short}": med([x["lateness"][key] for x in runs[kind][name]])
            for name in ("new", "old")
            for short, key in (
                ("p50", "lateness_p50_ms"),
                ("p99", "lateness_p99_ms"),
                ("delivery_p99", "delivery_latency_p99_ms"),
            )
        }
        kinds[kind] = figures | {"p99_ratio": figures["new_p99"] / figures["old_p99"]}
    return {
        "runs": args.runs,
        "fidelity_runs": args.fidelity_runs,
        "fixed_messages": args.fixed_messages,
        "kinds": kinds,
        "all_runs": runs,
        "all_ok": all_ok,
    }


if __name__ == "__main__":
    sys.exit(main())
