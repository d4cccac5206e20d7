"""What a replayed message looks like on the wire: key, value and headers. Pure; no Dagster.

Values carry the replay's own send time, known only at send time. So each message is
encoded ahead of the send loop, vectorised in Polars, as a prefix and a suffix around
that one number: the hot loop joins three byte strings instead of serialising JSON.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import polars as pl

from clickstream_dagster.cleaning import PUBLISHED_COLUMNS

STRING_FIELDS = ("ip", "productId", "userAgent", "userId")


class MessageFormat(StrEnum):
    # {"ip", "original_timestamp", "productId", "userAgent", "userId", "timestamp": epoch ms}
    JSON = "json"
    # The legacy Quix SDK's wire format: TimeseriesData (one row, ns timestamps) in its envelope
    QUIX = "quix"


# The replay time is spliced in at this resolution: epoch ms for json, ns for quix.
_REPLAY_TIME_DIVISOR = {MessageFormat.JSON: 1_000_000, MessageFormat.QUIX: 1}

# The legacy Quix SDK's envelope: {"C":codec,"K":model,"V":<value>,"S":start,"E":end}, where
# S and E are the byte offsets of V in the message. That SDK reads V by slicing the message
# with them (wrong offsets: it reads nothing, silently); Quix Streams 3 parses the whole
# envelope. Neither needs headers, nor a StreamProperties message before the data.
QUIX_ENVELOPE_HEAD = b'{"C":"JT","K":"ParameterData","V":'
QUIX_VALUE_START = len(QUIX_ENVELOPE_HEAD)  # 34
_QUIX_TIMESERIES_HEAD = b'{"Timestamps":['
# The end offset E counts the replay time's digits: the suffix is precomputed for this
# many, the width of every epoch-ns time from 2001 to 2286 (others take a slower path).
_QUIX_TIME_DIGITS = 19
_QUIX_END_KEY = b'"E":'


@functools.lru_cache(maxsize=1)
def _replay_time_text(replay_time: int) -> bytes:
    # Consecutive messages mostly share a millisecond: encode each value once (hot loop).
    return str(replay_time).encode()


@dataclass(frozen=True)
class EncodedMessages:
    """A day's messages, ready to send: ``value = prefix + time_bytes(replay_time) + suffix``."""

    keys: list[bytes]
    prefixes: list[bytes]
    suffixes: list[bytes]
    divisor: int  # replay time in ns // divisor is the number written into the value
    # quix: the suffix ends with the envelope's end offset, right for a replay time of this
    # many digits; None when the value holds no offset (json).
    time_digits: int | None = None
    # How the replay time is written: decimal text (json, quix), or a binary varint (typed formats).
    time_bytes: Callable[[int], bytes] = _replay_time_text

    def __len__(self) -> int:
        return len(self.keys)

    def value(self, i: int, replay_time_ns: int) -> bytes:
        text = self.time_bytes(replay_time_ns // self.divisor)
        if self.time_digits is None or len(text) == self.time_digits:
            return self.prefixes[i] + text + self.suffixes[i]
        return self.prefixes[i] + text + _shift_end_offset(self.suffixes[i], len(text) - self.time_digits)

    def values(self, start: int, stop: int, replay_time_ns: int) -> list[bytes]:
        """``value(i, replay_time_ns)`` for ``start <= i < stop``: one replay time, as max pacing sends them."""
        middle = self.time_bytes(replay_time_ns // self.divisor)
        return [prefix + middle + suffix for prefix, suffix in zip(self.prefixes[start:stop], self.suffixes[start:stop])]


def _shift_end_offset(suffix: bytes, by: int) -> bytes:
    """The quix suffix ``...,"E":<end>}`` with ``end + by``."""
    at = suffix.rindex(_QUIX_END_KEY) + len(_QUIX_END_KEY)
    return suffix[:at] + str(int(suffix[at:-1]) + by).encode() + b"}"


def encode_messages(events: pl.DataFrame, message_format: MessageFormat | str) -> EncodedMessages:
    """Encode page views (the five published columns) for sending, keyed by ``userId``."""
    message_format = MessageFormat(message_format)
    fields = pl.struct(*(pl.col(c) for c in PUBLISHED_COLUMNS)).struct.json_encode()
    if message_format == MessageFormat.JSON:
        # '{"ip":...,"userId":"..."}' -> prefix '{"ip":...,"userId":"...","timestamp":' and suffix '}'
        prefix = fields.str.strip_suffix("}") + pl.lit(",\"timestamp\":")
        suffix = pl.lit("}")
    else:
        # Quix values are doubles, as the SDK writes them (1330560005.0)
        numeric = pl.struct(
            original_timestamp=pl.concat_list(pl.col("original_timestamp").cast(pl.Float64))
        ).struct.json_encode()
        strings = pl.struct(*(pl.concat_list(c).alias(c) for c in STRING_FIELDS)).struct.json_encode()
        # The rest of V after the replay time, then the envelope's offsets.
        rest = (
            pl.lit('],"NumericValues":') + numeric + pl.lit(',"StringValues":') + strings
            + pl.lit(',"BinaryValues":{},"TagValues":{}}')
        )
        end = QUIX_VALUE_START + len(_QUIX_TIMESERIES_HEAD) + _QUIX_TIME_DIGITS + rest.str.len_bytes()
        prefix = pl.lit((QUIX_ENVELOPE_HEAD + _QUIX_TIMESERIES_HEAD).decode())
        suffix = rest + pl.lit(f',"S":{QUIX_VALUE_START},"E":') + end.cast(pl.String) + pl.lit("}")
    encoded = events.select(
        key=pl.col("userId").cast(pl.Binary),
        prefix=prefix.cast(pl.Binary),
        suffix=suffix.cast(pl.Binary),
    )
    return EncodedMessages(
        keys=encoded["key"].to_list(),
        prefixes=encoded["prefix"].to_list(),
        suffixes=encoded["suffix"].to_list(),
        divisor=_REPLAY_TIME_DIVISOR[message_format],
        time_digits=_QUIX_TIME_DIGITS if message_format == MessageFormat.QUIX else None,
    )


def encode_message(event: dict, message_format: MessageFormat | str, replay_time_ns: int) -> bytes:
    """Reference encoding of one page view with plain ``json``; the spec ``encode_messages`` meets."""
    message_format = MessageFormat(message_format)
    if message_format == MessageFormat.JSON:
        body = {c: event[c] for c in PUBLISHED_COLUMNS} | {"timestamp": replay_time_ns // 1_000_000}
        return _json(body)
    timeseries = _json(
        {
            "Timestamps": [replay_time_ns],
            "NumericValues": {"original_timestamp": [float(event["original_timestamp"])]},
            "StringValues": {c: [event[c]] for c in STRING_FIELDS},
            "BinaryValues": {},
            "TagValues": {},
        }
    )
    start = len(QUIX_ENVELOPE_HEAD)
    return QUIX_ENVELOPE_HEAD + timeseries + f',"S":{start},"E":{start + len(timeseries)}}}'.encode()


def _json(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def replay_headers(source_day: str, run_id: str) -> list[tuple[str, bytes]]:
    """Kafka headers on every message: where it came from and which run sent it."""
    return [("source_day", source_day.encode()), ("dagster_run_id", run_id.encode())]
