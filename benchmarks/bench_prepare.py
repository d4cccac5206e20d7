"""Benchmark: prepare the 15 daily Parquet partitions from a clickstream log.

Run with ``make bench-prepare`` (= ``.venv/bin/python benchmarks/bench_prepare.py``).

What is measured
----------------
* **ours**: the pure pipeline the prepare assets run, without Dagster:
  ``inspect_log`` + ``stage_log`` (one scan, every line classified) + for each of the
  15 days the same calls as the ``clickstream_events`` asset
  (``split_days``, ``summarize_days``, ``count_by_reason(rejects(day))``, the 10-row
  preview) and the days written as the Parquet IO manager writes them (zstd, side by
  side in one Polars call, each to a temporary name, then renamed over the old file); then every rejected line
  (``StagedLog.rejects()``) to ``rejects.parquet``, from the same scan, as the rejects
  asset gets them when both assets run together.
* **reader**: a bare ``pl.read_csv(path, infer_schema=False)`` of the same file (Polars' own CSV reader,
  nothing checked, nothing written): the speed the pipeline is measured against.
* **baseline**: what the original producer did, made like for like:
  ``pandas.read_csv(path, dtype=str)``; then a per-row Python loop (over the columns'
  values zipped together: the cheapest form of per-row Python, cheaper than
  ``iterrows``/``apply``) that parses the timestamp, checks it is inside the 15 days,
  strips the braces off the visitor id (and checks it is a UUID), requires an IP and
  takes the product id as the URL's last path segment; then pandas drops exact
  duplicates of the five published columns, splits by UTC day, sorts each day by
  (timestamp, line), computes the same per-day summary (rows, distinct users and
  products, first/last time) and writes one zstd Parquet file per day, plus a rejects
  file (line number, reason; no raw line: pandas has parsed the fields by then).
  It keeps exactly the rows ours keeps (checked on every run).

Each run is a fresh subprocess (so the peak RSS, read from ``wait4``'s rusage, is that
run's own); the full-scale runs rotate ours/baseline/reader, and the reported figures
are medians, ratios taken within each round. Wall time is the pipeline's own (inside the worker, after the imports).

Inputs are generated into ``benchmarks/out/`` (gitignored) by
``clickstream_dagster.generator.write_log`` and reused while their parameters match.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
README = ROOT / "README.md"
SECTION = ("<!-- bench-prepare:start -->", "<!-- bench-prepare:end -->")

FULL_ROWS = 400_000
BIG_ROWS = 10_000_000
SEED = 2012
SEPARATOR = ","

TARGET_FULL_S = 10.0
TARGET_READER_RATIO = 4.0  # ours / bare reader, at most
TARGET_RATIO = 5.0  # baseline / ours, at least
TARGET_BIG_S = 12.0
TARGET_BIG_RSS_GIB = 2.0
# Skip the baseline on the big file unless its projection (from the full-scale runs)
# stays under these: pandas holds every field as a Python string.
BASELINE_BIG_MAX_S = 300.0
BASELINE_BIG_MAX_RSS_GIB = 8.0

PUBLISHED = ["original_timestamp", "userId", "ip", "productId", "userAgent"]


def peak_rss_mib() -> float:
    """This process's RSS high-water mark (VmHWM), MiB.

    Read in the worker itself: the rusage ``ru_maxrss`` of a child also counts the
    parent's RSS at fork time (Linux keeps the larger across exec), which would charge
    the generator's memory to whichever candidate runs first.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------------------- workers
# Run in a child process: ``bench_prepare.py --worker ours|baseline --input F --output D``.
# They print one JSON line with their figures.


def worker_ours(src: Path, out: Path) -> dict:
    import polars as pl

    from clickstream_dagster.cleaning import count_by_reason, inspect_log, stage_log, summarize_days
    from clickstream_dagster.partitions import DATASET_WINDOW

    def replace(frames: dict[Path, pl.LazyFrame]) -> None:
        # What DailyParquetIOManager does on a local disk: write aside (all files in one
        # Polars call), then rename.
        temporaries = {path: path.with_name(f".{path.name}.tmp") for path in frames}
        pl.collect_all(
            [frame.sink_parquet(temporaries[path], compression="zstd", statistics=False, lazy=True) for path, frame in frames.items()]
        )
        for path, temporary in temporaries.items():
            os.replace(temporary, path)

    t0 = time.perf_counter()
    log = inspect_log(src)
    kept = 0
    with tempfile.TemporaryDirectory(prefix="staging-", dir=out) as staging:
        staged = stage_log(log, DATASET_WINDOW, Path(staging))
        t_staged = time.perf_counter()
        hwm = {"stage": peak_rss_mib()}
        days = DATASET_WINDOW.days()
        staged.split_days(days)
        frames = {day: staged.day_events(day) for day in days}
        summaries = summarize_days(frames)
        for day in days:
            kept += summaries[day].rows
            count_by_reason(staged.rejects(day))
            frames[day].head(10).collect()
        replace({out / f"{day}.parquet": frames[day] for day in days})
        t_days = time.perf_counter()
        hwm["days"] = peak_rss_mib()
        replace({out / "rejects.parquet": staged.rejects()})
        rejected = pl.scan_parquet(out / "rejects.parquet").select(pl.len()).collect().item()
        t_end = time.perf_counter()
        hwm["rejects"] = peak_rss_mib()
    return {
        "seconds": t_end - t0,
        "phases": {"stage": t_staged - t0, "days": t_days - t_staged, "rejects": t_end - t_days},
        "peak_rss_after_mib": hwm,
        "peak_rss_mib": peak_rss_mib(),
        "kept": kept,
        "rejected": rejected,
    }


def worker_reader(src: Path, out: Path) -> dict:
    """Polars' bare CSV reader over the same file: no checks, no output."""
    import polars as pl

    t0 = time.perf_counter()
    frame = pl.read_csv(src, infer_schema=False)  # every column as text: the log has defects
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "phases": {"read_csv": seconds},
        "peak_rss_after_mib": {"read_csv": peak_rss_mib()},
        "peak_rss_mib": peak_rss_mib(),
        "rows": frame.height,
    }


def worker_baseline(src: Path, out: Path) -> dict:
    from urllib.parse import urlsplit

    import pandas as pd

    t0 = time.perf_counter()
    df = pd.read_csv(src, dtype=str)
    t_read = time.perf_counter()
    hwm = {"read_csv": peak_rss_mib()}

    uuid = re.compile(r"\{?([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})\}?")
    start = int(dt.datetime(2012, 3, 1, tzinfo=dt.UTC).timestamp())
    end = start + 15 * 86400
    kept: dict[str, list] = {c: [] for c in ["line_number", *PUBLISHED]}
    rejected: list[tuple[int, str]] = []
    columns = [
        df[c].tolist()
        for c in ("Unix Timestamp", "IP Address", "Product Page URL", "Visitor Unique ID", "29")
    ]
    for line, (ts, ip, url, visitor, agent) in enumerate(zip(*columns), start=2):
        try:
            t = int(ts.strip())
        except (AttributeError, ValueError):  # NaN (float) or not an integer
            rejected.append((line, "invalid_timestamp"))
            continue
        if not start <= t < end:
            rejected.append((line, "out_of_range"))
            continue
        v = visitor.strip() if isinstance(visitor, str) else ""
        m = uuid.fullmatch(v)
        if m is None or v.startswith("{") != v.endswith("}"):
            rejected.append((line, "invalid_user_id"))
            continue
        if not isinstance(ip, str) or not ip.strip():
            rejected.append((line, "missing_ip"))
            continue
        product = None
        if isinstance(url, str):
            product = urlsplit(url.strip()).path.rstrip("/").rpartition("/")[2] or None
        kept["line_number"].append(line)
        kept["original_timestamp"].append(t)
        kept["userId"].append(m.group(1).upper())
        kept["ip"].append(ip.strip())
        kept["productId"].append(product)
        kept["userAgent"].append(agent if isinstance(agent, str) and agent else None)
    del df, columns
    t_loop = time.perf_counter()
    hwm["row_loop"] = peak_rss_mib()

    events = pd.DataFrame(kept)
    del kept
    duplicate = events.duplicated(subset=PUBLISHED, keep="first")
    rejects = pd.concat(
        [
            pd.DataFrame(rejected, columns=["line_number", "reason"]),
            pd.DataFrame({"line_number": events.loc[duplicate, "line_number"], "reason": "duplicate"}),
        ]
    ).sort_values("line_number")
    events = events[~duplicate]
    day = pd.to_datetime(events["original_timestamp"], unit="s").dt.strftime("%Y-%m-%d")
    n_kept = 0
    for name, group in events.groupby(day, sort=True):
        group = group.sort_values(["original_timestamp", "line_number"], kind="stable")
        _summary = (
            len(group),
            group["userId"].nunique(),
            group["productId"].nunique(),
            group["original_timestamp"].min(),
            group["original_timestamp"].max(),
        )
        n_kept += len(group)
        group[PUBLISHED].to_parquet(out / f"{name}.parquet", compression="zstd", index=False)
    rejects.to_parquet(out / "rejects.parquet", compression="zstd", index=False)
    t_end = time.perf_counter()
    return {
        "seconds": t_end - t0,
        "phases": {"read_csv": t_read - t0, "row_loop": t_loop - t_read, "split_write": t_end - t_loop},
        "peak_rss_after_mib": hwm | {"split_write": peak_rss_mib()},
        "peak_rss_mib": peak_rss_mib(),
        "kept": n_kept,
        "rejected": len(rejects),
    }


WORKERS = {"ours": worker_ours, "baseline": worker_baseline, "reader": worker_reader}


# ----------------------------------------------------------------------------- inputs


def ensure_log(rows: int) -> tuple[Path, dict]:
    """The generated log of ``rows`` lines and its generator summary; reused if present."""
    from clickstream_dagster.generator import write_log

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"clickstream-{rows}-seed{SEED}-comma.csv"
    meta_path = path.with_suffix(".json")
    params = {"rows": rows, "seed": SEED, "separator": SEPARATOR}
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("params") == params and meta.get("size") == path.stat().st_size:
            print(f"reusing {path.relative_to(ROOT)} ({path.stat().st_size / 2**20:.0f} MiB)", flush=True)
            return path, meta["summary"]
    t0 = time.perf_counter()
    summary = write_log(path, rows, seed=SEED, separator=SEPARATOR)
    meta = {"params": params, "size": path.stat().st_size, "summary": summary.as_dict()}
    meta_path.write_text(json.dumps(meta, indent=1))
    print(
        f"generated {path.relative_to(ROOT)}: {rows:,} rows, {path.stat().st_size / 2**20:.0f} MiB "
        f"in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    return path, meta["summary"]


# ----------------------------------------------------------------------------- runner


def run_once(candidate: str, src: Path, expected: dict) -> dict:
    """One candidate in a fresh interpreter; its own figures plus its rusage."""
    out = OUT / "runs" / candidate
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        candidate,
        "--input",
        str(src),
        "--output",
        str(out),
    ]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    # wait4, not communicate(): the child's own rusage (CPU time of this run only).
    # The child's output is small (one JSON line), so the pipes cannot fill up.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    process_s = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{candidate} on {src.name} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result |= {
        "candidate": candidate,
        "process_s": process_s,
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }
    if candidate == "reader":  # it checks nothing: it only has to read every line
        ok = result["rows"] > 0
    else:
        ok = result["kept"] == expected["kept_rows_expected"] and result["rejected"] == expected["defect_rows"]
    result["output_ok"] = ok
    if not ok:
        print(
            f"  !! {candidate}: kept {result['kept']} rejected {result['rejected']}, generator expects "
            f"{expected['kept_rows_expected']} / {expected['defect_rows']}",
            flush=True,
        )
    shutil.rmtree(out, ignore_errors=True)
    print(
        f"  {candidate:<8} {src.name}: {result['seconds']:7.2f} s (cpu {result['cpu_s']:6.1f} s), "
        f"peak RSS {result['peak_rss_mib']:6.0f} MiB  "
        + " ".join(f"{k}={v:.2f}" for k, v in result["phases"].items()),
        flush=True,
    )
    return result


def stats(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def phase_medians(runs: list[dict]) -> dict:
    return {k: statistics.median(r["phases"][k] for r in runs) for k in runs[0]["phases"]}


# ----------------------------------------------------------------------------- report


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = "?"
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "polars": version("polars"),
        "pandas": version("pandas"),
        "load": load,
        "rev": rev,
    }


def yes(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def render(report: dict) -> str:
    m, full, big = report["machine"], report["full"], report["big"]
    ours, base = full["ours"], full["baseline"]
    ratio = full["ratio"]
    lines = [
        (
            f"`make bench-prepare` (= `.venv/bin/python benchmarks/bench_prepare.py`), run "
            f"{report['date']} on {m['nproc']} cores ({m['cpu']}), {m['mem_gib']:.0f} GiB, shared with other "
            f"work (load average {m['load'][0]:.1f} at the start, {report['load_end'][0]:.1f} at the end); "
            f"Python {m['python']}, Polars {m['polars']}, pandas {m['pandas']}; code at `{m['rev']}`. "
            f"Total benchmark time {report['total_s'] / 60:.1f} min."
        ),
        "",
        (
            "Preparing all 15 days (stage + 15 day files + rejects, one scan; pure pipeline, no Dagster "
            "overhead) of generated logs. Each run is a fresh process; full-scale runs go in rounds of "
            "ours, the baseline and the bare reader, in rotating order. Wall time is the pipeline's own (after imports; the whole process, with Python's "
            "start and the imports, is shown too); CPU time (user + system, all "
            "threads) from the process's rusage; peak RSS is the process's high-water mark (`VmHWM`)."
        ),
        "",
        (
            "- **ours**: `inspect_log` + `stage_log` (one scan: every line's bytes checked with NumPy, the "
            "lines that pass parsed by `pl.read_csv`), then for each day what the `clickstream_events` "
            "asset does (`split_days`, `summarize_days`, `count_by_reason(rejects(day))`, a 10-row preview) and the days "
            "written as its IO manager writes them (zstd, side by side in one Polars call, each to a temporary "
            "name, renamed over the old file); "
            "then `rejects()` to one file, from the same scan (as the rejects asset takes them when both "
            "assets run together)."
        ),
        (
            "- **reader**: a bare `pl.read_csv(path, infer_schema=False)` of the same file (every column as text), in its own process: Polars' CSV "
            "reader with nothing checked and nothing written, the speed to measure ours against."
        ),
        (
            "- **baseline** (the original producer's way, made like for like): `pandas.read_csv(dtype=str)`; "
            "a per-row Python loop over the zipped columns (the cheapest per-row form, cheaper than "
            "`iterrows`) that parses the timestamp and checks the 15 days, strips the braces off the visitor "
            "id and checks it is a UUID, requires an IP and takes the product id as the URL's last path "
            "segment; then pandas drops duplicates, splits by day, sorts, computes the same per-day summary "
            "and writes 15 zstd Parquet files plus the rejects (line number and reason; no raw line). "
            "It keeps and rejects exactly the lines ours does (checked on every run)."
        ),
        "",
        (
            "| input | candidate | runs | wall median | wall min-max | whole process (median) | CPU median "
            "| peak RSS (max of runs) |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in (
        ("ours (Polars)", ours),
        ("baseline (pandas + per-row Python)", base),
        ("bare reader (`pl.read_csv`)", full["reader"]),
    ):
        lines.append(
            f"| {FULL_ROWS:,} rows, {full['mib']:.0f} MiB | {name} | {s['wall']['n']} | "
            f"{s['wall']['median']:.2f} s | {s['wall']['min']:.2f}-{s['wall']['max']:.2f} s | "
            f"{s['process']['median']:.2f} s | {s['cpu']['median']:.1f} s | {s['rss']['max']:.0f} MiB |"
        )
    for name, s in (
        ("ours (Polars)", big["ours"]),
        ("baseline", big.get("baseline")),
        ("bare reader (`pl.read_csv`)", big.get("reader")),
    ):
        if s is None:
            continue
        lines.append(
            f"| {BIG_ROWS:,} rows, {big['mib']:.0f} MiB | {name} | {s['wall']['n']} | "
            f"{s['wall']['median']:.1f} s | {s['wall']['min']:.1f}-{s['wall']['max']:.1f} s | "
            f"{s['process']['median']:.1f} s | {s['cpu']['median']:.1f} s | "
            f"{s['rss']['max']:.0f} MiB ({s['rss']['max'] / 1024:.2f} GiB) |"
        )
    lines += [
        "",
        (
            f"At full scale, ours takes **{full['reader_ratio']['median']:.1f}x** the bare reader's time "
            f"(median of the {full['reader_ratio']['n']} rounds' ratios; min-max "
            f"{full['reader_ratio']['min']:.1f}-{full['reader_ratio']['max']:.1f}x), and the baseline takes "
            f"**{ratio['median']:.1f}x** ours (min-max {ratio['min']:.1f}-{ratio['max']:.1f}x; on CPU time "
            f"{full['cpu_ratio']:.1f}x). At {BIG_ROWS:,} rows ours takes "
            f"**{big['ours']['wall']['median'] / big['reader']['wall']['median']:.1f}x** the bare reader's "
            f"time (medians), in {big['ours']['rss']['max'] / big['reader']['rss']['max']:.2f}x its peak RSS."
        ),
        "",
        "Where the time goes (medians, s): ours "
        + ", ".join(f"{k} {v:.2f}" for k, v in ours["phases"].items())
        + f" at {FULL_ROWS:,} rows; "
        + ", ".join(f"{k} {v:.1f}" for k, v in big["ours"]["phases"].items())
        + f" at {BIG_ROWS:,}; baseline "
        + ", ".join(f"{k} {v:.2f}" for k, v in base["phases"].items())
        + ".",
        "",
        "Peak RSS reached by the end of each phase (MiB, max of runs): ours at "
        f"{BIG_ROWS:,} rows "
        + ", ".join(f"{k} {v:.0f}" for k, v in big["ours"]["rss_after"].items())
        + f"; at {FULL_ROWS:,} rows "
        + ", ".join(f"{k} {v:.0f}" for k, v in ours["rss_after"].items())
        + "; baseline "
        + ", ".join(f"{k} {v:.0f}" for k, v in base["rss_after"].items())
        + ".",
        "",
        "| target | measured | |",
        "| --- | --- | --- |",
        (
            f"| full scale under {TARGET_FULL_S:g} s | {ours['wall']['median']:.2f} s "
            f"| {yes(report['targets']['full_s'])} |"
        ),
        (
            f"| within {TARGET_READER_RATIO:g}x of the bare reader | {full['reader_ratio']['median']:.1f}x "
            f"| {yes(report['targets']['reader_ratio'])} |"
        ),
        (
            f"| at least {TARGET_RATIO:g}x faster than the baseline | {ratio['median']:.1f}x "
            f"| {yes(report['targets']['ratio'])} |"
        ),
        (
            f"| {BIG_ROWS:,} rows under {TARGET_BIG_S:g} s | {big['ours']['wall']['median']:.1f} s "
            f"(the bare reader alone: {big['reader']['wall']['median']:.1f} s) | {yes(report['targets']['big_s'])} |"
        ),
        (
            f"| {BIG_ROWS:,} rows under {TARGET_BIG_RSS_GIB:g} GiB peak RSS | "
            f"{big['ours']['rss']['max'] / 1024:.2f} GiB | {yes(report['targets']['big_rss'])} |"
        ),
        "",
        "Every run's output (ours and the baseline) was checked against the generator's expectations "
        "(kept rows, rejected lines): "
        + ("all matched." if report["outputs_ok"] else "**some did NOT match** (see the run log)."),
    ]
    if big.get("baseline_note"):
        lines += ["", big["baseline_note"]]
    return "\n".join(lines)


def write_readme(text: str, section: tuple[str, str] = SECTION) -> None:
    """Replace the README's figures between the section's two markers."""
    content = README.read_text()
    start, end = section
    i, j = content.find(start), content.find(end)
    if i < 0 or j < i:
        print(f"README.md has no {start} ... {end} section: not updated", file=sys.stderr)
        return
    README.write_text(content[: i + len(start)] + "\n" + text + "\n" + content[j:])
    print(f"README.md section {start} rewritten")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="full-scale runs per candidate (default 5)")
    ap.add_argument("--big-runs", type=int, default=3, help=f"{BIG_ROWS:,}-row runs of ours (default 3)")
    ap.add_argument(
        "--baseline-big",
        choices=["auto", "yes", "no"],
        default="auto",
        help="run the baseline on the big file: auto = only if its projection fits",
    )
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite the README section")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.input, args.output)))
        return 0

    t_start = time.perf_counter()
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu']}, load {info['load'][0]:.1f}; code {info['rev']}")
    full_path, full_expected = ensure_log(FULL_ROWS)
    big_path, big_expected = ensure_log(BIG_ROWS)

    print(f"\nfull scale ({FULL_ROWS:,} rows): {args.runs} rounds, the candidates' order rotating", flush=True)
    candidates = ["ours", "baseline", "reader"]
    runs: dict[str, list[dict]] = {c: [] for c in candidates}
    for i in range(args.runs):
        for candidate in candidates[i % 3 :] + candidates[: i % 3]:
            runs[candidate].append(run_once(candidate, full_path, full_expected))
    pair_ratios = [b["seconds"] / o["seconds"] for o, b in zip(runs["ours"], runs["baseline"], strict=True)]
    reader_ratios = [o["seconds"] / r["seconds"] for o, r in zip(runs["ours"], runs["reader"], strict=True)]

    def summary(rs: list[dict]) -> dict:
        return {
            "wall": stats(rs, "seconds"),
            "process": stats(rs, "process_s"),
            "cpu": stats(rs, "cpu_s"),
            "rss": stats(rs, "peak_rss_mib"),
            "rss_after": {
                k: max(r["peak_rss_after_mib"][k] for r in rs) for k in rs[0]["peak_rss_after_mib"]
            },
            "phases": phase_medians(rs),
        }

    full = {
        "mib": full_path.stat().st_size / 2**20,
        "ours": summary(runs["ours"]),
        "baseline": summary(runs["baseline"]),
        "reader": summary(runs["reader"]),
        "ratio": {
            "median": statistics.median(pair_ratios),
            "min": min(pair_ratios),
            "max": max(pair_ratios),
            "n": len(pair_ratios),
        },
        "reader_ratio": {
            "median": statistics.median(reader_ratios),
            "min": min(reader_ratios),
            "max": max(reader_ratios),
            "n": len(reader_ratios),
        },
    }
    full["cpu_ratio"] = full["baseline"]["cpu"]["median"] / full["ours"]["cpu"]["median"]

    print(f"\n{BIG_ROWS:,} rows: ours and the bare reader, {args.big_runs} rounds", flush=True)
    big_runs, big_reader_runs = [], []
    for i in range(args.big_runs):
        for candidate in ("ours", "reader") if i % 2 == 0 else ("reader", "ours"):
            (big_runs if candidate == "ours" else big_reader_runs).append(run_once(candidate, big_path, big_expected))
    big = {"mib": big_path.stat().st_size / 2**20, "ours": summary(big_runs), "reader": summary(big_reader_runs)}
    scale = BIG_ROWS / FULL_ROWS
    projected_s = full["baseline"]["wall"]["median"] * scale
    projected_gib = full["baseline"]["rss"]["max"] * scale / 1024
    run_base_big = args.baseline_big == "yes" or (
        args.baseline_big == "auto"
        and projected_s <= BASELINE_BIG_MAX_S
        and projected_gib <= BASELINE_BIG_MAX_RSS_GIB
    )
    all_runs = runs["ours"] + runs["baseline"] + runs["reader"] + big_runs + big_reader_runs
    if run_base_big:
        base_big = [run_once("baseline", big_path, big_expected)]
        all_runs += base_big
        big["baseline"] = summary(base_big)
    else:
        over = (
            [f"{projected_s:.0f} s > {BASELINE_BIG_MAX_S:.0f} s"] if projected_s > BASELINE_BIG_MAX_S else []
        )
        if projected_gib > BASELINE_BIG_MAX_RSS_GIB:
            over.append(f"{projected_gib:.0f} GiB > {BASELINE_BIG_MAX_RSS_GIB:.0f} GiB")
        big["baseline_note"] = (
            f"The baseline was not run on {BIG_ROWS:,} rows: scaled linearly from its full-scale runs it "
            f"would take about {projected_s / 60:.0f} min and peak around {projected_gib:.0f} GiB of RSS "
            f"(pandas keeps every field as a Python string), over this benchmark's limit for a shared "
            f"{info['mem_gib']:.0f} GiB machine ({'; '.join(over) or 'forced off'}). "
            "`--baseline-big yes` forces it."
        )

    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": info,
        "full": full,
        "big": big,
        "outputs_ok": all(r["output_ok"] for r in all_runs),
        "targets": {
            "full_s": full["ours"]["wall"]["median"] < TARGET_FULL_S,
            "reader_ratio": full["reader_ratio"]["median"] <= TARGET_READER_RATIO,
            "ratio": full["ratio"]["median"] >= TARGET_RATIO,
            "big_s": big["ours"]["wall"]["median"] < TARGET_BIG_S,
            "big_rss": big["ours"]["rss"]["max"] < TARGET_BIG_RSS_GIB * 1024,
        },
        "load_end": os.getloadavg(),
        "total_s": time.perf_counter() - t_start,
    }
    (OUT / "bench_prepare.json").write_text(
        json.dumps({"report": report, "runs": all_runs}, indent=1, default=str)
    )
    text = render(report)
    print("\n" + text + "\n")
    if not args.no_readme:
        write_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
