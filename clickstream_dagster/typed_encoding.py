"""Typed messages: Avro, Protobuf and JSON Schema in the Confluent wire format. Pure; no Dagster.

A value is a zero byte, the schema's 4-byte registry id (big-endian), then the payload (for
Protobuf, the message-index list first: one zero byte for the file's first message). The
bytes are those confluent-kafka's serializers write for the same record
(``test_typed_encoding`` checks it against them).

As for ``json`` (see ``encoding``), each message is encoded once before the send loop and
the replay time is spliced in at send time: the schemas put ``timestamp`` last, so a
value is ``prefix + time_bytes(replay ms)``, where the time is a zigzag varint (Avro), a
tag and a varint (Protobuf) or decimal text before the closing brace (JSON Schema).
"""

from __future__ import annotations

import base64
import functools
import json
import struct
from collections.abc import Callable
from enum import StrEnum
from importlib import resources
from typing import Any

import polars as pl

from clickstream_dagster.cleaning import PUBLISHED_COLUMNS
from clickstream_dagster.encoding import EncodedMessages

MAGIC_BYTE = 0
RECORD_NAME = "clickstream.PageView"  # the record's full name in all three schemas
# The value's fields, in the schemas' order; the replay time comes last.
FIELDS = (*PUBLISHED_COLUMNS, "timestamp")
NULLABLE = frozenset({"productId", "userAgent"})


class TypedFormat(StrEnum):
    AVRO = "avro"
    PROTOBUF = "protobuf"
    JSON_SCHEMA = "json_schema"

    @property
    def schema_type(self) -> str:
        """The registry's name for it."""
        return {"avro": "AVRO", "protobuf": "PROTOBUF", "json_schema": "JSON"}[self.value]


TYPED_FORMATS = frozenset(f.value for f in TypedFormat)
_SCHEMA_FILES = {
    TypedFormat.AVRO: "page_view.avsc",
    TypedFormat.PROTOBUF: "page_view.proto",
    TypedFormat.JSON_SCHEMA: "page_view.schema.json",
}


def schema_file(fmt: TypedFormat | str) -> str:
    """The schema's text as shipped in the package (``clickstream_dagster/schemas``)."""
    return resources.files("clickstream_dagster.schemas").joinpath(_SCHEMA_FILES[TypedFormat(fmt)]).read_text()


def registered_schema_text(fmt: TypedFormat | str) -> str:
    """What is registered: the file, except Protobuf's, registered as confluent-kafka's
    serializer registers it (its serialized FileDescriptorProto, base64), which every
    Confluent-compatible registry accepts and its deserializer reads back."""
    fmt = TypedFormat(fmt)
    if fmt == TypedFormat.PROTOBUF:
        return base64.b64encode(file_descriptor().SerializeToString()).decode()
    return schema_file(fmt)


@functools.cache
def file_descriptor():
    """page_view.proto compiled (``make schemas`` regenerates page_view.desc with protoc)."""
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet.FromString(
        resources.files("clickstream_dagster.schemas").joinpath("page_view.desc").read_bytes()
    )
    (file,) = files.file
    return file


@functools.cache
def page_view_class() -> type:
    """The Protobuf message class of page_view.proto (no generated code: built from its descriptor)."""
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_descriptor())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(RECORD_NAME))


def header(schema_id: int, fmt: TypedFormat | str) -> bytes:
    head = struct.pack(">bI", MAGIC_BYTE, schema_id)
    return head + b"\x00" if TypedFormat(fmt) == TypedFormat.PROTOBUF else head


# ----------------------------------------------------------------------------- varints


def _varint(n: int) -> bytes:
    n &= 0xFFFF_FFFF_FFFF_FFFF  # negative int64: two's complement, as Protobuf writes it
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


@functools.lru_cache(maxsize=1)
def _avro_time(ms: int) -> bytes:
    return _zigzag(ms)


@functools.lru_cache(maxsize=1)
def _protobuf_time(ms: int) -> bytes:
    return b"\x30" + _varint(ms) if ms else b""  # field 6, varint; proto3 leaves out a zero


@functools.lru_cache(maxsize=1)
def _json_time(ms: int) -> bytes:
    return str(ms).encode()


# ----------------------------------------------------------------------------- payloads


def _avro_string(text: str) -> bytes:
    data = text.encode()
    return _zigzag(len(data)) + data


def _avro_fields(row: tuple) -> bytes:
    original, user_id, ip, product, agent = row
    nullable = [b"\x00" if v is None else b"\x02" + _avro_string(v) for v in (product, agent)]
    return _zigzag(original) + _avro_string(user_id) + _avro_string(ip) + nullable[0] + nullable[1]


def _protobuf_string(tag: int, text: str) -> bytes:
    data = text.encode()
    return bytes((tag,)) + _varint(len(data)) + data


def _protobuf_fields(row: tuple) -> bytes:
    original, user_id, ip, product, agent = row
    # proto3: a zero or empty plain field is left out; an `optional` one is written if set.
    out = b"\x08" + _varint(original) if original else b""
    out += _protobuf_string(0x12, user_id) if user_id else b""
    out += _protobuf_string(0x1A, ip) if ip else b""
    out += b"" if product is None else _protobuf_string(0x22, product)
    return out + (b"" if agent is None else _protobuf_string(0x2A, agent))


def _json_fields(row: tuple) -> bytes:
    # As confluent-kafka's JSONSerializer (orjson): compact, UTF-8; the object left open.
    text = json.dumps(dict(zip(PUBLISHED_COLUMNS, row)), separators=(",", ":"), ensure_ascii=False)
    return text[:-1].encode() + b',"timestamp":'


_PAYLOAD = {
    TypedFormat.AVRO: (_avro_fields, b"", _avro_time),
    TypedFormat.PROTOBUF: (_protobuf_fields, b"", _protobuf_time),
    TypedFormat.JSON_SCHEMA: (_json_fields, b"}", _json_time),
}


def encode_typed(events: pl.DataFrame, fmt: TypedFormat | str, schema_id: int) -> EncodedMessages:
    """Encode page views (the five published columns) under the registry's ``schema_id``."""
    fmt = TypedFormat(fmt)
    fields, suffix, time_bytes = _PAYLOAD[fmt]
    head = header(schema_id, fmt)
    rows = events.select(PUBLISHED_COLUMNS).iter_rows()
    return EncodedMessages(
        keys=events["userId"].cast(pl.Binary).to_list(),
        prefixes=[head + fields(row) for row in rows],
        suffixes=[suffix] * events.height,
        divisor=1_000_000,
        time_bytes=time_bytes,
    )


def record(event: dict, replay_time_ms: int) -> dict:
    """The record a serializer is given for a page view (the reference ``encode_typed`` meets)."""
    return {c: event[c] for c in PUBLISHED_COLUMNS} | {"timestamp": replay_time_ms}


# ----------------------------------------------------------------------------- reading


def schema_id_of(value: bytes | None) -> int | None:
    """The registry id of a Confluent-framed value, or None if the value is not framed."""
    if value is None or len(value) < 5 or value[0] != MAGIC_BYTE:
        return None
    return struct.unpack(">I", value[1:5])[0]


class TypedDecoder:
    """Decodes framed values with the writer's schema, fetched by id once through
    ``fetch(schema_id) -> (schema_type, schema_text)`` (a registry client; None: unknown id)."""

    def __init__(self, fetch: Callable[[int], tuple[str, str] | None]):
        self._fetch = fetch
        self._readers: dict[int, Callable[[bytes], dict] | None] = {}

    def decode(self, value: bytes) -> dict | None:
        """``{"format", *FIELDS}`` of a framed page view, or None if it is not one."""
        schema_id = schema_id_of(value)
        if schema_id is None:
            return None
        if schema_id not in self._readers:
            schema = self._fetch(schema_id)
            self._readers[schema_id] = self._reader(*schema) if schema else None
        reader = self._readers[schema_id]
        try:
            fields = reader(value[5:]) if reader else None
        except Exception:  # noqa: BLE001 - bytes the writer's schema does not describe
            return None
        if not isinstance(fields, dict) or not set(FIELDS) <= fields.keys():
            return None
        return fields

    @staticmethod
    def _reader(schema_type: str, schema_text: str) -> Callable[[bytes], dict] | None:
        if schema_type == "AVRO":
            import io

            import fastavro

            parsed = fastavro.parse_schema(json.loads(schema_text))

            def avro(payload: bytes) -> dict:
                # timestamp-millis arrives as a datetime: the wire's epoch ms is what a reader compares
                fields = fastavro.schemaless_reader(io.BytesIO(payload), parsed, None, return_record_name=False)
                return {"format": "avro", **fields, "timestamp": _epoch_ms(fields.get("timestamp"))}

            return avro
        if schema_type == "JSON":
            return lambda payload: {"format": "json_schema", **json.loads(payload)}
        if schema_type == "PROTOBUF":
            message_class = page_view_class()

            def protobuf(payload: bytes) -> dict:
                if payload[:1] != b"\x00":  # message indexes other than [0]: not a PageView
                    return {}
                message = message_class.FromString(payload[1:])
                fields = {f: getattr(message, f) for f in FIELDS}
                return {"format": "protobuf", **fields, **{f: None for f in NULLABLE if not message.HasField(f)}}

            return protobuf
        return None


def _epoch_ms(value: Any) -> Any:
    if hasattr(value, "timestamp"):
        return round(value.timestamp() * 1000)
    return value


def packaged_decoder(fmt: TypedFormat | str) -> TypedDecoder:
    """Decodes what ``encode_typed`` wrote in ``fmt``, with the packaged schema (no registry)."""
    fmt = TypedFormat(fmt)
    return TypedDecoder(lambda _schema_id: (fmt.schema_type, schema_file(fmt)))
