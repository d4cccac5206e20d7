"""Every cleaning rule, on small hand-written logs with exact expectations."""

import csv
import io
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clickstream_dagster.cleaning import (
    DEFAULT_MAX_LINE_BYTES,
    PUBLISHED_COLUMNS,
    LogFormatError,
    RejectReason,
    count_data_lines,
    inspect_log,
    product_id,
    stage_log,
    user_id,
)
from clickstream_dagster.partitions import DATASET_WINDOW

HEADER = ["Unix Timestamp", "Date and Time", "IP Address", "Product Page URL", "Visitor Unique ID", "29"]
UID = "f6f8b460-4204-4c26-a32c-b93826edcb99"
MAR1 = 1330560000  # 2012-03-01 00:00:00 UTC
MAR16 = 1331856000  # 2012-03-16 00:00:00 UTC, first second after the dataset


def line(ts=MAR1, ip="1.2.3.4", url="http://www.acme.com/SH55126545/VD55179433", uid="{" + UID + "}", ua="UA"):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([ts, "x", ip, url, uid, ua])
    return buf.getvalue()


def write_log(tmp_path: Path, lines: list[str], header=HEADER, sep=",", name="log.csv") -> Path:
    path = tmp_path / name
    path.write_text(sep.join(header) + "\n" + "".join(f"{x}\n" for x in lines))
    return path


def prepare(path: Path, tmp_path: Path, **settings):
    """(kept rows of all days, rejects) for a log file."""
    staged = stage_log(inspect_log(path), DATASET_WINDOW, tmp_path / "staging", **settings)
    kept = pl.concat([staged.day_events(day).collect() for day in DATASET_WINDOW.days()])
    return kept, staged.rejects().collect()


def reasons(rejects: pl.DataFrame) -> dict[int, str]:
    return dict(zip(rejects["line_number"], rejects["reason"], strict=True))


def test_a_clean_line_becomes_the_five_published_fields(tmp_path):
    kept, rejects = prepare(write_log(tmp_path, [line(ua="Mozilla/5.0 (KHTML, like Gecko)")]), tmp_path)
    assert rejects.height == 0
    assert kept.columns == list(PUBLISHED_COLUMNS)
    assert kept.row(0, named=True) == {
        "original_timestamp": MAR1,
        "userId": UID.upper(),
        "ip": "1.2.3.4",
        "productId": "VD55179433",
        "userAgent": "Mozilla/5.0 (KHTML, like Gecko)",
    }


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (line(ts="abc"), RejectReason.INVALID_TIMESTAMP),
        (line(ts=""), RejectReason.INVALID_TIMESTAMP),
        (line(ts="1330560000.5"), RejectReason.INVALID_TIMESTAMP),
        (line(ts=MAR1 - 1), RejectReason.OUT_OF_RANGE),
        (line(ts=MAR16), RejectReason.OUT_OF_RANGE),
        (line(ts=0), RejectReason.OUT_OF_RANGE),
        (line(uid=""), RejectReason.INVALID_USER_ID),
        (line(uid="NULL"), RejectReason.INVALID_USER_ID),
        (line(uid="{null}"), RejectReason.INVALID_USER_ID),
        (line(uid="{" + UID), RejectReason.INVALID_USER_ID),  # stray brace
        (line(uid="{" + UID[:-1] + "}"), RejectReason.INVALID_USER_ID),  # truncated
        (line(uid="{" + UID.replace("f", "g") + "}"), RejectReason.INVALID_USER_ID),  # not hex
        (line(ip=""), RejectReason.MISSING_IP),
        (line()[:40], RejectReason.MALFORMED_LINE),  # truncated line
        (line() + ",extra", RejectReason.MALFORMED_LINE),
        ("", RejectReason.MALFORMED_LINE),  # blank line
        (line()[:-3] + ',"UA', RejectReason.MALFORMED_LINE),  # unterminated quote
    ],
)
def test_each_broken_line_is_rejected_with_its_reason(tmp_path, raw, reason):
    kept, rejects = prepare(write_log(tmp_path, [line(), raw, line(ts=MAR1 + 5)]), tmp_path)
    assert kept.height == 2, "the good lines around the broken one are kept"
    assert reasons(rejects) == {3: reason.value}
    assert rejects["raw_line"][0] == raw.encode()


def test_an_unbalanced_quote_does_not_swallow_the_following_lines(tmp_path):
    bad = line().replace('"', "") + ',"'
    kept, rejects = prepare(write_log(tmp_path, [bad, line(ts=MAR1 + 1), line(ts=MAR1 + 2)]), tmp_path)
    assert kept["original_timestamp"].to_list() == [MAR1 + 1, MAR1 + 2]
    assert reasons(rejects) == {2: "malformed_line"}


def test_duplicates_keep_the_first_and_reject_the_rest_by_line(tmp_path):
    kept, rejects = prepare(write_log(tmp_path, [line(), line(ts=MAR1 + 1), line(), line()]), tmp_path)
    assert kept["original_timestamp"].to_list() == [MAR1, MAR1 + 1]
    assert reasons(rejects) == {4: "duplicate", 5: "duplicate"}


def test_a_line_differing_only_in_unpublished_columns_is_a_duplicate(tmp_path):
    other_date_text = line().replace(",x,", ",y,")
    kept, rejects = prepare(write_log(tmp_path, [line(), other_date_text]), tmp_path)
    assert kept.height == 1 and reasons(rejects) == {3: "duplicate"}


def test_rows_are_split_by_utc_day_and_sorted_by_time_with_ties_in_file_order(tmp_path):
    lines = [line(ts=MAR1 + 86400 + 5, ua="b"), line(ts=MAR1 + 7, ua="late"), line(ts=MAR1, ua="x"), line(ts=MAR1, ua="y")]
    staged = stage_log(inspect_log(write_log(tmp_path, lines)), DATASET_WINDOW, tmp_path / "s")
    assert staged.day_events("2012-03-01").collect()["userAgent"].to_list() == ["x", "y", "late"]
    assert staged.day_events("2012-03-02").collect()["userAgent"].to_list() == ["b"]
    assert staged.day_events("2012-03-03").collect().height == 0
    assert staged.day_events("2012-03-03").collect().schema == staged.day_events("2012-03-01").collect().schema


def test_the_last_second_of_the_last_day_is_kept(tmp_path):
    staged = stage_log(inspect_log(write_log(tmp_path, [line(ts=MAR16 - 1)])), DATASET_WINDOW, tmp_path / "s")
    assert staged.day_events("2012-03-15").collect().height == 1


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://www.acme.com/SH55126545/VD55179433", "VD55179433"),
        ("http://www.acme.com/SH55126545/VD55179433/", "VD55179433"),
        ("http://www.acme.com/SH55126545/VD55179433?ref=home#top", "VD55179433"),
        ("http://www.acme.com/", None),
        ("http://www.acme.com", None),
        ("", None),
    ],
)
def test_product_id_is_the_last_path_segment(url, expected):
    assert pl.select(product_id(pl.lit(url))).item() == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("{" + UID + "}", UID.upper()),
        (UID, UID.upper()),
        (" {" + UID.upper() + "} ", UID.upper()),
        (UID + "}", None),
        ("NULL", None),
    ],
)
def test_user_id_strips_balanced_braces_and_upper_cases(raw, expected):
    assert pl.select(user_id(pl.lit(raw))).item() == expected


def test_home_page_views_are_kept_without_a_product(tmp_path):
    kept, _ = prepare(write_log(tmp_path, [line(url="http://www.acme.com/")]), tmp_path)
    assert kept["productId"].to_list() == [None]


def test_tab_separated_log_with_extra_columns_and_crlf(tmp_path):
    header = ["Visitor ID", *HEADER, "City"]
    rows = [["42", str(MAR1), "x", "1.2.3.4", "http://www.acme.com/A/B", "{" + UID + "}", "UA, with comma", "Boston"]]
    path = tmp_path / "omniture-logs.tsv"
    path.write_bytes(("\t".join(header) + "\r\n" + "".join("\t".join(r) + "\r\n" for r in rows)).encode())
    kept, rejects = prepare(path, tmp_path)
    assert rejects.height == 0
    assert kept.row(0) == (MAR1, UID.upper(), "1.2.3.4", "B", "UA, with comma")


def test_quotes_are_data_in_a_tab_separated_log(tmp_path):
    path = tmp_path / "quoted.tsv"
    path.write_text("\t".join(HEADER) + "\n" + "\t".join([str(MAR1), "x", "1.2.3.4", "http://www.acme.com/", UID, '"UA"']) + "\n")
    kept, _ = prepare(path, tmp_path)
    assert kept["userAgent"].to_list() == ['"UA"']


def test_a_file_with_the_published_columns_is_read_as_is(tmp_path):
    header = list(PUBLISHED_COLUMNS)
    path = write_log(tmp_path, [f"{MAR1},{UID},1.2.3.4,VD1,UA", f"{MAR1 + 1},{UID},1.2.3.4,,UA"], header=header)
    kept, rejects = prepare(path, tmp_path)
    assert rejects.height == 0
    assert kept["productId"].to_list() == ["VD1", None]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(LogFormatError, match=r"not found: .*nope\.csv"):
        inspect_log(tmp_path / "nope.csv")


def test_empty_file_says_so(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(LogFormatError, match=r"empty\.csv is empty"):
        inspect_log(tmp_path / "empty.csv")


def test_header_without_lines_says_so(tmp_path):
    with pytest.raises(LogFormatError, match="no page-view lines"):
        inspect_log(write_log(tmp_path, []))


def test_wrong_delimiter_says_so(tmp_path):
    (tmp_path / "semi.csv").write_text(";".join(HEADER) + "\n1;2;3;4;5;6\n")
    with pytest.raises(LogFormatError, match=r"semi\.csv: cannot find the delimiter"):
        inspect_log(tmp_path / "semi.csv")


def test_missing_column_names_missing_and_found(tmp_path):
    path = write_log(tmp_path, [line()], header=[h for h in HEADER if h != "IP Address"])
    with pytest.raises(LogFormatError) as error:
        inspect_log(path)
    assert "['IP Address']" in str(error.value)
    assert "'Unix Timestamp'" in str(error.value) and str(path) in str(error.value)


def test_count_data_lines_counts_raw_lines_with_or_without_final_newline(tmp_path):
    (tmp_path / "a").write_text("h\n1\n\n3\n")
    (tmp_path / "b").write_text("h\n1\n2")
    assert count_data_lines(tmp_path / "a") == 3
    assert count_data_lines(tmp_path / "b") == 2


# Random messy logs: valid lines mixed with every kind of damage.
_good = st.builds(
    line,
    ts=st.integers(MAR1, MAR16 - 1),
    ip=st.sampled_from(["1.2.3.4", "75.85.165.38"]),
    url=st.sampled_from(["http://www.acme.com/", "http://www.acme.com/SH1/VD2"]),
    ua=st.sampled_from(["UA", 'Mozilla/5.0 (KHTML, like Gecko) "q"']),
)
_damaged = st.one_of(
    st.builds(line, ts=st.sampled_from(["", "abc", "-", "1e9"])),
    st.builds(line, ts=st.integers(0, 2**40).filter(lambda t: not MAR1 <= t < MAR16)),
    st.builds(line, uid=st.sampled_from(["", "NULL", "{" + UID, "{x}"])),
    st.builds(line, ip=st.just("")),
    _good.map(lambda x: x[: len(x) // 2]),
    st.text(alphabet=st.characters(blacklist_characters="\n\r\x00", blacklist_categories=["Cs"]), max_size=60),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(_good, _good, _damaged), min_size=1, max_size=40).flatmap(
    lambda xs: st.lists(st.sampled_from(xs), min_size=len(xs), max_size=len(xs) + 10)  # repeats: duplicates
))
def test_property_every_line_is_kept_or_rejected_and_kept_rows_are_valid(tmp_path_factory, lines):
    tmp_path = tmp_path_factory.mktemp("prop")
    path = write_log(tmp_path, lines)
    kept, rejects = prepare(path, tmp_path)
    assert kept.height + rejects.height == len(lines) == count_data_lines(path)
    assert rejects["line_number"].is_unique().all()
    assert kept["userId"].null_count() == 0
    assert kept["userId"].str.contains(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$").all()
    assert kept["original_timestamp"].is_between(MAR1, MAR16, closed="left").all()
    assert (kept["ip"].str.len_chars() > 0).all()
    assert kept.unique().height == kept.height


# ----------------------------------------------------------------- any bytes at all


def write_bytes_log(tmp_path: Path, body: bytes, name="log.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(",".join(HEADER).encode() + b"\n" + body)
    return path


def test_an_undecodable_byte_rejects_its_line_only_with_its_raw_bytes(tmp_path):
    latin1 = line(ua="Mozilla caf\xe9").encode("latin-1")
    body = line().encode() + b"\n" + latin1 + b"\n" + line(ts=MAR1 + 1, ua="caf\xe9").encode() + b"\n"
    kept, rejects = prepare(write_bytes_log(tmp_path, body), tmp_path)
    assert kept["userAgent"].to_list() == ["UA", "caf\xe9"], "valid UTF-8 is kept as text"
    assert reasons(rejects) == {3: "invalid_encoding"}
    assert rejects["raw_line"].to_list() == [latin1]


@pytest.mark.parametrize("where", [0, 1, 2])
def test_a_nul_byte_rejects_its_line_and_truncates_nothing(tmp_path, where):
    lines = [line(ts=MAR1 + i, ua=f"agent {i} after") for i in range(3)]
    raw = [x.encode() for x in lines]
    raw[where] = raw[where].replace(b"agent", b"ag\x00ent")
    kept, rejects = prepare(write_bytes_log(tmp_path, b"\n".join(raw) + b"\n"), tmp_path)
    assert reasons(rejects) == {where + 2: "invalid_encoding"}
    assert rejects["raw_line"].to_list() == [raw[where]]
    assert kept["userAgent"].to_list() == [f"agent {i} after" for i in range(3) if i != where]


@pytest.mark.parametrize("endings", [[b"\r"] * 3, [b"\r", b"\n", b"\r\n"], [b"\r\n", b"\r", b""]])
def test_cr_only_and_mixed_line_endings_are_lines(tmp_path, endings):
    lines = [line(ts=MAR1 + i, ua=f"ua{i}").encode() for i in range(3)]
    path = tmp_path / "log.csv"
    path.write_bytes(",".join(HEADER).encode() + b"\r" + b"".join(x + e for x, e in zip(lines, endings, strict=True)))
    kept, rejects = prepare(path, tmp_path)
    assert rejects.height == 0
    assert kept["userAgent"].to_list() == ["ua0", "ua1", "ua2"]
    assert count_data_lines(path) == 3


def test_a_line_longer_than_the_setting_is_rejected_too_long(tmp_path):
    huge = line(ua="x" * (5 << 20))  # a 5 MB user agent: more than a Kafka message
    kept, rejects = prepare(write_log(tmp_path, [line(), huge, line(ts=MAR1 + 1, ua="y" * 100)]), tmp_path)
    assert DEFAULT_MAX_LINE_BYTES == 64 * 1024
    assert kept.height == 2 and reasons(rejects) == {3: "too_long"}
    assert rejects["raw_line"][0] == huge.encode()
    _, rejects = prepare(write_log(tmp_path, [line(), line(ts=MAR1 + 1, ua="y" * 100)]), tmp_path / "b", max_line_bytes=120)
    assert reasons(rejects) == {3: "too_long"}


@pytest.mark.parametrize(
    "content",
    [
        bytes(range(256)) * 40,  # binary junk
        ",".join(HEADER).encode("utf-16") + b"\n\x00",  # UTF-16
        b"PK\x03\x04" + b"\x8f" * 5000 + b"\n" + b"\x01" * 5000,  # a zip file
        ("a," * 500 + "\n1,2\n").encode(),  # a CSV, but not a log: many columns
    ],
)
def test_a_file_that_is_not_a_log_fails_naming_it_with_a_short_excerpt(tmp_path, content):
    path = tmp_path / "not-a-log.bin"
    path.write_bytes(content)
    with pytest.raises(LogFormatError) as error:
        inspect_log(path)
    message = str(error.value)
    assert str(path) in message
    # The expected columns, and at most a short excerpt of the file: no wall of junk.
    assert len(message.replace(str(path), "")) < 500, message
    assert message.count("a,") < 40, message


def test_count_data_lines_counts_cr_and_crlf_endings_once(tmp_path):
    (tmp_path / "c").write_bytes(b"h\r1\r\n2\n\r3\r")
    assert count_data_lines(tmp_path / "c") == 4  # 1, 2, "", 3


# Arbitrary bytes: valid and damaged lines mixed with binary junk, NUL, CR, invalid
# UTF-8 and lines over the length limit, with any line endings and chunk size.
_MAX_LINE = 300
_any_bytes_line = st.one_of(
    _good.map(str.encode),
    _damaged.map(str.encode),
    st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
    _good.map(lambda x: x.encode().replace(b"UA", b"U\x00A").replace(b"www", b"w\xffw")),
    st.sampled_from([b"\xc3", b"\xed\xa0\x80", b"\x00", b'"', b'","', b"caf\xc3\xa9"]).map(lambda b: line().encode() + b),
    st.integers(_MAX_LINE - 2, _MAX_LINE + 2).map(lambda n: line(ua="u" * n).encode()[: max(n, 0)]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(st.one_of(_good.map(str.encode), _any_bytes_line), min_size=1, max_size=30).flatmap(
        lambda xs: st.lists(st.sampled_from(xs), min_size=len(xs), max_size=len(xs) + 5)  # repeats: duplicates
    ),
    endings=st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=40, max_size=40),
    final_ending=st.booleans(),
    chunk_bytes=st.sampled_from([1, 7, 64, 1 << 20]),
)
def test_property_any_bytes_every_line_accounted_for_and_raw_lines_round_trip(
    tmp_path_factory, lines, endings, final_ending, chunk_bytes
):
    endings = endings[: len(lines)]
    for i in range(len(lines) - 1):  # "\r" + "" + "\n..." would read as one CRLF
        if endings[i] == b"\r" and lines[i + 1] == b"" and endings[i + 1].startswith(b"\n"):
            endings[i + 1] = b"\r\n"
    if not final_ending:  # the last line ends at the end of the file
        if lines[-1] == b"":  # an empty last line without an ending would be no line at all
            lines, endings = lines + [line().encode()], endings + [b""]
        endings[-1] = b""
    tmp_path = tmp_path_factory.mktemp("prop")
    path = write_bytes_log(tmp_path, b"".join(x + e for x, e in zip(lines, endings, strict=True)))
    staged = stage_log(inspect_log(path), DATASET_WINDOW, tmp_path / "staging", max_line_bytes=_MAX_LINE, chunk_bytes=chunk_bytes)
    kept = pl.concat([staged.day_events(day).collect() for day in DATASET_WINDOW.days()])
    rejects = staged.rejects().collect()
    # (A record may span lines when a quoted field holds a line break: continuation lines.)
    assert kept.height + rejects.height + staged.continuation_lines == len(lines) == count_data_lines(path)
    assert rejects["line_number"].is_unique().all()
    assert rejects.schema["raw_line"] == pl.Binary
    for number, raw in zip(rejects["line_number"], rejects["raw_line"], strict=True):
        assert raw.startswith(lines[number - 2]), number  # byte-exact, whatever the bytes
        if not staged.continuation_lines:
            assert raw == lines[number - 2], number
    assert kept["userId"].str.contains(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$").all()
    assert kept["original_timestamp"].is_between(MAR1, MAR16, closed="left").all()
    assert kept.unique().height == kept.height


def test_a_log_spilled_to_disk_prepares_the_same_as_in_memory(tmp_path):
    from clickstream_dagster.generator import write_log as generate

    path = tmp_path / "gen.csv"
    generate(path, rows=3000, seed=4)
    in_memory = prepare(path, tmp_path / "a")
    spilled = prepare(path, tmp_path / "b", chunk_bytes=4096, memory_budget_bytes=1)
    assert any((tmp_path / "b" / "staging").glob("*.parquet")), "nothing was spilled"
    assert in_memory[0].equals(spilled[0]) and in_memory[1].equals(spilled[1])


# A quoted field may hold a line break (RFC 4180): one record, kept if valid, under the
# number of its first line; the lines after it keep their own numbers.
def quoted_ua(ua: str, **fields) -> str:
    """A line whose user agent is a quoted field (the csv module leaves "\n" unquoted)."""
    return line(ua="@UA@", **fields).replace("@UA@", '"' + ua.replace('"', '""') + '"')


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
@pytest.mark.parametrize("chunk_bytes", [1, 64, 1 << 20])
def test_a_quoted_field_holding_a_line_break_is_one_row(tmp_path, ending, chunk_bytes):
    multi = quoted_ua(f'Mozilla/5.0{ending}("second" line){ending}third', ts=MAR1 + 1)
    bad_multi = quoted_ua(f"a{ending}b", ts=MAR1 + 2, uid="nobody")
    lines = [line(), multi, line(ts=MAR1 + 3), bad_multi, "1,x,1.2.3.4,u", line(ts=MAR1 + 4)]
    path = tmp_path / "log.csv"
    path.write_bytes((",".join(HEADER) + ending + "".join(x + ending for x in lines)).encode())
    staged = stage_log(inspect_log(path), DATASET_WINDOW, tmp_path / "s", chunk_bytes=chunk_bytes)
    kept = pl.concat([staged.day_events(day).collect() for day in DATASET_WINDOW.days()])
    rejects = staged.rejects().collect()
    assert kept["original_timestamp"].to_list() == [MAR1, MAR1 + 1, MAR1 + 3, MAR1 + 4]
    assert kept["userAgent"][1] == f'Mozilla/5.0{ending}("second" line){ending}third'
    # Lines: 2 line(), 3-5 multi, 6 line(), 7-8 bad_multi, 9 malformed, 10 line().
    assert reasons(rejects) == {7: "invalid_user_id", 9: "malformed_line"}
    assert rejects["raw_line"][0] == bad_multi.encode()
    assert staged.lines == count_data_lines(path) == 9
    assert staged.continuation_lines == 3
    assert kept.height + rejects.height + staged.continuation_lines == staged.lines


def test_quotes_that_do_not_make_a_well_formed_record_stay_separate_lines(tmp_path):
    opened = line().replace('"', "") + ',"never closed'
    stray = line(ts=MAR1 + 2).replace('"', "") + ',x"y'  # odd quotes, a closing one out of place
    lines = [opened, line(ts=MAR1 + 1), stray, line(ts=MAR1 + 3).replace(",UA", ',closes" here')]
    kept, rejects = prepare(write_log(tmp_path, lines), tmp_path)
    assert kept["original_timestamp"].to_list() == [MAR1 + 1]
    assert reasons(rejects) == {2: "malformed_line", 4: "malformed_line", 5: "malformed_line"}


def test_a_block_never_ends_inside_a_multi_line_record(tmp_path):
    multi = [quoted_ua(f"agent {i}\nmore {i}", ts=MAR1 + i) for i in range(200)]
    path = write_log(tmp_path, multi)
    for chunk_bytes in (1, 7, 100, 333, 4096):
        kept, rejects = prepare(path, tmp_path / str(chunk_bytes), chunk_bytes=chunk_bytes)
        assert rejects.height == 0 and kept.height == 200, chunk_bytes


def test_a_block_cut_keeps_a_multi_line_record_whole_among_stray_quotes(tmp_path):
    # Odd-quote lines that join nothing (truncated inside a quoted field) near every cut.
    stray = line(ts=MAR1, ua="x").replace(",x", ',"truncated')
    lines = []
    for i in range(120):
        lines += [stray, quoted_ua(f"agent {i}\nmore {i}", ts=MAR1 + i), line(ts=MAR1 + 1000 + i)]
    path = write_log(tmp_path, lines)
    for chunk_bytes in (1, 50, 300, 1000, 4096):
        staged = stage_log(
            inspect_log(path), DATASET_WINDOW, tmp_path / str(chunk_bytes), max_line_bytes=300, chunk_bytes=chunk_bytes
        )
        kept = pl.concat([staged.day_events(day).collect() for day in DATASET_WINDOW.days()])
        rejects = staged.rejects().collect()
        assert kept.height == 240 and set(rejects["reason"]) == {"malformed_line"}, chunk_bytes
        assert rejects["line_number"].to_list() == [2 + 4 * i for i in range(120)], chunk_bytes
        assert staged.continuation_lines == 120
