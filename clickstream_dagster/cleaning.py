"""Turn the raw page-view log into clean daily events, accounting for every line.

Pure Polars; nothing here imports Dagster. The Dagster assets in
``clickstream_dagster.assets.prepare`` are thin wiring around these functions.

Why the log is read as raw lines rather than with Polars' CSV parser: the parser
pads short (truncated) lines with empty values and lets one stray quote swallow the
lines after it. Either silently breaks "every input line is kept or rejected with a
reason". Here each physical line is one record, split by one anchored, quote-aware
regex: a line that does not have exactly the header's fields is ``malformed_line``.

The work is two phases so that a 10M-row file fits in bounded memory:
1. ``stage_log``: one streaming scan of the file, every line classified and sunk into
   one local Parquet file;
2. ``StagedLog.day_events`` / ``rejects``: per day, drop duplicates and sort by time.
   Exact duplicates share their timestamp, hence their day, so per-day is enough.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from enum import StrEnum
from pathlib import Path

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
REJECTS_SCHEMA = pl.Schema({"line_number": pl.Int64, "reason": pl.String, "raw_line": pl.String})

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
# A byte that never occurs in a text log: used as the "separator" to read whole lines.
_NO_SEPARATOR = "\x00"


class RejectReason(StrEnum):
    """Why a line was not kept. The first rule a line breaks, in this order, wins."""

    MALFORMED_LINE = "malformed_line"  # wrong number of fields: truncated, blank, stray quote
    INVALID_TIMESTAMP = "invalid_timestamp"  # not an integer number of seconds
    OUT_OF_RANGE = "out_of_range"  # a valid timestamp outside the dataset's days
    INVALID_USER_ID = "invalid_user_id"  # missing, or not a (braced) UUID
    MISSING_IP = "missing_ip"
    DUPLICATE = "duplicate"  # same published fields as an earlier line


class LogFormatError(ValueError):
    """The input file cannot be read as a clickstream log; the message names the file."""


@dataclass(frozen=True)
class DayWindow:
    """The UTC days the dataset covers: ``first`` inclusive, ``end`` exclusive."""

    first: date
    end: date

    @property
    def start_epoch_s(self) -> int:
        return _epoch_s(self.first)

    @property
    def end_epoch_s(self) -> int:
        return _epoch_s(self.end)

    def days(self) -> list[str]:
        n = (self.end - self.first).days
        return [(self.first + timedelta(days=i)).isoformat() for i in range(n)]


def _epoch_s(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp())


@dataclass(frozen=True)
class LogFile:
    """A validated log file: where it is, how it is split, which column holds what."""

    path: Path
    separator: str
    columns: tuple[str, ...]
    roles: dict[str, int]  # role -> column position

    @property
    def has_product_urls(self) -> bool:
        return "url" in self.roles


def inspect_log(path: str | Path) -> LogFile:
    """Validate the file's header and work out its layout, or raise ``LogFormatError``.

    Reads only the first line, so it is cheap to call before any heavy work.
    """
    path = Path(path)
    if not path.is_file():
        raise LogFormatError(f"clickstream file not found: {path} (set CLICKSTREAM_CSV to its path)")
    with path.open("rb") as f:
        first = f.readline(1 << 20)
        second = f.readline(1 << 20)
    if not first.strip():
        raise LogFormatError(f"{path} is empty: expected a header line and page-view lines")
    header = first.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    separator = "\t" if "\t" in header else "," if "," in header else None
    if separator is None:
        raise LogFormatError(
            f"{path}: cannot find the delimiter: the header {header[:120]!r} has no tab and no "
            "comma (the log must be tab- or comma-separated)"
        )
    columns = tuple(next(csv.reader(io.StringIO(header), delimiter=separator)))
    roles = _match_layout(path, columns)
    if not second:  # end of file; a blank line is a (malformed) data line
        raise LogFormatError(f"{path} has a header but no page-view lines")
    return LogFile(path=path, separator=separator, columns=columns, roles=roles)


def _match_layout(path: Path, columns: tuple[str, ...]) -> dict[str, int]:
    stripped = [c.strip() for c in columns]
    best_missing: list[str] | None = None
    for layout in (_LOG_LAYOUT, _PUBLISHED_LAYOUT):
        missing = [name for name in layout.values() if name not in stripped]
        if not missing:
            return {role: stripped.index(name) for role, name in layout.items()}
        if best_missing is None or len(missing) < len(best_missing):
            best_missing = missing
    raise LogFormatError(
        f"{path}: missing required column(s) {best_missing}; found {list(stripped)[:40]}. "
        f"Expected the log's columns {list(_LOG_LAYOUT.values())} "
        f"or the published columns {list(_PUBLISHED_LAYOUT.values())}"
    )


def _line_pattern(log: LogFile) -> str:
    """One anchored regex for a whole line: exactly len(columns) fields, roles captured."""
    if log.separator == ",":
        field = r'"(?:[^"]|"")*"|[^,"]*'  # RFC 4180: quoted (with "" escapes) or bare
    else:
        field = r"[^\t]*"
    captured = {pos: role for role, pos in log.roles.items()}
    parts = [
        f"(?P<{captured[i]}>{field})" if i in captured else f"(?:{field})"
        for i in range(len(log.columns))
    ]
    sep = "," if log.separator == "," else r"\t"
    return "^" + sep.join(parts) + r"\r?$"


def _unquote(col: pl.Expr) -> pl.Expr:
    inner = col.str.slice(1, col.str.len_chars() - 2).str.replace_all('""', '"', literal=True)
    return pl.when(col.str.starts_with('"')).then(inner).otherwise(col)


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


def classify(log: LogFile, window: DayWindow) -> pl.LazyFrame:
    """Every line of the file with its parsed fields, its day, and its reject reason (or null).

    Columns: ``line_number`` (1-based physical line; the header is line 1), ``raw_line``,
    ``reason``, ``day`` (``YYYY-MM-DD`` for lines with an in-range timestamp) and the
    published fields. Duplicates are not decided here (see ``day_events``).
    """
    lines = pl.scan_csv(
        log.path,
        has_header=False,
        separator=_NO_SEPARATOR,
        quote_char=None,
        new_columns=["raw_line"],
        schema_overrides={"raw_line": pl.String},
        infer_schema=False,
        skip_rows=1,
        row_index_name="line_number",
        row_index_offset=2,
        truncate_ragged_lines=True,
    ).with_columns(pl.col("line_number").cast(pl.Int64), pl.col("raw_line").fill_null(""))

    # Each step's columns are materialised once: inlined, Polars would re-run the regex
    # and re-parse the timestamp for every expression that uses them (10x slower).
    roles = list(log.roles)
    fields = lines.with_columns(
        pl.col("raw_line").str.extract_groups(_line_pattern(log)).alias("_fields")
    ).unnest("_fields")
    product = product_id(pl.col("url").str.strip_chars()) if log.has_product_urls else pl.col("product").str.strip_chars()
    if log.separator == ",":  # tab-separated logs have no quoting: their quotes are data
        fields = fields.with_columns(_unquote(pl.col(r)).alias(r) for r in roles)
    parsed = fields.select(
        "line_number",
        "raw_line",
        pl.col(roles[0]).is_not_null().alias("_parsed"),
        pl.col("timestamp").str.strip_chars().cast(pl.Int64, strict=False).alias("original_timestamp"),
        user_id(pl.col("visitor")).alias("userId"),
        pl.col("ip").str.strip_chars().alias("ip"),
        product.alias("productId"),
        pl.col("user_agent").alias("userAgent"),
    )
    ts = pl.col("original_timestamp")
    in_range = (ts >= window.start_epoch_s) & (ts < window.end_epoch_s)
    reason = (
        pl.when(~pl.col("_parsed"))
        .then(pl.lit(RejectReason.MALFORMED_LINE.value))
        .when(ts.is_null())
        .then(pl.lit(RejectReason.INVALID_TIMESTAMP.value))
        .when(~pl.col("_in_range"))
        .then(pl.lit(RejectReason.OUT_OF_RANGE.value))
        .when(pl.col("userId").is_null())
        .then(pl.lit(RejectReason.INVALID_USER_ID.value))
        .when(pl.col("ip").is_null() | (pl.col("ip") == ""))
        .then(pl.lit(RejectReason.MISSING_IP.value))
    )
    return (
        parsed.with_columns(in_range.alias("_in_range"))
        .with_columns(
            reason.alias("reason"),
            pl.when("_in_range").then(pl.from_epoch(ts, "s").dt.date().cast(pl.String)).alias("day"),
            pl.when(pl.col("productId") != "").then("productId").alias("productId"),
            pl.when(pl.col("userAgent") != "").then("userAgent").alias("userAgent"),
        )
        .select("line_number", "raw_line", "reason", "day", *PUBLISHED_COLUMNS)
    )


@dataclass(frozen=True)
class StagedLog:
    """Every line of the log, classified, in one local Parquet file after one scan.

    Reading a day back filters on ``day``; the log is roughly in time order, so
    Parquet row-group statistics skip most of the file.
    """

    path: Path
    window: DayWindow

    def _split_day(self, day: str) -> tuple[Path, Path]:
        """Deduplicate one day, once: its kept events, and the line numbers of its duplicates.

        One day in memory at a time (without the raw text); both results are kept beside
        the staged lines, so reading them again is a cheap scan.
        """
        events = self.path.with_name(f"events-{day}.parquet")
        duplicates = self.path.with_name(f"duplicates-{day}.parquet")
        if not events.exists():
            lines = pl.scan_parquet(self.path).filter((pl.col("day") == day) & pl.col("reason").is_null())
            first = pl.struct(*PUBLISHED_COLUMNS).is_first_distinct()
            flagged = lines.select("line_number", *PUBLISHED_COLUMNS).sort("line_number").with_columns(first=first).collect()
            flagged.filter("first").sort("original_timestamp", "line_number").select(PUBLISHED_COLUMNS).write_parquet(events)
            flagged.filter(~pl.col("first")).select("line_number").write_parquet(duplicates)
        return events, duplicates

    def day_events(self, day: str) -> pl.LazyFrame:
        """The day's kept page views, sorted by time; ties keep file order."""
        return pl.scan_parquet(self._split_day(day)[0])

    def rejects(self, day: str | None = None) -> pl.LazyFrame:
        """Lines not kept (rule breakers and duplicates), by line number; with ``day``,
        only those dated on that day (lines without a valid date belong to no day)."""
        days = self.window.days() if day is None else [day]
        # The raw text is fetched for duplicates only, by line number.
        duplicate_lines = pl.read_parquet([self._split_day(d)[1] for d in days])["line_number"]
        lines = pl.scan_parquet(self.path)
        duplicates = lines.filter(pl.col("line_number").is_in(duplicate_lines.implode())).with_columns(
            reason=pl.lit(RejectReason.DUPLICATE.value)
        )
        broken = lines.filter(pl.col("reason").is_not_null())
        if day is not None:
            broken = broken.filter(pl.col("day") == day)
        return pl.concat([duplicates, broken]).select(REJECTS_SCHEMA.names()).sort("line_number")


def stage_log(log: LogFile, window: DayWindow, directory: Path) -> StagedLog:
    """Scan the file once, streaming, into ``directory/lines.parquet``.

    One output file, not one per day: Polars' partitioned sink buffers whole
    partitions (6 GB for 10M lines), a single sink stays around 0.7 GB.
    """
    path = Path(directory) / "lines.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Kept lines keep their raw line too: duplicates, decided per day later, are rejects.
    classify(log, window).sink_parquet(path, compression="lz4", row_group_size=64_000, engine="streaming")
    return StagedLog(path=path, window=window)


@dataclass(frozen=True)
class EventsSummary:
    rows: int
    distinct_users: int
    distinct_products: int
    first_timestamp: int | None
    last_timestamp: int | None


def summarize_events(events: pl.LazyFrame) -> EventsSummary:
    row = events.select(
        rows=pl.len(),
        distinct_users=pl.col("userId").n_unique(),
        distinct_products=pl.col("productId").drop_nulls().n_unique(),
        first_timestamp=pl.col("original_timestamp").min(),
        last_timestamp=pl.col("original_timestamp").max(),
    ).collect().row(0, named=True)
    return EventsSummary(**row)


def count_by_reason(rejects: pl.LazyFrame) -> dict[str, int]:
    counts = rejects.group_by("reason").len().collect()
    return dict(zip(counts["reason"].to_list(), counts["len"].to_list(), strict=True))


def count_data_lines(path: str | Path) -> int:
    """Lines after the header, counted from raw bytes (independent of the Polars reader).

    Used by the accounting check, so it must not share code with ``classify``.
    """
    newlines, last = 0, b"\n"
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 24):
            newlines += chunk.count(b"\n")
            last = chunk[-1:]
    lines = newlines + (0 if last == b"\n" else 1)
    return max(lines - 1, 0)
