"""Every cleaning rule, on small hand-written logs with exact expectations."""

import csv
import io
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clickstream_dagster.cleaning import (
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


def prepare(path: Path, tmp_path: Path):
    """(kept rows of all days, rejects) for a log file."""
    staged = stage_log(inspect_log(path), DATASET_WINDOW, tmp_path / "staging")
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
