"""Synthetic stand-in for the acme.com Omniture clickstream export (``omniture-logs.tsv``).

The real log (15 days of March 2012) is not available; this module fabricates a
realistic, *deterministic* replacement from the two real side tables in
``data/reference`` (``products.tsv`` and ``users.tsv``).

Pure module: imports only numpy, polars and the standard library (never dagster),
so it can be used from tests, benchmarks and the command line::

    python -m clickstream_dagster.generator --rows 45000 --seed 2012 \
        --out data/clickstream.csv [--separator comma|tab]

Layout
------
One page view per line, header first, ``\\n`` line endings, UTF-8 (in practice
ASCII).  Columns, in file order (see :data:`COLUMNS`)::

    Unix Timestamp, Date and Time, Visitor ID, Session ID, IP Address, Country,
    State, City, Referrer URL, Product Page URL, Visitor Unique ID, 29

``29`` is the log's unnamed user-agent column (the header text is literally ``29``).
With ``separator=","`` fields containing a comma or a double quote are quoted per
RFC 4180 (in practice: most user agents and the few user ids that contain ``"``);
with ``separator="\\t"`` nothing is quoted and no field contains a tab or newline.

Valid rows
----------
* ``Unix Timestamp`` is an integer in ``[FIRST_TS, LAST_TS]`` =
  2012-03-01 00:00:00 .. 2012-03-15 23:59:59 UTC; ``Date and Time`` is the same
  instant formatted ``%Y-%m-%d %H:%M:%S`` (UTC).
* ``Visitor Unique ID`` is ``{SWID}`` for a well-formed upper-case SWID of users.tsv,
  i.e. it fully matches :data:`USER_ID_PATTERN`.
* ``Product Page URL`` is a url of products.tsv (the bare home page included: that
  is legitimate, its product id is simply null downstream).
* ``Visitor ID`` (19 digits) is 1:1 with the user; ``Session ID`` (19 digits) is
  unique per session and each session belongs to one visitor.  Within a session
  page views are strictly increasing in time, so no two generated page views are
  identical: every exact duplicate line in the file is an injected ``duplicate``.
* Lines are sorted ascending by the generated timestamp (defects keep the slot of
  the page view they corrupted).

Defects (each broken line has exactly one defect kind)
------------------------------------------------------
``missing_user_id``        ``Visitor Unique ID`` empty.
``malformed_user_id``      ``Visitor Unique ID`` present but not matching
                           :data:`USER_ID_PATTERN`: ``NULL``, ``{null}``, missing
                           or doubled closing brace, truncated uuid, a non-hex
                           letter, a stray ``"``; plus every row of the few
                           users.tsv users whose own SWID is dirty (``NULL``,
                           ``null``, ``5FE7...641B}"``), written as ``{<SWID>}``.
``non_numeric_timestamp``  ``Unix Timestamp`` empty or not an integer (``abc``,
                           ``NULL``, ``-``, ``1331.5e9x``, a digit replaced by
                           ``O``, a trailing ``s``).  Not parseable as a float
                           either.  ``Date and Time`` keeps the original instant.
``out_of_range_timestamp`` an integer outside the 15 days (0, 2011, 2038,
                           February, late March, and exactly one second before /
                           after the window); ``Date and Time`` matches it.
``truncated_line``         the line is cut short somewhere after the ``Session ID``
                           field and before ``Product Page URL`` (possibly in the
                           middle of a field): it has 5-9 of the 12 fields, so
                           ``Product Page URL``, ``Visitor Unique ID`` and the user
                           agent are missing.  Only never-quoted fields precede the
                           cut, so no open quote can swallow the next line.
                           ``Unix Timestamp`` stays valid.
``duplicate``              an exact byte-for-byte copy of the previous line, which
                           is always a valid line.

The expected result of cleaning is therefore: drop the first five kinds, keep
one copy of each duplicated line -> ``kept_rows_expected`` rows.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import io
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import polars as pl

__all__ = [
    "COLUMNS",
    "DEFECT_KINDS",
    "DEFAULT_DEFECT_RATE",
    "DEFAULT_REFERENCE_DIR",
    "DEFAULT_ROWS",
    "DEFAULT_SEED",
    "FIRST_TS",
    "LAST_TS",
    "USER_ID_PATTERN",
    "GeneratedLog",
    "LogSummary",
    "generate_log",
    "write_log",
    "main",
]

# --------------------------------------------------------------------------- constants

DEFAULT_SEED = 2012
#: Row count of the committed ``data/clickstream.csv``.
DEFAULT_ROWS = 45_000
DEFAULT_REFERENCE_DIR = Path(__file__).resolve().parent.parent / "data" / "reference"
#: Share of data lines that are broken (all kinds together, before the few extra
#: malformed rows contributed by users.tsv's own dirty SWIDs).
DEFAULT_DEFECT_RATE = 0.015
DEFAULT_CHUNK_ROWS = 500_000

COLUMNS: tuple[str, ...] = (
    "Unix Timestamp",
    "Date and Time",
    "Visitor ID",
    "Session ID",
    "IP Address",
    "Country",
    "State",
    "City",
    "Referrer URL",
    "Product Page URL",
    "Visitor Unique ID",
    "29",
)

DEFECT_KINDS: tuple[str, ...] = (
    "missing_user_id",
    "malformed_user_id",
    "non_numeric_timestamp",
    "out_of_range_timestamp",
    "truncated_line",
    "duplicate",
)
# Relative weight of each kind inside ``defect_rate``.
_DEFECT_SHARES = np.array([0.15, 0.15, 0.15, 0.15, 0.15, 0.25])

#: A valid ``Visitor Unique ID``: an upper-case SWID in braces.
USER_ID_PATTERN = r"\{[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\}"
_SWID_RE = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}")

FIRST_TS = 1330560000  # 2012-03-01 00:00:00 UTC
DAYS = 15
LAST_TS = FIRST_TS + DAYS * 86400 - 1  # 2012-03-15 23:59:59 UTC
# US daylight saving time starts 2012-03-11 02:00 local time.
_DST_START_LOCAL = 10 * 86400 + 2 * 3600  # seconds after 2012-03-01 00:00 local

_KIND_VALID = 0
_K_MISSING, _K_MALFORMED, _K_NONNUM, _K_RANGE, _K_TRUNC = 1, 2, 3, 4, 5

# ---------------------------------------------------------------------- static tables

# Early-2012 user agents (weight, string).  Several contain commas.
_USER_AGENTS: tuple[tuple[float, str], ...] = (
    # Safari 5 on Mac OS X
    (7.0, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_6_8) AppleWebKit/534.52.7 (KHTML, like Gecko) Version/5.1.2 Safari/534.52.7"),
    (5.0, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_3) AppleWebKit/534.53.11 (KHTML, like Gecko) Version/5.1.3 Safari/534.53.10"),
    (2.0, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_2) AppleWebKit/534.52.7 (KHTML, like Gecko) Version/5.1.2 Safari/534.52.7"),
    # Firefox 10
    (7.0, "Mozilla/5.0 (Windows NT 6.1; WOW64; rv:10.0.2) Gecko/20100101 Firefox/10.0.2"),
    (4.0, "Mozilla/5.0 (Windows NT 6.1; rv:10.0.2) Gecko/20100101 Firefox/10.0.2"),
    (3.0, "Mozilla/5.0 (Windows NT 5.1; rv:10.0.2) Gecko/20100101 Firefox/10.0.2"),
    (2.0, "Mozilla/5.0 (Windows NT 6.1; WOW64; rv:10.0.1) Gecko/20100101 Firefox/10.0.1"),
    (2.0, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.7; rv:10.0.2) Gecko/20100101 Firefox/10.0.2"),
    # Internet Explorer 9 / 8
    (9.0, "Mozilla/5.0 (compatible; MSIE 9.0; Windows NT 6.1; WOW64; Trident/5.0)"),
    (5.0, "Mozilla/5.0 (compatible; MSIE 9.0; Windows NT 6.1; Trident/5.0)"),
    (5.0, "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 5.1; Trident/4.0)"),
    (3.0, "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.1; WOW64; Trident/4.0; SLCC2; .NET CLR 2.0.50727; .NET CLR 3.5.30729)"),
    # Chrome 17
    (10.0, "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/535.11 (KHTML, like Gecko) Chrome/17.0.963.56 Safari/535.11"),
    (5.0, "Mozilla/5.0 (Windows NT 6.1) AppleWebKit/535.11 (KHTML, like Gecko) Chrome/17.0.963.56 Safari/535.11"),
    (3.0, "Mozilla/5.0 (Windows NT 5.1) AppleWebKit/535.11 (KHTML, like Gecko) Chrome/17.0.963.46 Safari/535.11"),
    (3.0, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_3) AppleWebKit/535.11 (KHTML, like Gecko) Chrome/17.0.963.56 Safari/535.11"),
    # iOS 5 / Android
    (6.0, "Mozilla/5.0 (iPad; CPU OS 5_0_1 like Mac OS X) AppleWebKit/534.46 (KHTML, like Gecko) Version/5.1 Mobile/9A405 Safari/7534.48.3"),
    (2.0, "Mozilla/5.0 (iPad; CPU OS 5_0 like Mac OS X) AppleWebKit/534.46 (KHTML, like Gecko) Version/5.1 Mobile/9A334 Safari/7534.48.3"),
    (5.0, "Mozilla/5.0 (iPhone; CPU iPhone OS 5_0_1 like Mac OS X) AppleWebKit/534.46 (KHTML, like Gecko) Version/5.1 Mobile/9A405 Safari/7534.48.3"),
    (2.0, "Mozilla/5.0 (iPhone; CPU iPhone OS 5_0 like Mac OS X) AppleWebKit/534.46 (KHTML, like Gecko) Version/5.1 Mobile/9A334 Safari/7534.48.3"),
    (1.5, "Mozilla/5.0 (Linux; U; Android 2.3.6; en-us; Nexus S Build/GRK39F) AppleWebKit/533.1 (KHTML, like Gecko) Version/4.0 Mobile Safari/533.1"),
)
_PHONE_MARKERS = ("iPhone", "Android")

# US cities: (city, state, UTC offset of standard time in hours, observes DST,
# weight, /16 prefixes of US ISPs serving the area).
_CITIES: tuple[tuple[str, str, int, bool, float, tuple[str, ...]], ...] = (
    ("new york", "ny", -5, True, 9.0, ("72.89", "66.108", "24.185", "108.41")),
    ("brooklyn", "ny", -5, True, 3.0, ("72.229", "67.243", "24.190")),
    ("boston", "ma", -5, True, 3.0, ("71.192", "98.216", "108.20")),
    ("philadelphia", "pa", -5, True, 3.0, ("68.81", "71.224", "96.245")),
    ("washington", "dc", -5, True, 2.5, ("71.163", "96.231", "108.18")),
    ("baltimore", "md", -5, True, 1.5, ("71.244", "69.243", "68.49")),
    ("atlanta", "ga", -5, True, 3.0, ("76.17", "98.251", "75.15")),
    ("miami", "fl", -5, True, 2.5, ("71.196", "98.242", "24.129")),
    ("orlando", "fl", -5, True, 1.5, ("97.103", "24.73", "71.42")),
    ("charlotte", "nc", -5, True, 1.5, ("75.178", "66.57", "24.74")),
    ("detroit", "mi", -5, True, 1.5, ("68.40", "99.161", "24.11")),
    ("columbus", "oh", -5, True, 1.5, ("74.140", "65.24", "76.181")),
    ("pittsburgh", "pa", -5, True, 1.0, ("71.206", "98.236", "67.186")),
    ("chicago", "il", -6, True, 6.0, ("98.213", "67.175", "99.27", "76.16")),
    ("houston", "tx", -6, True, 4.5, ("98.195", "99.38", "76.31")),
    ("dallas", "tx", -6, True, 4.0, ("99.47", "76.183", "70.112")),
    ("san antonio", "tx", -6, True, 2.0, ("70.121", "72.177", "99.6")),
    ("austin", "tx", -6, True, 2.0, ("70.113", "72.179", "24.28")),
    ("minneapolis", "mn", -6, True, 1.5, ("75.73", "24.118", "174.53")),
    ("st louis", "mo", -6, True, 1.0, ("75.132", "71.85", "24.207")),
    ("nashville", "tn", -6, True, 1.0, ("76.21", "75.66", "68.53")),
    ("kansas city", "mo", -6, True, 1.0, ("24.124", "70.130", "68.103")),
    ("denver", "co", -7, True, 2.5, ("67.165", "71.237", "98.245")),
    ("salt lake city", "ut", -7, True, 1.0, ("67.166", "71.199", "98.202")),
    ("phoenix", "az", -7, False, 3.0, ("68.230", "70.176", "72.208")),
    ("las vegas", "nv", -8, True, 1.5, ("68.108", "70.173", "72.193")),
    ("los angeles", "ca", -8, True, 9.0, ("75.85", "76.90", "71.106", "99.16")),
    ("san diego", "ca", -8, True, 3.0, ("76.88", "68.8", "72.199")),
    ("san francisco", "ca", -8, True, 3.0, ("67.169", "76.126", "99.50")),
    ("san jose", "ca", -8, True, 2.0, ("98.207", "76.102", "67.180")),
    ("sacramento", "ca", -8, True, 1.5, ("98.208", "76.20", "67.160")),
    ("seattle", "wa", -8, True, 3.0, ("76.104", "71.231", "24.16")),
    ("portland", "or", -8, True, 2.0, ("76.105", "71.59", "24.20")),
)
# Wireless carriers (AT&T Mobility, Verizon Wireless, Sprint PCS) for phone sessions.
_MOBILE_PREFIXES: tuple[str, ...] = ("166.137", "166.205", "174.226", "174.252", "70.197", "68.28", "68.31")

# Where the first page of a session came from ("" = typed / bookmark).
_EXTERNAL_REFERRERS: tuple[tuple[float, str], ...] = (
    (34.0, ""),
    (22.0, "http://www.google.com/"),
    (8.0, "http://www.google.com/search?q=acme"),
    (6.0, "http://www.bing.com/search?q=acme.com"),
    (4.0, "http://search.yahoo.com/search?p=acme"),
    (9.0, "http://www.facebook.com/"),
    (4.0, "http://pinterest.com/"),
    (3.0, "http://t.co/"),
    (3.0, "http://mail.yahoo.com/"),
    (7.0, "http://www.acme.com/"),
)

# Local-time activity profile by hour of day (peaks in the evening).
_HOURLY = np.array(
    [1.0, 0.7, 0.5, 0.4, 0.36, 0.42, 0.62, 0.9, 1.2, 1.45, 1.6, 1.7,
     1.85, 1.75, 1.7, 1.7, 1.8, 2.0, 2.35, 2.75, 3.1, 3.2, 2.7, 1.75]
)
# Day weights by weekday (Mon=0 .. Sun=6); 2012-03-01 is a Thursday.
_WEEKDAY = np.array([1.0, 1.02, 1.0, 0.98, 0.93, 0.84, 0.9])

_SESSION_MAX = 15
_VISITOR_ID_BASE = 1_000_000_000_000_000_000
_SESSION_ID_BASE = 4_000_000_000_000_000_000

# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LogSummary:
    """What was written, and what a correct cleaning step must end up with.

    ``kept_rows_expected`` = ``rows`` - sum of ``defects``; ``first_timestamp``,
    ``last_timestamp``, ``rows_per_day`` (UTC dates, all 15 days), ``home_page_rows``,
    ``distinct_users`` and ``sessions`` describe those kept (valid, de-duplicated) rows.
    ``reject_reasons`` regroups ``defects`` under the reason names of
    ``clickstream_dagster.cleaning.RejectReason`` (truncated lines are
    ``malformed_line``; missing and malformed user ids are both ``invalid_user_id``).
    """

    rows: int
    seed: int
    separator: str
    columns: tuple[str, ...]
    defects: dict[str, int]
    defect_rows: int
    kept_rows_expected: int
    first_timestamp: int
    last_timestamp: int
    first_datetime: str
    last_datetime: str
    rows_per_day: dict[str, int]
    reject_reasons: dict[str, int]
    home_page_rows: int
    distinct_users: int
    sessions: int
    bytes_written: int
    defect_rate: float = DEFAULT_DEFECT_RATE
    user_id_pattern: str = field(default=USER_ID_PATTERN)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["columns"] = list(self.columns)
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.as_dict(), indent=indent)


@dataclass(frozen=True)
class GeneratedLog:
    """A log generated in memory: the file content and its summary."""

    data: bytes
    summary: LogSummary


# ------------------------------------------------------------------- reference data


def _read_tsv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    return rows[1:]


def _load_reference(reference_dir: Path) -> tuple[list[str], int, list[str], np.ndarray]:
    """(product urls, index of the home page, SWIDs, bool mask of clean SWIDs)."""
    urls = [r[0] for r in _read_tsv(Path(reference_dir) / "products.tsv") if r and r[0]]
    home = [i for i, u in enumerate(urls) if u.rstrip("/").count("/") == 2]
    if len(home) != 1:
        raise ValueError(f"expected exactly one home page url in products.tsv, got {home}")
    product_ids = [u.rstrip("/").rsplit("/", 1)[-1] for i, u in enumerate(urls) if i != home[0]]
    if len(set(product_ids)) != len(product_ids) or len(set(urls)) != len(urls):
        raise ValueError("products.tsv urls and their product ids (last path segment) must be unique")
    swids = [r[0] if r else "" for r in _read_tsv(Path(reference_dir) / "users.tsv")]
    swids = [s for s in swids if s != ""]
    clean = np.fromiter((_SWID_RE.fullmatch(s) is not None for s in swids), bool, len(swids))
    return urls, home[0], swids, clean


# ------------------------------------------------------------------------- helpers


def _p(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def _normalise_separator(separator: str) -> str:
    aliases = {"comma": ",", ",": ",", "csv": ",", "tab": "\t", "\t": "\t", "\\t": "\t", "tsv": "\t"}
    try:
        return aliases[separator]
    except KeyError:
        raise ValueError(f"separator must be comma or tab, got {separator!r}") from None


def _quote(values: list[str], sep: str) -> list[str]:
    """RFC 4180 quoting of a (small) table of strings."""
    out = []
    for v in values:
        if "\n" in v or "\r" in v or (sep == "\t" and "\t" in v):
            raise ValueError(f"field cannot be written unquoted: {v!r}")
        if sep == "," and ("," in v or '"' in v):
            v = '"' + v.replace('"', '""') + '"'
        out.append(v)
    return out


def _quote_expr(e: pl.Expr, sep: str) -> pl.Expr:
    if sep != ",":
        return e
    return (
        pl.when(e.str.contains('[,"]'))
        .then(pl.lit('"') + e.str.replace_all('"', '""', literal=True) + pl.lit('"'))
        .otherwise(e)
    )


def _fmt_ts(ts: int) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------------- generation


@dataclass
class _Plan:
    """All per-row numeric decisions, in output (time) order of the base rows."""

    n_base: int
    ts: np.ndarray  # int64, generated (true) timestamp per base row
    sess: np.ndarray  # int32 session index per base row
    url: np.ndarray  # int16 product url index
    ref: np.ndarray  # int16 referrer index (into products + externals)
    kind: np.ndarray  # int8 defect kind per base row (0 = valid)
    variant: np.ndarray  # int8 variant of the defect
    param: np.ndarray  # float64 in [0, 1) parameter of the defect
    dup: np.ndarray  # int: how many exact copies follow the base row (mostly 0, else 1)
    # per session
    s_visitor: np.ndarray
    s_sid: np.ndarray
    s_ip: np.ndarray  # int32 index into ip_table
    s_ua: np.ndarray
    # per user
    u_vid: np.ndarray
    u_city: np.ndarray
    ip_table: np.ndarray  # object array of dotted quads
    clean: np.ndarray  # bool per user: the users.tsv SWID is well-formed


def _plan(rows: int, seed: int, urls: list[str], home: int, swids: list[str],
          clean: np.ndarray, defect_rate: float, allow_duplicates: bool = True) -> _Plan:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x0C11C4]))
    n_users = len(swids)
    n_url = len(urls)

    # -- how many lines are duplicates; the rest are generated page views
    shares = _p(_DEFECT_SHARES)
    n_dup = int(rng.binomial(rows, defect_rate * shares[-1])) if rows > 1 and allow_duplicates else 0
    n_base = rows - n_dup

    # -- users: skewed popularity, a home city, a primary browser, a visitor id
    ranks = rng.permutation(n_users)
    dirty = np.flatnonzero(~clean)
    pool = np.arange(min(40, n_users // 4), min(n_users, 1500))
    if defect_rate > 0 and 0 < dirty.size <= pool.size:
        # users.tsv's own dirty SWIDs are moderately active, so they show up
        targets = rng.choice(pool, size=dirty.size, replace=False)
        for d, t in zip(dirty, targets):
            other = np.flatnonzero(ranks == t)[0]
            ranks[other], ranks[d] = ranks[d], t
    u_weight = (ranks + 25.0) ** -1.05
    if defect_rate <= 0:
        u_weight[~clean] = 0.0
    u_weight /= u_weight.sum()
    city_w = _p([c[4] for c in _CITIES])
    u_city = rng.choice(len(_CITIES), size=n_users, p=city_w).astype(np.int16)
    ua_w = _p([w for w, _ in _USER_AGENTS])
    u_ua = rng.choice(len(_USER_AGENTS), size=n_users, p=ua_w).astype(np.int16)
    u_vid = _VISITOR_ID_BASE + rng.permutation(n_users).astype(np.int64) * 10**14 + rng.integers(
        0, 10**14, size=n_users, dtype=np.int64)
    # home ip per user
    u_pref = (rng.random(n_users) * np.array([len(_CITIES[c][5]) for c in u_city])).astype(np.int64)
    u_ip = _make_ips(rng, [_CITIES[c][5][p] for c, p in zip(u_city.tolist(), u_pref.tolist())])

    # -- sessions: length 1..15 (geometric, mean ~4)
    lengths = np.empty(0, dtype=np.int64)
    while lengths.sum() < n_base:
        more = np.minimum(rng.geometric(0.24, size=max(64, int(n_base / 3.5) + 64)), _SESSION_MAX)
        lengths = np.concatenate([lengths, more])
    csum = np.cumsum(lengths)
    n_sess = int(np.searchsorted(csum, n_base) + 1)
    lengths = lengths[:n_sess]
    lengths[-1] -= int(csum[n_sess - 1] - n_base)

    s_visitor = rng.choice(n_users, size=n_sess, p=u_weight).astype(np.int32)
    s_city = u_city[s_visitor]
    # browser: mostly the visitor's own
    s_ua = np.where(rng.random(n_sess) < 0.82, u_ua[s_visitor],
                    rng.choice(len(_USER_AGENTS), size=n_sess, p=ua_w)).astype(np.int16)
    # ip: mostly the visitor's home ip; otherwise another ip (phones: a carrier's)
    roam = rng.random(n_sess) >= 0.85
    phone_ua = np.array([any(m in ua for m in _PHONE_MARKERS) for _, ua in _USER_AGENTS])
    s_ip = s_visitor.copy()  # index into ip_table: home ips first, then roaming ips
    r_idx = np.flatnonzero(roam)
    # roaming ip: a carrier prefix for phones, another ISP of the home city otherwise
    pref_table = [p for c in _CITIES for p in c[5]] + list(_MOBILE_PREFIXES)
    city_first = np.cumsum([0] + [len(c[5]) for c in _CITIES])
    city_n = np.diff(city_first)
    r_city = s_city[r_idx].astype(np.int64)
    pick = rng.random(r_idx.size)
    r_pref = np.where(
        phone_ua[s_ua[r_idx]],
        city_first[-1] + (pick * len(_MOBILE_PREFIXES)).astype(np.int64),
        city_first[r_city] + (pick * city_n[r_city]).astype(np.int64),
    )
    ip_table = np.concatenate([u_ip, _make_ips(rng, [pref_table[i] for i in r_pref.tolist()])])
    s_ip[r_idx] = n_users + np.arange(r_idx.size, dtype=np.int32)
    s_sid = _SESSION_ID_BASE + rng.permutation(n_sess).astype(np.int64) * 10**12 + rng.integers(
        0, 10**12, size=n_sess, dtype=np.int64)

    # -- page views within sessions: gaps of seconds to minutes
    sess_of_row = np.repeat(np.arange(n_sess, dtype=np.int32), lengths)
    starts_at = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    first = np.zeros(n_base, dtype=bool)
    first[starts_at] = True
    gaps = np.clip(rng.lognormal(np.log(45.0), 1.0, size=n_base), 1, 1800).astype(np.int64)
    gaps[first] = 0
    offs = np.cumsum(gaps)
    offs -= np.repeat(offs[starts_at], lengths)  # offset from session start
    duration = offs[np.concatenate([starts_at[1:] - 1, [n_base - 1]])]

    # -- session start: local day (weekday weights) + local hour (evening peak)
    tz = np.array([c[2] for c in _CITIES], dtype=np.int64)[s_city] * 3600
    dst = np.array([c[3] for c in _CITIES], dtype=bool)[s_city]
    start = np.empty(n_sess, dtype=np.int64)
    todo = np.arange(n_sess)
    day_w = _p([_WEEKDAY[(3 + d) % 7] for d in range(-1, DAYS)])
    hour_w = _p(_HOURLY)
    while todo.size:
        m = todo.size
        local = ((rng.choice(DAYS + 1, size=m, p=day_w) - 1) * 86400
                 + rng.choice(24, size=m, p=hour_w) * 3600 + rng.integers(0, 3600, size=m))
        off = tz[todo] + np.where(dst[todo] & (local >= _DST_START_LOCAL), 3600, 0)
        utc = FIRST_TS + local - off
        ok = (utc >= FIRST_TS) & (utc <= LAST_TS)
        start[todo[ok]] = np.minimum(utc[ok], LAST_TS - duration[todo[ok]])
        todo = todo[~ok]
    ts = np.repeat(start, lengths) + offs
    del offs, gaps

    # -- pages: home page now and then (more often on landing), products skewed
    prod = np.array([i for i in range(n_url) if i != home])
    prod_w = _p((rng.permutation(prod.size) + 3.0) ** -0.8)
    url = rng.choice(prod, size=n_base, p=prod_w).astype(np.int16)
    is_home = rng.random(n_base) < np.where(first, 0.12, 0.025)
    url[is_home] = home
    _break_accidental_duplicates(ts, s_visitor[sess_of_row], s_ip[sess_of_row], s_ua[sess_of_row],
                                 url, prod, home)
    ext = rng.choice(len(_EXTERNAL_REFERRERS), size=n_base, p=_p([w for w, _ in _EXTERNAL_REFERRERS]))
    ref = np.empty(n_base, dtype=np.int16)
    ref[1:] = url[:-1]
    ref[first] = (n_url + ext[first]).astype(np.int16)
    del ext, is_home, first

    # -- time order
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    sess = sess_of_row[order]
    url = url[order]
    ref = ref[order]
    del order, sess_of_row

    # -- defects (one kind per broken base row)
    p_kinds = defect_rate * shares[:-1]
    draw = rng.random(n_base)
    edges = np.cumsum(p_kinds)
    kind = np.where(draw < edges[-1], np.searchsorted(edges, draw, side="right") + 1, 0).astype(np.int8)
    kind[~clean[s_visitor[sess]]] = _K_MALFORMED
    variant = rng.integers(0, 7, size=n_base, dtype=np.int8)
    param = rng.random(n_base)
    valid_idx = np.flatnonzero(kind == _KIND_VALID)
    if n_dup and valid_idx.size == 0:  # only possible for a handful of rows
        return _plan(rows, seed, urls, home, swids, clean, defect_rate, allow_duplicates=False)
    picked = rng.choice(valid_idx, size=n_dup, replace=n_dup > valid_idx.size)
    dup = np.bincount(picked, minlength=n_base).astype(np.int8)

    return _Plan(n_base, ts, sess, url, ref, kind, variant, param, dup,
                 s_visitor, s_sid, s_ip, s_ua, u_vid, u_city, ip_table, clean)


def _break_accidental_duplicates(ts: np.ndarray, visitor: np.ndarray, ip: np.ndarray, ua: np.ndarray,
                                 url: np.ndarray, products: np.ndarray, home: int) -> None:
    """Make the generated page views distinct on what cleaning publishes.

    Cleaning de-duplicates on (timestamp, user id, ip, product id, user agent), not on
    the whole line.  Two overlapping sessions of one visitor could, rarely, view the
    same product in the same second from the same ip and browser; such a pair would be
    merged downstream and break ``kept_rows_expected``.  The later view of each such
    pair is moved to the next product (in place, deterministic).
    """
    key = (visitor.astype(np.int64) << 21) | (ts - FIRST_TS)  # ts - FIRST_TS < 2**21
    order = np.argsort(key, kind="stable")
    k_sorted = key[order]
    same = np.flatnonzero(k_sorted[1:] == k_sorted[:-1])
    cand = np.unique(np.concatenate([order[same], order[same + 1]]))  # same visitor and second
    if cand.size == 0:
        return
    next_url = np.empty(max(int(products.max()), home) + 1, dtype=url.dtype)
    next_url[products] = np.roll(products, -1)
    next_url[home] = products[0]
    for _ in range(64):
        full = np.lexsort((cand, url[cand], ua[cand], ip[cand], key[cand]))  # last key sorts first
        c = cand[full]
        equal = ((key[c][1:] == key[c][:-1]) & (ip[c][1:] == ip[c][:-1]) & (ua[c][1:] == ua[c][:-1])
                 & (url[c][1:] == url[c][:-1]))
        if not equal.any():
            return
        later = c[1:][equal]
        url[later] = next_url[url[later]]
    raise RuntimeError("could not make page views distinct")  # pragma: no cover


def _make_ips(rng: np.random.Generator, prefixes: list[str]) -> np.ndarray:
    n = len(prefixes)
    c = rng.integers(0, 256, size=n)
    d = rng.integers(1, 255, size=n)
    return np.array([f"{p}.{x}.{y}" for p, x, y in zip(prefixes, c.tolist(), d.tolist())], dtype=object)


# ------------------------------------------------------------------------- writing

_RANGE_N = 7


def _malformed_user_expr(uid: pl.Expr, variant: pl.Expr, param: pl.Expr) -> pl.Expr:
    """``uid`` is a valid ``{SWID}``; produce one of 7 malformed variants."""
    swid = uid.str.slice(1, 36)
    k = (param * 22).cast(pl.Int64) + 8  # truncated length 8..29
    pos = (param * 32).cast(pl.Int64)  # hex position for the non-hex letter
    pos = pos + (pos >= 8).cast(pl.Int64) + (pos >= 12).cast(pl.Int64) + (pos >= 16).cast(pl.Int64) + (
        pos >= 20).cast(pl.Int64)
    letter = pl.when(param < 0.5).then(pl.lit("G")).otherwise(pl.lit("Z"))
    return (
        pl.when(variant == 0).then(pl.lit("NULL"))
        .when(variant == 1).then(pl.lit("{null}"))
        .when(variant == 2).then(pl.lit("{") + swid)  # missing closing brace
        .when(variant == 3).then(uid + pl.lit("}"))  # stray extra brace
        .when(variant == 4).then(pl.lit("{") + swid.str.slice(0, k) + pl.lit("}"))  # truncated
        .when(variant == 5).then(
            pl.lit("{") + swid.str.slice(0, pos) + letter + swid.str.slice(pos + 1) + pl.lit("}"))
        .otherwise(uid + pl.lit('"'))  # stray quote (needs CSV quoting)
    )


def _bad_ts_values(ts: np.ndarray, variant: np.ndarray, param: np.ndarray) -> list[str]:
    """Non-numeric timestamp strings for the given (few) rows."""
    out = []
    for t, v, p in zip(ts.tolist(), variant.tolist(), param.tolist()):
        s = str(t)
        if v == 0:
            out.append("")
        elif v == 1:
            out.append("abc")
        elif v == 2:
            out.append("NULL")
        elif v == 3:
            out.append("-")
        elif v == 4:
            out.append(s[:4] + ".5e9x")
        elif v == 5:
            i = 2 + int(p * 8)
            out.append(s[:i] + "O" + s[i + 1:])
        else:
            out.append(s + "s")
    return out


def _out_of_range_values(variant: np.ndarray, param: np.ndarray) -> np.ndarray:
    lo_2011, hi_2011 = 1293840000, 1325375999
    choices = np.stack([
        np.zeros_like(param, dtype=np.int64),  # epoch 0
        (lo_2011 + param * (hi_2011 - lo_2011)).astype(np.int64),  # somewhere in 2011
        np.full(param.shape, 2147483647, dtype=np.int64),  # 2038-01-19 03:14:07
        (2145916800 + param * 3600 * 24 * 17).astype(np.int64),  # January 2038
        (FIRST_TS - 86400 * 28 + param * 86400 * 27).astype(np.int64),  # February 2012
        np.full(param.shape, FIRST_TS - 1, dtype=np.int64),  # one second too early
        np.where(param < 0.5, LAST_TS + 1,  # one second too late / late March
                 (LAST_TS + 1 + (param - 0.5) * 2 * 86400 * 16).astype(np.int64)),
    ])
    return choices[variant.astype(np.int64) % _RANGE_N, np.arange(param.size)]


def _write_rows(out: BinaryIO, plan: _Plan, urls: list[str], swids: list[str], sep: str,
                chunk_rows: int) -> None:
    """Format the planned rows chunk by chunk (output does not depend on the chunk size)."""
    # Lookup tables, quoted once.  Fields before "Product Page URL" are never quoted
    # (truncated lines rely on it); only user agents and user ids ever need quotes.
    q_urls = _quote(urls + [r for _, r in _EXTERNAL_REFERRERS], sep)
    cities = _quote([c[0] for c in _CITIES], sep)
    states = _quote([c[1] for c in _CITIES], sep)
    for tbl in (q_urls, cities, states):
        assert not any(x.startswith('"') for x in tbl)
    url_s = pl.Series("u", q_urls, dtype=pl.String)
    ua_s = pl.Series("a", _quote([ua for _, ua in _USER_AGENTS], sep), dtype=pl.String)
    city_s = pl.Series("c", cities, dtype=pl.String)
    state_s = pl.Series("s", states, dtype=pl.String)
    uid_s = pl.Series("i", _quote(["{" + s + "}" for s in swids], sep), dtype=pl.String)
    ip_s = pl.Series("p", plan.ip_table, dtype=pl.String)
    _quote(list(plan.ip_table), sep)  # validates: no separator, quote or newline

    out.write((sep.join(_quote(list(COLUMNS), sep)) + "\n").encode())
    n_base = plan.n_base
    step = max(1, chunk_rows)
    for b0 in range(0, n_base, step):
        b1 = min(n_base, b0 + step)
        sess = plan.sess[b0:b1]
        visitor = plan.s_visitor[sess]
        kind = plan.kind[b0:b1]
        ts = plan.ts[b0:b1]
        variant = plan.variant[b0:b1]
        param = plan.param[b0:b1]

        # "Unix Timestamp" as shown, and the instant behind "Date and Time"
        shown_ts = ts.copy()
        r_rows = np.flatnonzero(kind == _K_RANGE)
        shown_ts[r_rows] = _out_of_range_values(variant[r_rows], param[r_rows])
        ts_str = pl.Series("ts", shown_ts).cast(pl.String)
        nn_rows = np.flatnonzero(kind == _K_NONNUM)
        if nn_rows.size:
            ts_str = ts_str.scatter(nn_rows, _bad_ts_values(ts[nn_rows], variant[nn_rows], param[nn_rows]))

        uid = uid_s.gather(visitor)
        m_rows = np.flatnonzero(kind == _K_MISSING)
        if m_rows.size:
            uid = uid.scatter(m_rows, pl.Series([""] * m_rows.size, dtype=pl.String))
        bad_rows = np.flatnonzero((kind == _K_MALFORMED) & plan.clean[visitor])
        if bad_rows.size:
            sub = pl.DataFrame({"uid": uid.gather(bad_rows), "v": variant[bad_rows], "p": param[bad_rows]})
            bad = sub.select(_quote_expr(_malformed_user_expr(pl.col("uid"), pl.col("v"), pl.col("p")), sep))
            uid = uid.scatter(bad_rows, bad.to_series())

        df = pl.DataFrame([
            ts_str,
            pl.from_epoch(pl.Series(shown_ts), time_unit="s").dt.strftime("%Y-%m-%d %H:%M:%S").alias("dt"),
            pl.Series("vid", plan.u_vid[visitor]).cast(pl.String),
            pl.Series("sid", plan.s_sid[sess]).cast(pl.String),
            ip_s.gather(plan.s_ip[sess]).alias("ip"),
            pl.Series("country", ["usa"], dtype=pl.String).extend_constant("usa", b1 - b0 - 1),
            state_s.gather(plan.u_city[visitor]).alias("state"),
            city_s.gather(plan.u_city[visitor]).alias("city"),
            url_s.gather(plan.ref[b0:b1]).alias("ref"),
            url_s.gather(plan.url[b0:b1]).alias("url"),
            uid.alias("uid"),
            ua_s.gather(plan.s_ua[sess]).alias("ua"),
        ])
        line_s = df.select(line=pl.concat_str(pl.all(), separator=sep)).to_series()

        t_rows = np.flatnonzero(kind == _K_TRUNC)
        if t_rows.size:
            # keep the first 4 fields and cut anywhere from the start of "IP Address"
            # up to the end of "Referrer URL" (all never quoted)
            sub = df[t_rows].with_columns(pl.all().str.len_bytes().cast(pl.Int64))
            keep = sub.select(pl.sum_horizontal(pl.nth(range(0, 4))) + 4).to_series().to_numpy()
            span = sub.select(pl.sum_horizontal(pl.nth(range(4, 9))) + 4).to_series().to_numpy()
            cut = keep + (param[t_rows] * (span + 1)).astype(np.int64)
            cut_s = line_s.gather(t_rows).to_frame("l").select(pl.col("l").str.slice(0, pl.Series(cut)))
            line_s = line_s.scatter(t_rows, cut_s.to_series())

        dup = plan.dup[b0:b1]
        if dup.any():
            line_s = line_s.gather(np.repeat(np.arange(b1 - b0), 1 + dup))
        out.flush()
        line_s.to_frame().write_csv(out, include_header=False, quote_style="never", line_terminator="\n")
        del df, line_s


def _summarise(plan: _Plan, rows: int, seed: int, sep: str, home: int, defect_rate: float,
               bytes_written: int) -> LogSummary:
    kinds = np.bincount(plan.kind, minlength=6)
    defects = {
        "missing_user_id": int(kinds[_K_MISSING]),
        "malformed_user_id": int(kinds[_K_MALFORMED]),
        "non_numeric_timestamp": int(kinds[_K_NONNUM]),
        "out_of_range_timestamp": int(kinds[_K_RANGE]),
        "truncated_line": int(kinds[_K_TRUNC]),
        "duplicate": int(plan.dup.sum()),
    }
    valid = plan.kind == _KIND_VALID
    vts = plan.ts[valid]
    days = np.bincount(((vts - FIRST_TS) // 86400).astype(np.int64), minlength=DAYS)
    per_day = {(_dt.date(2012, 3, 1) + _dt.timedelta(days=d)).isoformat(): int(days[d]) for d in range(DAYS)}
    total_defects = sum(defects.values())
    kept = rows - total_defects
    assert kept == int(valid.sum())
    first = int(vts.min()) if vts.size else 0
    last = int(vts.max()) if vts.size else 0
    return LogSummary(
        rows=rows,
        seed=seed,
        separator="tab" if sep == "\t" else "comma",
        columns=COLUMNS,
        defects=defects,
        defect_rows=total_defects,
        kept_rows_expected=kept,
        first_timestamp=first,
        last_timestamp=last,
        first_datetime=_fmt_ts(first) if vts.size else "",
        last_datetime=_fmt_ts(last) if vts.size else "",
        rows_per_day=per_day,
        reject_reasons={
            "malformed_line": defects["truncated_line"],
            "invalid_timestamp": defects["non_numeric_timestamp"],
            "out_of_range": defects["out_of_range_timestamp"],
            "invalid_user_id": defects["missing_user_id"] + defects["malformed_user_id"],
            "duplicate": defects["duplicate"],
        },
        home_page_rows=int((plan.url[valid] == home).sum()),
        distinct_users=int(np.unique(plan.s_visitor[plan.sess[valid]]).size),
        sessions=int(np.unique(plan.sess[valid]).size),
        bytes_written=bytes_written,
        defect_rate=float(defect_rate),
    )


def _generate(out: BinaryIO, rows: int, seed: int, separator: str, reference_dir: Path,
              defect_rate: float, chunk_rows: int) -> LogSummary:
    if rows < 0:
        raise ValueError("rows must be >= 0")
    if not 0 <= defect_rate <= 0.5:
        raise ValueError("defect_rate must be within [0, 0.5]")
    sep = _normalise_separator(separator)
    urls, home, swids, clean = _load_reference(Path(reference_dir))
    start = out.tell()
    if rows == 0:
        out.write((sep.join(_quote(list(COLUMNS), sep)) + "\n").encode())
        empty = _Plan(0, *(np.zeros(0, dtype=t) for t in (np.int64, np.int32, np.int16, np.int16,
                                                            np.int8, np.int8, np.float64, bool)),
                      np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int32),
                      np.zeros(0, np.int16), np.zeros(0, np.int64), np.zeros(0, np.int16),
                      np.zeros(0, object), np.zeros(0, bool))
        out.flush()
        return _summarise(empty, 0, seed, sep, home, defect_rate, out.tell() - start)
    plan = _plan(rows, seed, urls, home, swids, clean, defect_rate)
    _write_rows(out, plan, urls, swids, sep, chunk_rows)
    out.flush()
    rows_written = plan.n_base + int(plan.dup.sum())
    assert rows_written == rows, (rows_written, rows)
    return _summarise(plan, rows, seed, sep, home, defect_rate, out.tell() - start)


# ------------------------------------------------------------------------- public API


def write_log(
    path: str | os.PathLike,
    rows: int,
    seed: int = DEFAULT_SEED,
    *,
    separator: str = ",",
    reference_dir: str | os.PathLike = DEFAULT_REFERENCE_DIR,
    defect_rate: float = DEFAULT_DEFECT_RATE,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> LogSummary:
    """Write a synthetic log of ``rows`` data lines (header excluded) to ``path``.

    ``separator``: ``","``/``"comma"`` (RFC 4180 quoting) or ``"\\t"``/``"tab"``.
    The output depends only on (rows, seed, separator, reference data, defect_rate):
    ``chunk_rows`` only bounds memory while formatting.  The file is written to a
    temporary sibling and renamed into place.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb", buffering=8 << 20) as fh:
            summary = _generate(fh, rows, seed, separator, Path(reference_dir), defect_rate, chunk_rows)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return summary


def generate_log(
    rows: int,
    seed: int = DEFAULT_SEED,
    *,
    separator: str = ",",
    reference_dir: str | os.PathLike = DEFAULT_REFERENCE_DIR,
    defect_rate: float = DEFAULT_DEFECT_RATE,
) -> GeneratedLog:
    """Generate the log in memory (same bytes :func:`write_log` would write)."""
    buf = io.BytesIO()
    summary = _generate(buf, rows, seed, separator, Path(reference_dir), defect_rate, DEFAULT_CHUNK_ROWS)
    return GeneratedLog(data=buf.getvalue(), summary=summary)


# ------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m clickstream_dagster.generator",
        description="Write a synthetic acme.com Omniture clickstream log and print its summary as JSON.",
    )
    ap.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"data lines (default {DEFAULT_ROWS})")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    ap.add_argument("--out", required=True, type=Path, help="output file")
    ap.add_argument("--separator", choices=["comma", "tab"], default="comma")
    ap.add_argument("--defect-rate", type=float, default=DEFAULT_DEFECT_RATE)
    ap.add_argument("--reference-dir", type=Path, default=DEFAULT_REFERENCE_DIR)
    ap.add_argument("--summary", type=Path, default=None, help="also write the summary JSON here")
    args = ap.parse_args(argv)
    summary = write_log(args.out, args.rows, args.seed, separator=args.separator,
                        reference_dir=args.reference_dir, defect_rate=args.defect_rate)
    text = summary.to_json()
    if args.summary is not None:
        args.summary.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
