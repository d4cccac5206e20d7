"""What a replayed message looks like on the wire: key, value and headers. Pure; no Dagster.

Values carry the replay's own send time, known only at send time. So each message is
encoded ahead of the send loop, vectorised in Polars, as a prefix and a suffix around
that one number: the hot loop joins three byte strings instead of serialising JSON.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from enum import StrEnum

import polars as pl

from clickstream_dagster.cleaning import PUBLISHED_COLUMNS

STRING_FIELDS = ("ip", "productId", "userAgent", "userId")


class MessageFormat(StrEnum):
    # {"ip", "original_timestamp", "productId", "userAgent", "userId", "timestamp": epoch ms}
    JSON = "json"
    # Quix TimeseriesData, as the original demo published: one row, timestamps in ns
    QUIX = "quix"


# The replay time is spliced in at this resolution: epoch ms for json, ns for quix.
_REPLAY_TIME_DIVISOR = {MessageFormat.JSON: 1_000_000, MessageFormat.QUIX: 1}


@dataclass(frozen=True)
class EncodedMessages:
    """A day's messages, ready to send: ``value = prefix + str(replay_time) + suffix``."""

    keys: list[bytes]
    prefixes: list[bytes]
    suffixes: list[bytes]
    divisor: int  # replay time in ns // divisor is the number written into the value

    def __len__(self) -> int:
        return len(self.keys)

    def value(self, i: int, replay_time_ns: int) -> bytes:
        return self.prefixes[i] + _replay_time_text(replay_time_ns // self.divisor) + self.suffixes[i]

    def values(self, start: int, stop: int, replay_time_ns: int) -> list[bytes]:
        """``value(i, replay_time_ns)`` for ``start <= i < stop``: one replay time, as max pacing sends them."""
        middle = _replay_time_text(replay_time_ns // self.divisor)
        return [prefix + middle + suffix for prefix, suffix in zip(self.prefixes[start:stop], self.suffixes[start:stop])]


@functools.lru_cache(maxsize=1)
def _replay_time_text(replay_time: int) -> bytes:
    # Consecutive messages mostly share a millisecond: encode each value once (hot loop).
    return str(replay_time).encode()


def encode_messages(events: pl.DataFrame, message_format: MessageFormat | str) -> EncodedMessages:
    """Encode page views (the five published columns) for sending, keyed by ``userId``."""
    message_format = MessageFormat(message_format)
    fields = pl.struct(*(pl.col(c) for c in PUBLISHED_COLUMNS)).struct.json_encode()
    if message_format == MessageFormat.JSON:
        # '{"ip":...,"userId":"..."}' -> prefix '{"ip":...,"userId":"...","timestamp":' and suffix '}'
        prefix = fields.str.strip_suffix("}") + pl.lit(",\"timestamp\":")
        suffix = pl.lit("}")
    else:
        numeric = pl.struct(original_timestamp=pl.concat_list("original_timestamp")).struct.json_encode()
        strings = pl.struct(*(pl.concat_list(c).alias(c) for c in STRING_FIELDS)).struct.json_encode()
        prefix = pl.lit('{"Epoch":0,"Timestamps":[')
        suffix = pl.lit('],"NumericValues":') + numeric + pl.lit(',"StringValues":') + strings + pl.lit(',"TagValues":{}}')
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
    )


def encode_message(event: dict, message_format: MessageFormat | str, replay_time_ns: int) -> bytes:
    """Reference encoding of one page view with plain ``json``; the spec ``encode_messages`` meets."""
    message_format = MessageFormat(message_format)
    if message_format == MessageFormat.JSON:
        body = {c: event[c] for c in PUBLISHED_COLUMNS} | {"timestamp": replay_time_ns // 1_000_000}
    else:
        body = {
            "Epoch": 0,
            "Timestamps": [replay_time_ns],
            "NumericValues": {"original_timestamp": [event["original_timestamp"]]},
            "StringValues": {c: [event[c]] for c in STRING_FIELDS},
            "TagValues": {},
        }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def replay_headers(source_day: str, run_id: str) -> list[tuple[str, bytes]]:
    """Kafka headers on every message: where it came from and which run sent it."""
    return [("source_day", source_day.encode()), ("dagster_run_id", run_id.encode())]
