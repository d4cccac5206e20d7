"""Turn the raw page-view log into clean daily events, accounting for every line.

Pure Polars and NumPy; nothing here imports Dagster. The Dagster assets in
``clickstream_dagster.assets.prepare`` are thin wiring around these functions.

A log line is a physical line of bytes, whatever those bytes are: lines end at ``\\n``,
``\\r\\n`` or a lone ``\\r``. A record is a line, or, in a comma-separated log, the few
lines a quoted field holding a line break spans (RFC 4180), when together they are well
formed. Every record is kept or rejected with a reason and its raw bytes (byte-exact, stored
as Binary, its last line ending excluded) under the number of its first line, so
kept + rejected + continuation lines = lines.

Why not hand the file straight to Polars' CSV reader: it pads short lines, lets one
stray quote swallow the lines after it, fails the whole file on one undecodable byte
and knows one line ending. So each chunk of the file is first checked line by line
with vectorised NumPy over its bytes (line ends, NUL and non-ASCII bytes, separators,
quotes): a line that is not UTF-8 text, is too long, or does not have exactly the
header's fields in well-formed RFC 4180 quoting is rejected there. Only the lines that
pass go to ``pl.read_csv``, which then cannot misalign, at the reader's own speed.
No line goes through a quote-aware regex.

Kept rows are split by UTC day as the chunks arrive (spilled to a staging directory
past a memory budget, so a 10M-line file fits in bounded memory); each day is then
de-duplicated (exact duplicates share their timestamp, hence their day) and sorted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from enum import StrEnum
from pathlib import Path

import numpy as np
import polars as pl

PUBLISHED_COLUMNS = ("original_timestamp", "userId", "ip", "productId", "userAgent")

EVENTS_SCHEMA = pl.Schema(
    {
        "original_timestamp": pl.Int64,
        "userId": pl.String,
        "ip": pl.String,
        "productId": pl.String,
        "userAgent": pl.String,
    }
)
# raw_line is the line's bytes as they are in the file, without the line ending.
REJECTS_SCHEMA = pl.Schema({"line_number": pl.Int64, "reason": pl.String, "raw_line": pl.Binary})

# A line longer than this is rejected: every kept row must fit in one Kafka message
# (the broker's default limit is 1 MB).
DEFAULT_MAX_LINE_BYTES = 64 * 1024

# Roles the cleaning needs, and the header names that carry them in each layout.
_LOG_LAYOUT = {
    "timestamp": "Unix Timestamp",
    "ip": "IP Address",
    "url": "Product Page URL",
    "visitor": "Visitor Unique ID",
    "user_agent": "29",  # the demo left the user-agent column unnamed
}
_PUBLISHED_LAYOUT = {
    "timestamp": "original_timestamp",
    "ip": "ip",
    "product": "productId",
    "visitor": "userId",
    "user_agent": "userAgent",
}

_UUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
_HEADER_SEARCH_BYTES = 1 << 20
_CHUNK_BYTES = 16 << 20
_THREADS = 2
_MEMORY_BUDGET_BYTES = 384 << 20
_EXCERPT_CHARS = 60
_LF, _CR, _QUOTE = 10, 13, 34
_BOUNDARY_CHAIN = 8  # records in a row a block cut is moved back over, at most


class RejectReason(StrEnum):
    """Why a line was not kept. The first rule a line breaks, in this order, wins."""

    INVALID_ENCODING = "invalid_encoding"  # not UTF-8 text, or a NUL byte
    TOO_LONG = "too_long"  # longer than the line-length setting (max_line_bytes)
    MALFORMED_LINE = "malformed_line"  # wrong number of fields: truncated, blank, stray quote
    INVALID_TIMESTAMP = "invalid_timestamp"  # not an integer number of seconds
    OUT_OF_RANGE = "out_of_range"  # a valid timestamp outside the dataset's days
    INVALID_USER_ID = "invalid_user_id"  # missing, or not a (braced) UUID
    MISSING_IP = "missing_ip"
    DUPLICATE = "duplicate"  # same published fields as an earlier line


# The byte-level checks, by code in the per-line array (0 = passes).
_BYTE_REASONS = {1: RejectReason.INVALID_ENCODING, 2: RejectReason.TOO_LONG, 3: RejectReason.MALFORMED_LINE}


class LogFormatError(ValueError):
    """The input file cannot be read as a clickstream log; the message names the file."""


# The setting that names the dataset's days, its form, and the sample's fifteen days.
DAYS_SETTING = "CLICKSTREAM_DAYS"
DAYS_FORM = "FIRST..LAST, two UTC days as YYYY-MM-DD, both included (e.g. 2026-11-01..2026-11-30)"
SAMPLE_DAYS = "2012-03-01..2012-03-15"
# A day is a partition: ten years of them is already more than a person browses in the UI.
MAX_WINDOW_DAYS = 3660


@dataclass(frozen=True)
class DayWindow:
    """The UTC days the dataset covers: ``first`` inclusive, ``end`` exclusive."""

    first: date
    end: date

    @classmethod
    def parse(cls, text: str | None, setting: str = DAYS_SETTING) -> DayWindow:
        """The window ``FIRST..LAST`` (both included; unset or empty: the sample's days), or a
        ``ValueError`` naming ``setting``, the value and the expected form."""
        text = (text or "").strip() or SAMPLE_DAYS

        def fail(problem: str) -> ValueError:
            return ValueError(f"{setting}={text!r}: {problem}; expected {DAYS_FORM}")

        bounds = text.split("..")
        if len(bounds) != 2:
            raise fail("not two days joined by '..'")
        first, last = (_parse_day(bound.strip(), fail) for bound in bounds)
        if last < first:
            raise fail(f"the last day {last} is before the first {first}")
        if (last - first).days + 1 > MAX_WINDOW_DAYS:
            raise fail(f"{(last - first).days + 1} days, more than the {MAX_WINDOW_DAYS} allowed")
        return cls(first=first, end=last + timedelta(days=1))

    @property
    def last(self) -> date:
        return self.end - timedelta(days=1)

    def __str__(self) -> str:
        """The window as the setting spells it: ``2012-03-01..2012-03-15``."""
        return f"{self.first}..{self.last}"

    @property
    def start_epoch_s(self) -> int:
        return _epoch_s(self.first)

    @property
    def end_epoch_s(self) -> int:
        return _epoch_s(self.end)

    def days(self) -> list[str]:
        n = (self.end - self.first).days
        return [(self.first + timedelta(days=i)).isoformat() for i in range(n)]


def _parse_day(text: str, fail) -> date:
    # Strictly YYYY-MM-DD: date.fromisoformat alone also takes 20261101 or 2026-W44-7.
    try:
        if len(text) != 10 or text[4] != "-" or text[7] != "-":
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise fail(f"{text!r} is not a day") from None


def _epoch_s(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp())


@dataclass(frozen=True)
class LogFile:
    """A validated log file: where it is, how it is split, which column holds what."""

    path: Path
    separator: str
    columns: tuple[str, ...]
    roles: dict[str, int]  # role -> column position
    data_offset: int = 0  # byte offset of the first data line (after the header's line end)

    @property
    def has_product_urls(self) -> bool:
        return "url" in self.roles

    @property
    def quoted(self) -> bool:
        """Comma-separated fields are RFC 4180 quoted; in a tab-separated log quotes are data."""
        return self.separator == ","


def excerpt(raw: bytes | str, limit: int = _EXCERPT_CHARS) -> str:
    """A short, printable excerpt of some input, for error messages."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    short = text[:limit]
    return repr(short) + (f" ... ({len(raw):,} bytes)" if len(text) > limit else "")


def inspect_log(path: str | Path) -> LogFile:
    """Validate the file's header and work out its layout, or raise ``LogFormatError``.

    Reads only the start of the file, so it is cheap to call before any heavy work.
    """
    path = Path(path)
    if not path.is_file():
        raise LogFormatError(f"clickstream file not found: {path} (set CLICKSTREAM_CSV to its path)")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(_HEADER_SEARCH_BYTES)
    if not head.strip():
        raise LogFormatError(f"{path} is empty: expected a header line and page-view lines")
    ends = [i for i in (head.find(b"\n"), head.find(b"\r")) if i >= 0]
    if not ends and len(head) < size:
        raise LogFormatError(
            f"{path} is not a log: no line break in its first {len(head) >> 20} MiB; it starts {excerpt(head)}"
        )
    end = min(ends, default=len(head))
    first = head[:end]
    data_offset = end + (2 if head[end : end + 2] == b"\r\n" else 1)
    try:
        if b"\x00" in first:
            raise UnicodeDecodeError("utf-8", first, first.index(b"\x00"), first.index(b"\x00") + 1, "NUL")
        header = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LogFormatError(
            f"{path} is not a text log: its first line is not UTF-8 text, it starts {excerpt(first)} "
            "(expected a comma- or tab-separated UTF-8 log with a header line)"
        ) from None
    separator = "\t" if "\t" in header else "," if "," in header else None
    if separator is None:
        raise LogFormatError(
            f"{path}: cannot find the delimiter: the header {excerpt(header)} has no tab and no "
            "comma (the log must be tab- or comma-separated)"
        )
    columns = tuple(next(csv.reader(io.StringIO(header), delimiter=separator)))
    roles = _match_layout(path, columns, header)
    if data_offset >= size:  # a blank line is a (malformed) data line; nothing at all is not
        raise LogFormatError(f"{path} has a header but no page-view lines")
    return LogFile(path=path, separator=separator, columns=columns, roles=roles, data_offset=data_offset)


def _match_layout(path: Path, columns: tuple[str, ...], header: str) -> dict[str, int]:
    stripped = [c.strip() for c in columns]
    best_missing: list[str] | None = None
    for layout in (_LOG_LAYOUT, _PUBLISHED_LAYOUT):
        missing = [name for name in layout.values() if name not in stripped]
        if not missing:
            return {role: stripped.index(name) for role, name in layout.items()}
        if best_missing is None or len(missing) < len(best_missing):
            best_missing = missing
    raise LogFormatError(
        f"{path}: missing required column(s) {best_missing}; its first line ({len(columns)} columns) "
        f"starts {excerpt(header)}. Expected the log's columns {list(_LOG_LAYOUT.values())} "
        f"or the published columns {list(_PUBLISHED_LAYOUT.values())}"
    )


def product_id(url: pl.Expr) -> pl.Expr:
    """The last path segment of a product page URL; null for a URL without one (home page)."""
    path = url.str.replace(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*", "").str.replace(r"[?#].*$", "")
    return path.str.extract(r"/([^/]+)/*$", 1)


def user_id(visitor: pl.Expr) -> pl.Expr:
    """The visitor UUID, braces stripped, upper case; null unless a UUID with balanced braces."""
    v = visitor.str.strip_chars()
    uuid = v.str.extract(rf"^\{{?({_UUID})\}}?$", 1)
    balanced = v.str.starts_with("{") == v.str.ends_with("}")
    return pl.when(balanced).then(uuid.str.to_uppercase())


# --------------------------------------------------------------------------- lines


@dataclass
class _Chunk:
    """Whole physical lines of the file, in memory: ``buf[starts[i]:ends[i]]`` is line i
    without its line ending, ``buf[starts[i]:stops[i]]`` with it. Line numbers are counted
    from the chunk's first line (0): the lines before it are counted when it is collected."""

    buf: bytearray
    offset: int  # file offset of buf[0]
    starts: np.ndarray
    ends: np.ndarray
    stops: np.ndarray
    lone_cr: np.ndarray  # positions of lone CRs that end a line

    def __len__(self) -> int:
        return len(self.starts)

    def raw(self, i: int) -> bytes:
        return bytes(self.buf[self.starts[i] : self.ends[i]])


def _split_lines(buf: bytes | bytearray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, stops, lone CRs) of the lines of ``buf``, which ends at a line's end
    or at the end of the file (a last line without a line ending)."""
    a = np.frombuffer(buf, np.uint8)
    n = len(a)
    term = np.flatnonzero(a == _LF)
    lone_cr = np.empty(0, np.int64)
    if b"\r" in buf:
        cr = np.flatnonzero(a == _CR)
        after = a[np.minimum(cr + 1, n - 1)]
        lone_cr = cr[(cr + 1 == n) | (after != _LF)]
        term = np.union1d(term, lone_cr)
    stops = term + 1
    starts = np.concatenate(([0], stops[:-1])) if len(stops) else stops
    ends = term.copy()
    if b"\r" in buf and len(term):  # CRLF: the CR belongs to the line ending, not to the line
        ends -= (a[term] == _LF) & (term > starts) & (a[np.maximum(term - 1, 0)] == _CR)
    if n > (int(stops[-1]) if len(stops) else 0):  # a last line without a line ending
        starts = np.append(starts, stops[-1] if len(stops) else 0)
        ends = np.append(ends, n)
        stops = np.append(stops, n)
    return starts.astype(np.int64), ends.astype(np.int64), stops.astype(np.int64), lone_cr


def _blocks(log: LogFile, chunk_bytes: int, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[bytearray, int]]:
    """The file's data lines, about ``chunk_bytes`` of whole lines at a time, with the file
    offset of each block. Read in place (``readinto``, the partial last line carried to the
    next block): the reading thread feeds both workers, so it copies nothing it can avoid.
    In a quoted log a block never ends inside a record whose quoted field holds a line break."""
    offset, carry = log.data_offset, b""
    with log.path.open("rb", buffering=0) as f:
        f.seek(offset)
        while True:
            buf = bytearray(len(carry) + chunk_bytes)
            buf[: len(carry)] = carry
            read = f.readinto(memoryview(buf)[len(carry) :])
            end = len(carry) + read
            if read == 0:  # the end of the file: the rest is the last line
                if end:
                    del buf[end:]
                    yield buf, offset
                return
            # Up to the last line end; a CR in the last byte may be half of a CRLF.
            cut = max(buf.rfind(b"\n", 0, end), buf.rfind(b"\r", 0, end - 1)) + 1
            if log.quoted and cut:
                cut = _record_boundary(buf, cut, log, max_line_bytes)
            if cut == 0:  # one line longer than a block: read on
                carry = bytes(buf[:end])
                continue
            carry = bytes(buf[cut:end])
            del buf[cut:]
            yield buf, offset
            offset += cut


def _line_of(chunk: _Chunk, positions: np.ndarray) -> np.ndarray:
    return np.searchsorted(chunk.starts, positions, side="right") - 1


def _odd_quote_lines(a: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Indices of the lines holding an odd number of quotes: where a quoted field may open
    (or close) across a line break."""
    q = np.flatnonzero(a == _QUOTE)
    return np.flatnonzero((np.searchsorted(q, ends) - np.searchsorted(q, starts)) % 2)


def _record_boundary(buf: bytearray, cut: int, log: LogFile, max_line_bytes: int) -> int:
    """``cut`` (a line start), moved back so that no record of a quoted field holding a line
    break spans it. Such a record starts with the last odd-quote line before the cut (the
    lines between are even), at most ``max_line_bytes`` before its end: the cut goes before
    that line, and further back while that line closes a record with the odd-quote line
    before it (as ``_join_quoted_breaks`` would join them). 0 (read on) when that reaches the
    block's start; after a chain of ``_BOUNDARY_CHAIN`` such records it keeps ``cut`` (a record
    across it is then judged line by line: rejected, still accounted for)."""
    if buf.find(b'"', max(cut - max_line_bytes - 1, 0), cut) < 0:
        return cut  # the common case: no quote near the cut
    lo = max(cut - 8 * max_line_bytes, 0)
    window = np.frombuffer(buf, np.uint8, count=cut - lo, offset=lo)
    breaks = np.flatnonzero((window == _LF) | (window == _CR))
    if lo == 0:  # the block's first line starts at 0
        breaks = np.concatenate(([-1], breaks))
    starts, ends = breaks[:-1] + 1, breaks[1:]  # lines that start and end in the window
    odd = _odd_quote_lines(window, starts, ends)[::-1].tolist()
    starts, ends = starts + lo, ends + lo
    if not odd or starts[odd[0]] < cut - max_line_bytes:
        return cut  # no record from there can reach past the cut
    closer = odd[0]  # a record it opens may close in the next block
    for opener in odd[1:_BOUNDARY_CHAIN]:
        joins = ends[closer] - starts[opener] <= max_line_bytes and _passes(buf, starts[opener], ends[closer], log, max_line_bytes)
        if not joins:
            return int(starts[closer])
        closer = opener  # the two make a record: the cut goes before it
    return int(starts[closer]) if len(odd) < _BOUNDARY_CHAIN else cut


def _passes(buf: bytearray, start: int, end: int, log: LogFile, max_line_bytes: int) -> bool:
    """Whether ``buf[start:end]`` as one record passes every byte check."""
    record = bytearray(buf[start:end])
    one = np.array([0]), np.array([len(record)])
    return _byte_checks(_Chunk(record, 0, *one, one[1], np.empty(0, np.int64)), log, max_line_bytes)[0][0] == 0


def _byte_checks(chunk: _Chunk, log: LogFile, max_line_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per line, the first byte-level rule it breaks (a ``_BYTE_REASONS`` code) or 0; and the
    lines with an odd number of quotes in a quoted log (see ``_join_quoted_breaks``)."""
    a = np.frombuffer(chunk.buf, np.uint8)
    n_lines = len(chunk)
    code = np.zeros(n_lines, np.int8)

    # Field count, quoting aware: separators between a quote pair are data.
    sep = ord(log.separator)
    seps = np.flatnonzero(a == sep)
    fields = 1 + np.searchsorted(seps, chunk.ends) - np.searchsorted(seps, chunk.starts)
    bad_quoting = np.zeros(n_lines, bool)
    odd = np.empty(0, np.int64)
    if log.quoted and b'"' in chunk.buf:
        q = np.flatnonzero(a == _QUOTE)
        line = _line_of(chunk, q)
        first_q = np.searchsorted(q, chunk.starts)
        n_q = np.searchsorted(q, chunk.ends) - first_q
        odd = np.flatnonzero(n_q % 2)
        k = np.arange(len(q)) - first_q[line]  # the quote's rank in its line
        opening = k % 2 == 0
        prev = a[np.maximum(q - 1, 0)]
        nxt = a[np.minimum(q + 1, len(a) - 1)]
        at_start, at_end = q == chunk.starts[line], q + 1 == chunk.ends[line]
        # RFC 4180: a quoted field starts a field and ends right before a separator or the
        # line's end; a doubled quote inside it closes and reopens.
        open_ok = at_start | (prev == sep) | (prev == _QUOTE)
        close_ok = at_end | (nxt == sep) | (nxt == _QUOTE)
        well_formed = np.where(opening, open_ok, close_ok) & (n_q[line] % 2 == 0)
        bad_quoting[line[~well_formed]] = True
        pairs = np.flatnonzero(opening & (n_q[line] % 2 == 0))
        quoted_seps = np.searchsorted(seps, q[pairs + 1]) - np.searchsorted(seps, q[pairs])
        fields -= np.bincount(line[pairs], weights=quoted_seps, minlength=n_lines).astype(np.int64)
    code[(fields != len(log.columns)) | bad_quoting] = 3

    code[chunk.ends - chunk.starts > max_line_bytes] = 2

    if b"\x00" in chunk.buf:
        code[_line_of(chunk, np.flatnonzero(a == 0))] = 1
    if not chunk.buf.isascii():
        try:
            chunk.buf.decode("utf-8")  # a line end is never inside a UTF-8 sequence
        except UnicodeDecodeError:
            for i in np.unique(_line_of(chunk, np.flatnonzero(a >= 0x80))):
                try:
                    chunk.raw(i).decode("utf-8")
                except UnicodeDecodeError:
                    code[i] = 1
    return code, odd


def _join_quoted_breaks(
    chunk: _Chunk, code: np.ndarray, odd: np.ndarray, log: LogFile, max_line_bytes: int
) -> tuple[_Chunk, np.ndarray, np.ndarray]:
    """Records instead of lines where a quoted field holds a line break (RFC 4180): an
    odd-quote line, the even-quote lines after it and the next odd-quote line make one record
    when together they pass every byte check (and fit in ``max_line_bytes``); otherwise each
    line stays a line, judged alone as before. Returns the records, their codes and the index
    of each record's first line (its line number in the chunk)."""
    first = np.arange(len(chunk), dtype=np.int64)
    if len(odd) < 2:
        return chunk, code, first
    joined: list[tuple[int, int]] = []
    k = 0
    while k < len(odd) - 1:
        i, j = int(odd[k]), int(odd[k + 1])
        start, end = int(chunk.starts[i]), int(chunk.ends[j])
        if end - start <= max_line_bytes and _passes(chunk.buf, start, end, log, max_line_bytes):
            joined.append((i, j))
            k += 2
            continue
        k += 1  # line i stays alone; j may open a record of its own
    if not joined:
        return chunk, code, first
    keep = np.ones(len(chunk), bool)
    ends, stops, code = chunk.ends.copy(), chunk.stops.copy(), code.copy()
    for i, j in joined:
        keep[i + 1 : j + 1] = False
        ends[i], stops[i], code[i] = chunk.ends[j], chunk.stops[j], 0
    records = _Chunk(chunk.buf, chunk.offset, chunk.starts[keep], ends[keep], stops[keep], chunk.lone_cr)
    return records, code[keep], first[keep]


def _read_fields(chunk: _Chunk, log: LogFile, passing: np.ndarray) -> pl.DataFrame:
    """The role columns of the lines that passed the byte checks, parsed by Polars' reader."""
    buf = chunk.buf
    if len(chunk.lone_cr):  # Polars knows one line ending: make lone CRs LFs (a copy)
        fixed = bytearray(buf)
        np.frombuffer(fixed, np.uint8)[chunk.lone_cr] = _LF
        buf = bytes(fixed)
    edges = np.diff(np.concatenate(([0], passing.view(np.int8), [0])))
    first, last = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    view = memoryview(buf)
    runs = [view[chunk.starts[i] : chunk.stops[j]] for i, j in zip(first.tolist(), last.tolist(), strict=True)]
    data = bytes(runs[0]) if len(runs) == 1 else b"".join(runs)
    if not data.endswith(b"\n"):
        data += b"\n"
    names = {pos: role for role, pos in log.roles.items()}
    frame = pl.read_csv(
        data,
        has_header=False,
        separator=log.separator,
        quote_char='"' if log.quoted else None,
        new_columns=[names.get(i, f"_{i}") for i in range(len(log.columns))],
        columns=sorted(names),
        infer_schema=False,
        empty_string_is_null=False,
        raise_if_empty=False,
    )
    if frame.height != int(passing.sum()):  # the byte checks should make this impossible
        raise RuntimeError(f"{log.path}: read {frame.height} rows from {int(passing.sum())} checked lines")
    return frame


def _by_distinct_value(fields: pl.DataFrame, column: str, derive: pl.Expr) -> pl.Series:
    """``derive`` applied to ``column``, computed once per distinct value: a log repeats
    its visitors and product pages, and the regexes are the costly part."""
    mapping = fields.select(pl.col(column).unique()).with_columns(derive.alias("_derived"))
    joined = fields.select(column).join(mapping, on=column, how="left", maintain_order="left", nulls_equal=True)
    return joined["_derived"]


def _parse(fields: pl.DataFrame, log: LogFile, window: DayWindow) -> pl.DataFrame:
    """Published fields, reason (or null) and day index of parsed lines."""
    if log.has_product_urls:
        product = _by_distinct_value(fields, "url", product_id(pl.col("url").str.strip_chars()))
    else:
        product = fields["product"].str.strip_chars()
    parsed = fields.select(
        pl.col("timestamp").str.strip_chars().cast(pl.Int64, strict=False).alias("original_timestamp"),
        _by_distinct_value(fields, "visitor", user_id(pl.col("visitor"))).alias("userId"),
        pl.col("ip").str.strip_chars().alias("ip"),
        product.alias("productId"),
        pl.col("user_agent").alias("userAgent"),
    )
    ts = pl.col("original_timestamp")
    in_range = (ts >= window.start_epoch_s) & (ts < window.end_epoch_s)
    reason = (
        pl.when(ts.is_null())
        .then(pl.lit(RejectReason.INVALID_TIMESTAMP.value))
        .when(~in_range)
        .then(pl.lit(RejectReason.OUT_OF_RANGE.value))
        .when(pl.col("userId").is_null())
        .then(pl.lit(RejectReason.INVALID_USER_ID.value))
        .when(pl.col("ip") == "")
        .then(pl.lit(RejectReason.MISSING_IP.value))
    )
    return parsed.with_columns(
        reason.alias("reason"),
        pl.when(in_range).then((ts - window.start_epoch_s) // 86400).cast(pl.Int32).alias("day_index"),
        pl.when(pl.col("productId") != "").then("productId").alias("productId"),
        pl.when(pl.col("userAgent") != "").then("userAgent").alias("userAgent"),
    )


# --------------------------------------------------------------------------- staging


_KEPT_SCHEMA = pl.Schema(
    {"line_number": pl.Int64, "offset": pl.Int64, "length": pl.Int64, **EVENTS_SCHEMA}
)
_REJECTED_SCHEMA = pl.Schema({**REJECTS_SCHEMA, "day": pl.String})


@dataclass
class _Buckets:
    """Frames by key (a day, or ``rejects``), in memory until a budget, then spilled to Parquet."""

    directory: Path
    budget: int
    frames: dict[str, list[pl.DataFrame]] = field(default_factory=dict)
    files: dict[str, list[Path]] = field(default_factory=dict)
    size: int = 0
    spills: int = 0

    def add(self, key: str, frame: pl.DataFrame) -> None:
        if frame.height:
            self.frames.setdefault(key, []).append(frame)
            self.size += frame.estimated_size()
        if self.size > self.budget:
            self.spill()

    def spill(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for key, frames in self.frames.items():
            path = self.directory / f"{key}-{self.spills:05d}.parquet"
            pl.concat(frames).write_parquet(path, compression="lz4", statistics=False)
            self.files.setdefault(key, []).append(path)
        self.frames, self.size, self.spills = {}, 0, self.spills + 1

    @property
    def spilled(self) -> bool:
        return self.spills > 0

    def get(self, key: str, schema: pl.Schema) -> pl.DataFrame:
        """All of a key's rows, in the order they were added."""
        parts = [pl.read_parquet(p) for p in self.files.get(key, [])] + self.frames.get(key, [])
        return pl.concat(parts) if parts else pl.DataFrame(schema=schema)


@dataclass
class StagedLog:
    """Every line of the log, classified after one scan: kept rows by day, and rejects.

    ``day_events`` and ``rejects`` decide a day's duplicates once, on first use.
    """

    log: LogFile
    window: DayWindow
    directory: Path
    lines: int  # physical data lines (the header excluded)
    # Lines inside records after their first: line breaks in quoted fields. Each record (kept
    # row or reject) counts once, so lines = kept + rejected + continuation_lines.
    continuation_lines: int
    version: str  # ``log_version`` of the file when the scan started
    _buckets: _Buckets
    _version: tuple[int, int]
    _events: dict[str, pl.LazyFrame] = field(default_factory=dict)
    _duplicates: dict[str, pl.DataFrame] = field(default_factory=dict)

    def _split_day(self, day: str) -> None:
        if day in self._events:
            return
        if day not in self.window.days():
            raise ValueError(f"{day} is not a day of the dataset ({self.window.days()[0]}..{self.window.days()[-1]})")
        rows = self._buckets.get(day, _KEPT_SCHEMA)
        first = rows.select(pl.struct(*PUBLISHED_COLUMNS).is_first_distinct()).to_series()
        # Rows are in file order: a stable sort by time keeps ties in file order.
        events = rows.filter(first).sort("original_timestamp", maintain_order=True).select(PUBLISHED_COLUMNS)
        duplicates = rows.filter(~first).select("line_number", "offset", "length")
        self._duplicates[day] = self._with_raw_lines(duplicates).with_columns(
            reason=pl.lit(RejectReason.DUPLICATE.value), day=pl.lit(day)
        )
        if self._buckets.spilled:  # a big log: keep no day in memory
            path = self.directory / f"events-{day}.parquet"
            events.write_parquet(path, compression="lz4", statistics=False)
            self._events[day] = pl.scan_parquet(path)
        else:
            self._events[day] = events.lazy()

    def _with_raw_lines(self, lines: pl.DataFrame) -> pl.DataFrame:
        """Lines' raw bytes, read back from the log by offset (duplicates only: few)."""
        stat = self.log.path.stat()
        if (stat.st_size, stat.st_mtime_ns) != self._version:
            raise LogFormatError(f"{self.log.path} changed while it was being prepared: prepare it again")
        with self.log.path.open("rb") as f:
            fd = f.fileno()
            raw = [os.pread(fd, n, o) for o, n in zip(lines["offset"].to_list(), lines["length"].to_list(), strict=True)]
        return lines.select("line_number", raw_line=pl.Series(raw, dtype=pl.Binary))

    def split_days(self, days: list[str]) -> None:
        """Decide the duplicates of several days at once, two days at a time (Polars releases
        the GIL): what ``day_events`` and ``rejects`` would do one day after the other."""
        with ThreadPoolExecutor(max_workers=_THREADS) as pool:
            for _ in pool.map(self._split_day, days):
                pass

    def day_events(self, day: str) -> pl.LazyFrame:
        """The day's kept page views, sorted by time; ties keep file order."""
        self._split_day(day)
        return self._events[day]

    def rejects(self, day: str | None = None) -> pl.LazyFrame:
        """Lines not kept (rule breakers and duplicates), by line number; with ``day``,
        only those dated on that day (lines without a valid date belong to no day)."""
        days = self.window.days() if day is None else [day]
        for d in days:
            self._split_day(d)
        broken = self._buckets.get("rejects", _REJECTED_SCHEMA)
        if day is not None:
            broken = broken.filter(pl.col("day") == day)
        parts = [broken.select(REJECTS_SCHEMA.names())]
        parts += [self._duplicates[d].select(REJECTS_SCHEMA.names()) for d in days]
        return pl.concat(parts).sort("line_number").lazy()


@dataclass
class _Classified:
    lines: int  # physical lines
    records: int  # fewer when a quoted field holds a line break
    kept: dict[str, pl.DataFrame]  # by day; line numbers counted from the chunk's first line
    rejected: pl.DataFrame


def _collect(classified: _Classified, buckets: _Buckets, first_line: int) -> None:
    """Into the buckets, with the line numbers of the file (the chunk's first is ``first_line``)."""
    in_file = pl.col("line_number") + first_line
    for day, frame in classified.kept.items():
        buckets.add(day, frame.with_columns(in_file))
    buckets.add("rejects", classified.rejected.with_columns(in_file))


def _classify_block(buf: bytearray, offset: int, log: LogFile, window: DayWindow, max_line_bytes: int) -> _Classified:
    """Every line of one block: kept rows by day, or rejected with its reason and raw bytes."""
    chunk = _Chunk(buf, offset, *_split_lines(buf))
    lines = len(chunk)
    days = window.days()
    code, odd = _byte_checks(chunk, log, max_line_bytes)
    if len(odd) > 1:
        chunk, code, line_numbers = _join_quoted_breaks(chunk, code, odd, log, max_line_bytes)
    else:
        line_numbers = np.arange(lines, dtype=np.int64)
    passing = code == 0
    rejected_idx: list[np.ndarray] = []
    rejected_reason: list[pl.Series] = []
    rejected_day: list[pl.Series] = []
    kept_by_day: dict[str, pl.DataFrame] = {}
    if not passing.all():
        idx = np.flatnonzero(~passing)
        rejected_idx.append(idx)
        names = np.array([""] + [r.value for r in _BYTE_REASONS.values()])
        rejected_reason.append(pl.Series(names[code[idx]], dtype=pl.String))
        rejected_day.append(pl.Series([None] * len(idx), dtype=pl.String))
    if passing.any():
        idx = np.flatnonzero(passing)
        parsed = _parse(_read_fields(chunk, log, passing), log, window).with_columns(
            idx=pl.Series(idx), line_number=pl.Series(line_numbers[idx])
        )
        broken = parsed.filter(pl.col("reason").is_not_null())
        if broken.height:
            rejected_idx.append(broken["idx"].to_numpy())
            rejected_reason.append(broken["reason"])
            day = pl.from_epoch("original_timestamp", "s").dt.date().cast(pl.String)
            rejected_day.append(broken.select(pl.when(pl.col("day_index").is_not_null()).then(day)).to_series())
        kept = parsed.filter(pl.col("reason").is_null())
        kept_idx = kept["idx"].to_numpy()
        kept = kept.with_columns(
            offset=pl.Series(chunk.offset + chunk.starts[kept_idx]),
            length=pl.Series(chunk.ends[kept_idx] - chunk.starts[kept_idx]),
        )
        for (day_index,), frame in kept.partition_by("day_index", as_dict=True, maintain_order=True).items():
            kept_by_day[days[day_index]] = frame.select(_KEPT_SCHEMA.names())
    rejected = pl.DataFrame(schema=_REJECTED_SCHEMA)
    if rejected_idx:
        idx = np.concatenate(rejected_idx)
        order = np.argsort(idx, kind="stable")
        idx = idx[order]
        view = memoryview(chunk.buf)
        raw = [bytes(view[s:e]) for s, e in zip(chunk.starts[idx].tolist(), chunk.ends[idx].tolist(), strict=True)]
        rejected = pl.DataFrame(
            {
                "line_number": line_numbers[idx],
                "reason": pl.concat(rejected_reason)[order],
                "raw_line": pl.Series(raw, dtype=pl.Binary),
                "day": pl.concat(rejected_day)[order],
            },
            schema=_REJECTED_SCHEMA,
        )
    return _Classified(lines, len(chunk), kept_by_day, rejected)


def stage_log(
    log: LogFile,
    window: DayWindow,
    directory: Path,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    *,
    chunk_bytes: int = _CHUNK_BYTES,
    memory_budget_bytes: int = _MEMORY_BUDGET_BYTES,
) -> StagedLog:
    """Scan the file once, a chunk of lines at a time, classifying every line.

    Kept rows stay in memory by day up to ``memory_budget_bytes``, past which they
    are spilled to ``directory``; rejected lines keep their raw bytes.
    """
    if max_line_bytes <= 0:
        raise ValueError(f"max_line_bytes must be positive, got {max_line_bytes}")
    directory = Path(directory)
    stat = log.path.stat()
    version = log_version(log)
    buckets = _Buckets(directory, memory_budget_bytes)
    lines = records = 0

    def collect(classified: _Classified) -> None:
        nonlocal lines, records
        _collect(classified, buckets, first_line=lines + 2)  # the header is line 1
        lines += classified.lines
        records += classified.records

    # NumPy and Polars release the GIL: while one block is checked, another is parsed.
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        pending: deque[Future] = deque()
        for buf, offset in _blocks(log, chunk_bytes, max_line_bytes):
            pending.append(pool.submit(_classify_block, buf, offset, log, window, max_line_bytes))
            while len(pending) > _THREADS:
                collect(pending.popleft().result())
        while pending:
            collect(pending.popleft().result())
    return StagedLog(
        log=log,
        window=window,
        directory=directory,
        lines=lines,
        continuation_lines=lines - records,
        version=version,
        _buckets=buckets,
        _version=(stat.st_size, stat.st_mtime_ns),
    )


def log_version(log: LogFile, *settings: object) -> str:
    """A short key for this version of the log and the settings it is prepared with:
    path, size, modification time, and the first and last 64 KiB of content."""
    stat = log.path.stat()
    digest = hashlib.sha256(repr((str(log.path.resolve()), stat.st_size, stat.st_mtime_ns, settings)).encode())
    with log.path.open("rb") as f:
        digest.update(f.read(1 << 16))
        f.seek(max(stat.st_size - (1 << 16), 0))
        digest.update(f.read(1 << 16))
    return digest.hexdigest()[:32]


def file_version(path: Path, previous: dict | None = None) -> dict:
    """Size, mtime and sha256 of the file; the hash is only recomputed when size or mtime move.
    The sha256 is the log's data version in Dagster (observations of ``clickstream_csv``)."""
    stat = path.stat()
    version = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if previous and all(previous.get(k) == version[k] for k in version):
        return previous
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return version | {"sha256": digest.hexdigest()}


@dataclass(frozen=True)
class EventsSummary:
    rows: int
    distinct_users: int
    distinct_products: int
    first_timestamp: int | None
    last_timestamp: int | None


def _summary(events: pl.LazyFrame) -> pl.LazyFrame:
    return events.select(
        rows=pl.len(),
        distinct_users=pl.col("userId").n_unique(),
        distinct_products=pl.col("productId").drop_nulls().n_unique(),
        first_timestamp=pl.col("original_timestamp").min(),
        last_timestamp=pl.col("original_timestamp").max(),
    )


def summarize_days(events: dict[str, pl.LazyFrame]) -> dict[str, EventsSummary]:
    """Each day's summary, the days computed side by side in one Polars call."""
    frames = pl.collect_all([_summary(frame) for frame in events.values()])
    return {day: EventsSummary(**frame.row(0, named=True)) for day, frame in zip(events, frames, strict=True)}


def count_by_reason(rejects: pl.LazyFrame) -> dict[str, int]:
    counts = rejects.group_by("reason").len().collect()
    return dict(zip(counts["reason"].to_list(), counts["len"].to_list(), strict=True))


def count_data_lines(path: str | Path) -> int:
    """Lines after the header, counted from raw bytes (independent of the staging code).

    A line ends at LF, CRLF or a lone CR; a last line without an ending counts too.
    Used by the accounting check, so it must not share code with ``stage_log``.
    """
    breaks, last, previous = 0, b"", b""
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 24):
            # CRLF is one break: count LFs and CRs, less the CRLF pairs (also across chunks).
            breaks += chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")
            breaks -= previous == b"\r" and chunk[:1] == b"\n"
            previous = last = chunk[-1:]
    lines = breaks + (0 if last in (b"\n", b"\r", b"") else 1)
    return max(lines - 1, 0)
