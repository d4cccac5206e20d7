"""Tests of the synthetic clickstream generator.

The generated files are checked by parsing them independently with Python's ``csv``
module and re-deriving every defect count from the raw lines, never by trusting the
summary the generator reports.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pytest

from clickstream_dagster.generator import (
    COLUMNS,
    DEFAULT_ROWS,
    DEFAULT_SEED,
    DEFECT_KINDS,
    FIRST_TS,
    LAST_TS,
    generate_log,
    main,
    write_log,
)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "data" / "reference"
COMMITTED_LOG = REPO / "data" / "clickstream.csv"
COMMITTED_SUMMARY = REPO / "data" / "clickstream.summary.json"

HEADER = (
    "Unix Timestamp,Date and Time,Visitor ID,Session ID,IP Address,Country,State,City,"
    "Referrer URL,Product Page URL,Visitor Unique ID,29"
)
UUID = r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}"
VALID_USER_ID = re.compile(r"\{" + UUID + r"\}")
IPV4 = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})")
N_COLS = len(COLUMNS)
C = {name: i for i, name in enumerate(COLUMNS)}

SMALL = 6_000  # rows for the quick generations
SEED = 7


def _reference(name: str) -> list[list[str]]:
    with open(REFERENCE / name, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh, delimiter="\t"))[1:]


PRODUCT_URLS = {r[0] for r in _reference("products.tsv")}
HOME_PAGE = "http://www.acme.com/"
SWIDS = {r[0] for r in _reference("users.tsv") if r}
CLEAN_SWIDS = {s for s in SWIDS if re.fullmatch(UUID, s)}


def _utc(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _is_int(text: str) -> bool:
    return re.fullmatch(r"-?\d+", text) is not None


def _parse(data: bytes, separator: str = ",") -> tuple[list[str], list[list[str]]]:
    text = data.decode("utf-8")
    if separator == ",":
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=",", strict=True)
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    rows = list(reader)
    return rows[0], rows[1:]


def _classify(rows: list[list[str]]) -> tuple[Counter, list[list[str]]]:
    """Defect kind of every data row, worked out from the fields; also the valid rows.

    Each broken row must break exactly one rule.
    """
    counts: Counter = Counter()
    valid: list[list[str]] = []
    prev_valid: list[str] | None = None
    prev: list[str] | None = None
    for row in rows:
        if len(row) != N_COLS:
            assert 5 <= len(row) < C["Product Page URL"] + 1, row
            ts = row[0]
            assert _is_int(ts) and FIRST_TS <= int(ts) <= LAST_TS, row
            assert row[1] == _utc(int(ts))
            counts["truncated_line"] += 1
            prev = None
            continue
        ts, uid = row[C["Unix Timestamp"]], row[C["Visitor Unique ID"]]
        problems = []
        if not _is_int(ts):
            problems.append("non_numeric_timestamp")
            # not parseable as a number of any kind either
            with pytest.raises(ValueError):
                float(ts)
        elif not FIRST_TS <= int(ts) <= LAST_TS:
            problems.append("out_of_range_timestamp")
            assert row[C["Date and Time"]] == _utc(int(ts))
        if uid == "":
            problems.append("missing_user_id")
        elif not VALID_USER_ID.fullmatch(uid):
            problems.append("malformed_user_id")
        if problems:
            assert len(problems) == 1, (problems, row)
            counts[problems[0]] += 1
            prev = None
            continue
        if row == prev:
            assert prev is prev_valid
            counts["duplicate"] += 1
            continue
        counts["valid"] += 1
        valid.append(row)
        prev = prev_valid = row
    return counts, valid


@pytest.fixture(scope="module")
def small():
    return generate_log(SMALL, SEED)


@pytest.fixture(scope="module")
def small_parsed(small):
    return _parse(small.data)


@pytest.fixture(scope="module")
def committed():
    if not COMMITTED_LOG.exists():
        pytest.fail(
            f"{COMMITTED_LOG} is missing: regenerate it with `python -m clickstream_dagster.generator "
            f"--rows {DEFAULT_ROWS} --out data/clickstream.csv --summary data/clickstream.summary.json`"
        )
    data = COMMITTED_LOG.read_bytes()
    summary = json.loads(COMMITTED_SUMMARY.read_text())
    header, rows = _parse(data)
    return data, summary, header, rows


# ------------------------------------------------------------------ determinism


def test_same_seed_same_bytes(small):
    assert generate_log(SMALL, SEED).data == small.data


def test_different_seed_different_bytes(small):
    other = generate_log(SMALL, SEED + 1)
    assert other.data != small.data
    assert other.data.count(b"\n") == small.data.count(b"\n")


def test_write_log_matches_generate_log_and_chunk_size_does_not_matter(tmp_path, small):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    sa = write_log(a, SMALL, SEED)
    sb = write_log(b, SMALL, SEED, chunk_rows=777)
    assert a.read_bytes() == small.data == b.read_bytes()
    assert sa == sb == small.summary
    assert sa.bytes_written == len(small.data)
    assert not list(tmp_path.glob("*.tmp"))


# ----------------------------------------------------------------------- layout


def test_header_and_line_structure(small, small_parsed):
    data = small.data
    assert data.split(b"\n", 1)[0].decode() == HEADER
    header, rows = small_parsed
    assert tuple(header) == COLUMNS
    assert data.endswith(b"\n") and b"\r" not in data
    # one physical line per record: no quote ever swallows a line break
    assert data.count(b"\n") == SMALL + 1 == len(rows) + 1
    assert len(rows) == small.summary.rows == SMALL
    data.decode("utf-8")


def test_quoting_is_rfc4180(small_parsed):
    _, rows = small_parsed
    agents = [r[C["29"]] for r in rows if len(r) == N_COLS]
    assert any("," in a for a in agents), "some user agents contain commas"
    assert any("," not in a for a in agents)
    # re-serialising with minimal quoting gives back the very same lines
    out = io.StringIO()
    csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_MINIMAL).writerows(rows)
    assert out.getvalue().encode() == generate_log(SMALL, SEED).data.split(b"\n", 1)[1]


def test_tab_output_parses_as_tsv_with_the_same_content(small, small_parsed):
    tsv = generate_log(SMALL, SEED, separator="tab")
    assert tsv.data.split(b"\n", 1)[0].decode() == HEADER.replace(",", "\t")
    header, rows = _parse(tsv.data, "\t")
    assert tuple(header) == COLUMNS
    assert tsv.data.count(b"\n") == len(rows) + 1
    assert rows == small_parsed[1]  # same log, just another separator, nothing quoted
    # no field starts with a quote (a TSV reader with quoting on would misread it)
    assert not any(f.startswith('"') for r in rows for f in r)
    assert tsv.summary.defects == small.summary.defects
    assert tsv.summary.separator == "tab"
    assert generate_log(SMALL, SEED, separator="\t").data == tsv.data


# ----------------------------------------------------------------------- defects


def test_defect_counts_match_an_independent_parse(small, small_parsed):
    _, rows = small_parsed
    counts, valid = _classify(rows)
    summary = small.summary
    for kind in DEFECT_KINDS:
        assert counts[kind] > 0, kind
        assert counts[kind] == summary.defects[kind], kind
    assert counts["valid"] == summary.kept_rows_expected == len(valid)
    assert sum(summary.defects.values()) == summary.defect_rows == SMALL - summary.kept_rows_expected
    assert 0.008 <= summary.defect_rows / SMALL <= 0.03


def test_reject_reasons_regroup_the_defects(small):
    s = small.summary
    assert s.reject_reasons == {
        "malformed_line": s.defects["truncated_line"],
        "invalid_timestamp": s.defects["non_numeric_timestamp"],
        "out_of_range": s.defects["out_of_range_timestamp"],
        "invalid_user_id": s.defects["missing_user_id"] + s.defects["malformed_user_id"],
        "duplicate": s.defects["duplicate"],
    }


def test_truncated_lines_never_leave_an_open_quote(small):
    for line in small.data.decode().split("\n")[1:-1]:
        assert line.count('"') % 2 == 0, line
        fields = next(csv.reader([line]))
        if len(fields) < N_COLS:
            assert '"' not in line


def test_no_defects_when_rate_is_zero():
    clean = generate_log(3000, SEED, defect_rate=0.0)
    counts, valid = _classify(_parse(clean.data)[1])
    assert set(counts) == {"valid"} and len(valid) == 3000
    assert clean.summary.defect_rows == 0 and clean.summary.kept_rows_expected == 3000


# ------------------------------------------------------------------- valid rows


def _check_valid_rows(valid: list[list[str]], summary: dict) -> None:
    per_day: Counter = Counter()
    visitor_of_session: dict[str, str] = {}
    uid_of_visitor: dict[str, str] = {}
    last_ts = FIRST_TS
    for row in valid:
        ts = int(row[C["Unix Timestamp"]])
        assert FIRST_TS <= ts <= LAST_TS
        assert ts >= last_ts, "valid rows are in time order"
        last_ts = ts
        assert row[C["Date and Time"]] == _utc(ts)
        per_day[_utc(ts)[:10]] += 1
        uid = row[C["Visitor Unique ID"]]
        assert uid[1:-1] in CLEAN_SWIDS
        assert row[C["Product Page URL"]] in PRODUCT_URLS
        assert row[C["Referrer URL"]] == "" or row[C["Referrer URL"]].startswith("http://")
        vid, sid = row[C["Visitor ID"]], row[C["Session ID"]]
        assert re.fullmatch(r"[1-9]\d{18}", vid) and re.fullmatch(r"[1-9]\d{18}", sid)
        assert visitor_of_session.setdefault(sid, vid) == vid
        assert uid_of_visitor.setdefault(vid, uid) == uid
        ip = IPV4.fullmatch(row[C["IP Address"]])
        assert ip and all(0 <= int(o) <= 255 for o in ip.groups())
        assert int(ip.group(1)) not in (0, 10, 127) and not row[C["IP Address"]].startswith("192.168.")
        assert row[C["Country"]] == "usa" and re.fullmatch(r"[a-z]{2}", row[C["State"]])
        assert row[C["City"]] and row[C["29"]].startswith("Mozilla/")
    assert len(set(uid_of_visitor.values())) == len(uid_of_visitor), "Visitor ID is 1:1 with the user"
    assert dict(per_day) == {d: n for d, n in summary["rows_per_day"].items() if n}
    assert len(summary["rows_per_day"]) == 15
    timestamps = [int(r[0]) for r in valid]
    assert summary["first_timestamp"] == min(timestamps)
    assert summary["last_timestamp"] == max(timestamps)
    assert summary["home_page_rows"] == sum(r[C["Product Page URL"]] == HOME_PAGE for r in valid)
    assert summary["home_page_rows"] > 0 or len(valid) < 1000
    assert summary["distinct_users"] == len({r[C["Visitor Unique ID"]] for r in valid})
    assert summary["sessions"] == len({r[C["Session ID"]] for r in valid})
    # distinct on what cleaning publishes, so de-duplicating drops injected copies only
    published = {(r[0], r[C["Visitor Unique ID"]], r[C["IP Address"]], r[C["Product Page URL"]], r[C["29"]])
                 for r in valid}
    assert len(published) == len(valid)


def test_valid_rows_are_consistent(small, small_parsed):
    _, valid = _classify(small_parsed[1])
    _check_valid_rows(valid, small.summary.as_dict())


def test_summary_is_json_serialisable(small):
    d = json.loads(json.dumps(small.summary.as_dict()))
    assert d["rows"] == SMALL and d["columns"] == list(COLUMNS)
    assert set(d["defects"]) == set(DEFECT_KINDS)
    assert d["first_datetime"] == _utc(d["first_timestamp"])


def test_cli_prints_the_summary(tmp_path, capsys, small):
    out = tmp_path / "cli.csv"
    assert main(["--rows", str(SMALL), "--seed", str(SEED), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == small.summary.as_dict()
    assert out.read_bytes() == small.data


def test_cli_as_a_module(tmp_path):
    out = tmp_path / "m.tsv"
    done = subprocess.run(
        [sys.executable, "-m", "clickstream_dagster.generator", "--rows", "500", "--seed", "3",
         "--out", str(out), "--separator", "tab"],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    summary = json.loads(done.stdout)
    assert summary["rows"] == 500 and summary["separator"] == "tab"
    assert out.read_bytes() == generate_log(500, 3, separator="tab").data


# --------------------------------------------------------------- committed file


def test_committed_file_is_a_fresh_default_generation(committed):
    data, summary, _, _ = committed
    fresh = generate_log(DEFAULT_ROWS, DEFAULT_SEED)
    assert data == fresh.data, "data/clickstream.csv drifted from the generator: regenerate it"
    assert summary == fresh.summary.as_dict()


def test_committed_file_size_and_rows(committed):
    data, summary, header, rows = committed
    assert 30_000 <= len(rows) <= 60_000 and summary["rows"] == len(rows) == DEFAULT_ROWS
    assert len(data) < 15_000_000
    assert summary["seed"] == DEFAULT_SEED and summary["separator"] == "comma"
    assert ",".join(header) == HEADER


def test_committed_file_defects_and_valid_rows(committed):
    _, summary, _, rows = committed
    counts, valid = _classify(rows)
    assert {k: counts[k] for k in DEFECT_KINDS} == summary["defects"]
    assert counts["valid"] == summary["kept_rows_expected"]
    _check_valid_rows(valid, summary)
    # every day has traffic; users.tsv's own dirty SWIDs show up as malformed ids
    assert all(n > 1000 for n in summary["rows_per_day"].values())
    dirty_swids = SWIDS - CLEAN_SWIDS
    uids = {r[C["Visitor Unique ID"]] for r in rows if len(r) == N_COLS}
    assert any(uid[1:-1] in dirty_swids for uid in uids if uid.startswith("{") and uid.endswith("}"))


def test_committed_file_is_realistic(committed):
    _, _, _, rows = committed
    _, valid = _classify(rows)
    # day/night cycle in US time: evening peak around 00-05 UTC, trough in the US early morning
    by_hour = Counter(int(r[0]) // 3600 % 24 for r in valid)
    peak = max(by_hour, key=by_hour.get)
    trough = min(by_hour, key=by_hour.get)
    assert peak in range(0, 6) and trough in range(7, 13)
    assert by_hour[peak] > 3 * by_hour[trough]
    # skewed visitors: a few heavy ones, many light ones
    per_user = Counter(r[C["Visitor Unique ID"]] for r in valid)
    top = sorted(per_user.values(), reverse=True)
    assert top[0] > 20 * sorted(top)[len(top) // 2]
    # sessions of 1..15 page views, mostly from one ip
    sessions = defaultdict(list)
    for r in valid:
        sessions[r[C["Session ID"]]].append(r)
    assert max(len(v) for v in sessions.values()) <= 15
    assert sum(len(v) > 1 for v in sessions.values()) > len(sessions) / 2
    assert all(len({r[C["IP Address"]] for r in v}) == 1 for v in sessions.values())
    # mostly a stable ip per visitor
    ips = defaultdict(Counter)
    for r in valid:
        ips[r[C["Visitor Unique ID"]]][r[C["IP Address"]]] += 1
    home_share = sum(c.most_common(1)[0][1] for c in ips.values()) / len(valid)
    assert home_share > 0.75
    # early-2012 browsers, several with commas in their user agent
    agents = Counter(r[C["29"]] for r in valid)
    for marker in ("Version/5.1", "Firefox/10.", "MSIE 9.0", "MSIE 8.0", "Chrome/17.", "iPad; CPU OS 5_",
                   "iPhone OS 5_"):
        assert any(marker in a for a in agents), marker
    # all pages of products.tsv are visited, the home page a few percent of the time
    assert {r[C["Product Page URL"]] for r in valid} == PRODUCT_URLS
    assert 0.01 < sum(r[C["Product Page URL"]] == HOME_PAGE for r in valid) / len(valid) < 0.15


# ------------------------------------------------------------------ properties

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(min_value=0, max_value=400),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    separator=st.sampled_from([",", "\t"]),
    defect_rate=st.sampled_from([0.0, 0.015, 0.2, 0.5]),
)
def test_any_small_log_accounts_for_every_line(rows, seed, separator, defect_rate):
    log = generate_log(rows, seed, separator=separator, defect_rate=defect_rate)
    assert log.data.count(b"\n") == rows + 1
    header, parsed = _parse(log.data, separator)
    assert tuple(header) == COLUMNS and len(parsed) == rows
    counts, valid = _classify(parsed)
    assert {k: counts[k] for k in DEFECT_KINDS} == log.summary.defects
    assert len(valid) == log.summary.kept_rows_expected == rows - log.summary.defect_rows
    if valid:
        _check_valid_rows(valid, log.summary.as_dict())
