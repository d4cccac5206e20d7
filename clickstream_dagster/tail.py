"""``clickstream-tail``: follow the clickstream topic and print messages as they arrive.

For watching the feed without a Kafka UI::

    clickstream-tail                              # new messages on click-data, as a table
    clickstream-tail --from-beginning --limit 5   # the first five, then exit
    clickstream-tail --format json | jq .value    # one JSON object per line

The consumer needs no group: it assigns itself every partition of the topic and seeks
to the current end (or, with ``--from-beginning``, the start) before printing
``following <topic> from now`` on stderr. Connection and security settings come from
the same ``KAFKA_*`` environment variables as the rest of the project, through
``kafka_client.KafkaSettings``.

Exit codes: 0 when stopped by ``--limit``, ``--timeout``, Ctrl-C or a closed pipe;
1 when the consumer fails while following; 2 for bad settings, an unreachable broker
or a topic that does not exist.

No Dagster here. The printing is pure (``decode_value``, ``format_row``, ``format_json``)
so it is tested without a broker.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, TextIO

from clickstream_dagster.kafka_client import ENVIRONMENT_VARIABLES, BrokerUnavailable, KafkaSettings
from clickstream_dagster.schema_registry import (
    CA_FILE_VARIABLE,
    URL_VARIABLE,
    USER_INFO_VARIABLE,
    RegistryError,
    RegistrySettings,
    schema_fetcher,
)
from clickstream_dagster.typed_encoding import TypedDecoder, schema_id_of

DEFAULT_TOPIC = "click-data"
DEFAULT_BOOTSTRAP_SERVERS = "localhost:9092"
DEFAULT_CONNECT_TIMEOUT_S = 10.0
CLIENT_ID = "clickstream-tail"
RAW_PREVIEW_CHARS = 80

# (header, width) of the table columns; the last one is not padded.
_COLUMNS = (
    ("TIME", 12),  # HH:MM:SS.mmm, local wall clock at arrival
    ("PART/OFFSET", 11),
    ("KEY", 36),  # a userId is a 36-character UUID
    ("PRODUCT", 10),
    ("IP", 15),
    ("ORIGINAL TIME (UTC)", 0),
)
_SEPARATOR = "  "
_ROW_FIELDS = ("userId", "ip", "productId", "userAgent", "original_timestamp")


# --------------------------------------------------------------------------- pure parts


def decode_value(value: bytes | None, typed: TypedDecoder | None = None) -> dict | None:
    """A clickstream message value in any wire format, as one flat dict.

    Returns ``{"format": "json"|"quix"|"avro"|"protobuf"|"json_schema", "userId", "ip",
    "productId", "userAgent", "original_timestamp", "replay_time_ms"}`` (any of the fields
    may be None), or None for anything that is not a clickstream message: a null value,
    bytes that are not JSON, JSON of another shape, or a registry-framed value when no
    ``typed`` decoder (a schema registry) is given. Never raises, but for an unreachable
    registry (``RegistryError``).
    """
    if typed is not None and schema_id_of(value) is not None:
        fields = typed.decode(value)
        if fields is None:
            return None
        return {**{k: fields[k] for k in ("format", *_ROW_FIELDS)}, "replay_time_ms": fields["timestamp"]}
    parsed = parse_json(value)
    if not isinstance(parsed, dict):
        return None
    if isinstance(parsed.get("V"), dict) and "K" in parsed:
        parsed = parsed["V"]  # the quix format's envelope (see encoding.QUIX_ENVELOPE_HEAD)
    if isinstance(parsed.get("StringValues"), dict) and isinstance(parsed.get("NumericValues"), dict):
        return _decode_quix(parsed)
    if "original_timestamp" in parsed and "userId" in parsed:
        return _decode_json(parsed)
    return None


def parse_json(value: bytes | None) -> Any:
    """The value parsed as JSON, or None if it is null or not JSON (never raises)."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


_MISSING = object()


def _decode_json(body: dict) -> dict | None:
    fields = {name: _string(body.get(name)) for name in ("userId", "ip", "productId", "userAgent")}
    original = _number(body.get("original_timestamp"))
    replay = _number(body.get("timestamp"))
    if _MISSING in fields.values() or original is _MISSING or replay is _MISSING:
        return None
    return {"format": "json", **fields, "original_timestamp": original, "replay_time_ms": replay}


def _decode_quix(body: dict) -> dict | None:
    strings, numbers = body["StringValues"], body["NumericValues"]
    fields = {name: _string(_first(strings.get(name))) for name in ("userId", "ip", "productId", "userAgent")}
    original = _number(_first(numbers.get("original_timestamp")))
    replay_ns = _number(_first(body.get("Timestamps")))
    if _MISSING in fields.values() or original is _MISSING or replay_ns is _MISSING:
        return None
    replay_ms = None if replay_ns is None else int(replay_ns // 1_000_000)
    return {"format": "quix", **fields, "original_timestamp": original, "replay_time_ms": replay_ms}


def _first(values: Any) -> Any:
    """Quix columns are one-row lists; anything else is not a quix column."""
    if values is None or values == []:
        return None
    return values[0] if isinstance(values, list) else _MISSING


def _string(value: Any) -> Any:
    return value if value is None or value is _MISSING or isinstance(value, str) else _MISSING


def _number(value: Any) -> Any:
    if value is None or value is _MISSING:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _MISSING
    return value


def format_original_time(seconds: int | float | None) -> str:
    """Epoch seconds as UTC ``2012-03-01 00:00:00``; ``-`` if missing."""
    if seconds is None:
        return "-"
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return str(seconds)


def format_arrival(arrival: datetime) -> str:
    """Wall-clock ``HH:MM:SS.mmm`` (the caller passes local time)."""
    return arrival.strftime("%H:%M:%S.") + f"{arrival.microsecond // 1000:03d}"


def format_header() -> str:
    return _join(name for name, _ in _COLUMNS)


def format_row(
    arrival: datetime,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    typed: TypedDecoder | None = None,
) -> str:
    """One aligned table line for a message; a value that is not a clickstream message is
    shown raw and truncated. Control characters are escaped: one message, one line."""
    shown_key = "-" if key is None else _printable(_text(key))
    lead = [format_arrival(arrival), f"{partition}/{offset}", shown_key]
    event = decode_value(value, typed)
    if event is None:
        if value is None:
            return _join(lead + ["(null value)"])
        return _join(lead + ["raw: " + _truncate(_printable(_text(value)), RAW_PREVIEW_CHARS)])
    return _join(
        lead
        + [
            _printable(event["productId"] or "-"),
            _printable(event["ip"] or "-"),
            format_original_time(event["original_timestamp"]),
        ]
    )


def format_json(
    partition: int,
    offset: int,
    key: bytes | None,
    headers: Iterable[tuple[str, bytes | None]],
    value: bytes | None,
    typed: TypedDecoder | None = None,
) -> str:
    """One JSON object for a message: the value decoded through the registry if it is a
    typed record, parsed if it is JSON, else the raw text."""
    parsed = typed.decode(value) if typed is not None and schema_id_of(value) is not None else None
    if parsed is not None:
        parsed.pop("format")
    else:
        parsed = parse_json(value)
    if parsed is None and value is not None and value.strip() != b"null":
        parsed = _text(value)
    record = {
        "partition": partition,
        "offset": offset,
        "key": None if key is None else _text(key),
        "headers": {name: (None if data is None else _text(data)) for name, data in headers or ()},
        "value": parsed,
    }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _join(cells: Iterable[str]) -> str:
    """Pad every cell but the last to its column's width."""
    cells = list(cells)
    last = len(cells) - 1
    widths = [width for _, width in _COLUMNS]
    padded = [cell.ljust(width) if i < last else cell for i, (cell, width) in enumerate(zip(cells, widths))]
    return _SEPARATOR.join(padded + cells[len(padded):]).rstrip()


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- settings


def settings_from_env(
    bootstrap_servers: str | None,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
) -> KafkaSettings:
    """``KafkaSettings`` from the project's ``KAFKA_*`` variables (empty counts as unset);
    ``bootstrap_servers`` overrides ``KAFKA_BOOTSTRAP_SERVERS``. ValueError if invalid."""
    environ = os.environ if environ is None else environ

    def env(name: str) -> str | None:
        return (environ.get(name) or "").strip() or None

    options = {key: env(name) for key, name in ENVIRONMENT_VARIABLES.items() if key != "bootstrap_servers"}
    options["security_protocol"] = (options["security_protocol"] or "PLAINTEXT").upper()
    if options["sasl_mechanism"]:
        options["sasl_mechanism"] = options["sasl_mechanism"].upper()
    return KafkaSettings(
        bootstrap_servers=bootstrap_servers or env("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP_SERVERS,
        client_id=CLIENT_ID,
        connect_timeout_s=connect_timeout_s,
        **options,
    )


def registry_from_env(environ: Mapping[str, str] | None = None) -> TypedDecoder | None:
    """A decoder of typed records through the registry named by ``SCHEMA_REGISTRY_*``; None
    when ``SCHEMA_REGISTRY_URL`` is unset. ValueError if the settings are invalid."""
    environ = os.environ if environ is None else environ
    url = (environ.get(URL_VARIABLE) or "").strip()
    if not url:
        return None
    settings = RegistrySettings(
        url=url,
        user_info=(environ.get(USER_INFO_VARIABLE) or "").strip() or None,
        ca_file=(environ.get(CA_FILE_VARIABLE) or "").strip() or None,
    )
    return TypedDecoder(schema_fetcher(settings))


# --------------------------------------------------------------------------- the CLI


class TopicNotFound(RuntimeError):
    pass


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the same clean stop as Ctrl-C (a BaseException, so no
    ``except Exception`` inside kafka-python swallows it)."""


@dataclass
class _Tail:
    settings: KafkaSettings
    topic: str
    out: TextIO
    fmt: str
    limit: int | None
    idle_timeout_s: float | None
    from_beginning: bool
    # read_committed: what a replay committed, never the records of an attempt that crashed
    # before its commit (Kafka marks those aborted; a read_uncommitted reader still sees them).
    read_committed: bool = True
    typed: TypedDecoder | None = None  # with SCHEMA_REGISTRY_URL: typed records decoded
    count: int = 0
    started: float = field(default_factory=time.monotonic)
    consumer: Any = None

    def connect(self) -> int:
        """Assign every partition of the topic and seek; returns the partition count."""
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        settings = self.settings
        settings.check_login()  # a refused login fails now, saying why
        try:
            self.consumer = KafkaConsumer(
                **settings.client_config(),
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed" if self.read_committed else "read_uncommitted",
            )
        except (KafkaError, OSError) as error:
            raise settings.unavailable("connecting", error) from error
        try:
            partitions = sorted(self.consumer.partitions_for_topic(self.topic) or ())
            if not partitions:
                raise TopicNotFound(
                    f"topic {self.topic!r} does not exist on Kafka at {settings.bootstrap_servers} "
                    f"(or this client may not describe it)"
                )
            tps = [TopicPartition(self.topic, p) for p in partitions]
            self.consumer.assign(tps)
            # Resolve the positions now (seek_to_end is lazy), so "from now" means now and
            # the readiness line is only printed once nothing new can be missed.
            timeout_ms = int(settings.connect_timeout_s * 1000)
            if self.from_beginning:
                offsets = self.consumer.beginning_offsets(tps, timeout_ms=timeout_ms)
            else:
                offsets = self.consumer.end_offsets(tps, timeout_ms=timeout_ms)
            for tp in tps:
                self.consumer.seek(tp, offsets[tp])
        except KafkaError as error:
            raise settings.unavailable(f"reading the offsets of {self.topic!r}", error) from error
        return len(tps)

    def follow(self) -> str:
        """Print messages until the limit or the idle timeout; returns why it stopped."""
        if self.limit is not None and self.count >= self.limit:
            return "limit reached"
        if self.fmt == "table":
            self._print(format_header())
        idle_deadline = None if self.idle_timeout_s is None else time.monotonic() + self.idle_timeout_s
        while True:
            wait_s = 1.0 if idle_deadline is None else max(0.0, min(1.0, idle_deadline - time.monotonic()))
            max_records = 500 if self.limit is None else max(1, min(500, self.limit - self.count))
            batches = self.consumer.poll(timeout_ms=int(wait_s * 1000), max_records=max_records)
            records = [record for batch in batches.values() for record in batch]
            for record in records:
                self._emit(record)
                if self.limit is not None and self.count >= self.limit:
                    return "limit reached"
            if records and self.idle_timeout_s is not None:
                idle_deadline = time.monotonic() + self.idle_timeout_s
            elif idle_deadline is not None and time.monotonic() >= idle_deadline:
                return f"no message for {self.idle_timeout_s:g} s"

    def _emit(self, record: Any) -> None:
        if self.fmt == "json":
            line = format_json(record.partition, record.offset, record.key, record.headers, record.value, self.typed)
        else:
            line = format_row(datetime.now(), record.partition, record.offset, record.key, record.value, self.typed)
        self._print(line)
        self.count += 1

    def _print(self, line: str) -> None:
        try:
            self.out.write(line + "\n")
        except UnicodeEncodeError:  # a terminal that cannot show some character
            encoding = getattr(self.out, "encoding", None) or "ascii"
            self.out.write(line.encode(encoding, "backslashreplace").decode(encoding) + "\n")
        self.out.flush()

    def summary(self, reason: str) -> str:
        elapsed = time.monotonic() - self.started
        noun = "message" if self.count == 1 else "messages"
        return f"clickstream-tail: {self.count} {noun} from {self.topic} in {elapsed:.1f} s ({reason})"

    def close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False, timeout_ms=2000)
            except BaseException:  # noqa: BLE001 - closing is best effort, even on a second Ctrl-C
                pass
            self.consumer = None


def _positive(kind: type):
    def convert(text: str):
        try:
            number = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not number > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return number

    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clickstream-tail",
        description="Follow a Kafka topic of the clickstream replay and print messages as they arrive.",
        epilog="Security settings come from KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, "
        "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD, KAFKA_SSL_CAFILE, KAFKA_SSL_CERTFILE and "
        "KAFKA_SSL_KEYFILE; typed records (avro, protobuf, json_schema) are decoded through the "
        "registry named by SCHEMA_REGISTRY_URL (SCHEMA_REGISTRY_USER_INFO, SCHEMA_REGISTRY_CA_FILE). Exit codes: 0 stopped (limit, timeout, Ctrl-C), 1 failed while "
        "following, 2 bad settings, unreachable broker or missing topic.",
    )
    parser.add_argument(
        "--bootstrap-servers",
        default=None,
        help=f"host:port[,host:port...] (default: $KAFKA_BOOTSTRAP_SERVERS or {DEFAULT_BOOTSTRAP_SERVERS})",
    )
    parser.add_argument("--topic", default=DEFAULT_TOPIC, help=f"topic to follow (default: {DEFAULT_TOPIC})")
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the oldest message of every partition (default: only messages sent from now on)",
    )
    parser.add_argument(
        "--limit", type=_positive(int), default=None, metavar="N", help="stop after N messages (exit 0)"
    )
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        default=None,
        metavar="S",
        help="stop after S seconds without a message (default: follow until Ctrl-C)",
    )
    parser.add_argument(
        "--read-uncommitted",
        action="store_true",
        help="also show records of transactions not committed (yet, or ever: an aborted replay "
        "attempt); the default shows what a read_committed consumer reads",
    )
    parser.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table (default): aligned columns for people; json: one object per line, for jq",
    )
    parser.add_argument(
        "--connect-timeout",
        type=_positive(float),
        default=DEFAULT_CONNECT_TIMEOUT_S,
        metavar="S",
        help=f"give up on an unreachable broker after S seconds (default: {DEFAULT_CONNECT_TIMEOUT_S:g})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    try:
        settings = settings_from_env(args.bootstrap_servers, args.connect_timeout)
    except ValueError as error:
        print(f"clickstream-tail: invalid Kafka settings: {error}", file=err)
        return 2
    try:
        typed = registry_from_env()
    except ValueError as error:
        print(f"clickstream-tail: invalid schema registry settings: {error}", file=err)
        return 2

    tail = _Tail(
        settings=settings,
        topic=args.topic,
        out=out,
        fmt=args.format,
        limit=args.limit,
        idle_timeout_s=args.timeout,
        from_beginning=args.from_beginning,
        read_committed=not args.read_uncommitted,
        typed=typed,
    )
    kafka_logger = logging.getLogger("kafka")
    kafka_level = kafka_logger.level
    # kafka-python logs every failed connection attempt; the tail reports failures itself.
    kafka_logger.setLevel(logging.CRITICAL)
    restore_sigterm = _stop_on_sigterm()
    try:
        try:
            partitions = tail.connect()
        except (BrokerUnavailable, TopicNotFound) as error:
            print(f"clickstream-tail: {error}", file=err)
            return 2
        start = "the beginning" if args.from_beginning else "now"
        print(
            f"following {args.topic} from {start} ({partitions} partitions on {settings.bootstrap_servers})",
            file=err,
            flush=True,
        )
        reason = tail.follow()
    except _Terminated:
        reason = "terminated"
    except KeyboardInterrupt:
        reason = "interrupted"
    except BrokenPipeError:
        _discard_stdout()
        return 0
    except RegistryError as error:
        print(f"clickstream-tail: {error}", file=err)
        return 1
    except Exception as error:  # noqa: BLE001 - a consumer failure while following
        from kafka.errors import KafkaError

        if not isinstance(error, KafkaError):
            raise
        print(f"clickstream-tail: {settings.unavailable(f'following {args.topic!r}', error)}", file=err)
        return 1
    finally:
        tail.close()
        restore_sigterm()
        kafka_logger.setLevel(kafka_level)
    try:
        print(tail.summary(reason), file=err, flush=True)
    except (BrokenPipeError, ValueError):
        pass
    return 0


def _stop_on_sigterm():
    """Treat SIGTERM like Ctrl-C while main runs (only possible in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _discard_stdout() -> None:
    """After the reader of our stdout went away (``| head``), keep the interpreter's final
    flush from raising BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    raise SystemExit(main())
