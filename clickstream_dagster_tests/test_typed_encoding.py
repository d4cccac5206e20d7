"""The typed formats byte for byte against confluent-kafka's own serializers (its in-process
``mock://`` registry), read back by the project's readers, and the registry's failures in words."""

import json

import polars as pl
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from hypothesis import given, settings
from hypothesis import strategies as st

from clickstream_dagster.readback import verify_replay
from clickstream_dagster.schema_registry import RegistryError, RegistrySettings, _mismatch, subject_name
from clickstream_dagster.tail import decode_value, format_json, format_row
from clickstream_dagster.typed_encoding import (
    TypedFormat,
    encode_typed,
    packaged_decoder,
    page_view_class,
    record,
    schema_file,
    schema_id_of,
)

EVENTS = pl.DataFrame(
    {
        "original_timestamp": [1330560000, 1330560005, 0, -7],
        "userId": ["F6F8B460-4204-4C26-A32C-B93826EDCB99", "é€😀 \"quoted\"\\\n\x1f", "", "u"],
        "ip": ["75.85.165.38", "1.2.3.4", "", "::1"],
        "productId": ["VD55179433", None, "", None],
        "userAgent": ["Mozilla/5.0 (KHTML, like Gecko) " * 10, "UA", "", None],  # > 127 bytes: 2-byte lengths
    }
)
CTX = SerializationContext("clicks", MessageField.VALUE)
# Around varint boundaries, and a replay time of today.
REPLAY_MS = [0, 1, 63, 64, 127, 128, 8191, 8192, 1_764_312_345_678, 2**62]


def confluent_serializer(fmt: TypedFormat):
    """confluent-kafka's serializer for ``fmt`` on a fresh mock registry: record -> bytes."""
    client = SchemaRegistryClient.new_client({"url": "mock://typed-encoding"})
    if fmt == TypedFormat.AVRO:
        serializer = AvroSerializer(client, schema_file(fmt))
        return lambda r: serializer(r, CTX)
    if fmt == TypedFormat.JSON_SCHEMA:
        serializer = JSONSerializer(schema_file(fmt), client)
        return lambda r: serializer(r, CTX)
    message_class = page_view_class()
    serializer = ProtobufSerializer(message_class, client, {"use.deprecated.format": False})
    return lambda r: serializer(message_class(**{k: v for k, v in r.items() if v is not None}), CTX)


@pytest.mark.parametrize("fmt", list(TypedFormat))
def test_bytes_equal_confluent_kafkas_serializers(fmt):
    serialize = confluent_serializer(fmt)
    for replay_ms in REPLAY_MS:
        expected = [serialize(record(event, replay_ms)) for event in EVENTS.to_dicts()]
        messages = encode_typed(EVENTS, fmt, schema_id_of(expected[0]))
        assert [messages.value(i, replay_ms * 1_000_000) for i in range(len(messages))] == expected
        assert messages.values(0, len(messages), replay_ms * 1_000_000 + 999_999) == expected
    assert messages.keys == [u.encode() for u in EVENTS["userId"]]


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(-(2**40), 2**40), text, text, st.none() | text, st.none() | text, st.integers(0, 2**50),
    st.sampled_from(list(TypedFormat)),
)
def test_any_page_view_equals_confluent_kafkas_bytes(original, user, ip, product, agent, replay_ms, fmt):
    events = pl.DataFrame(
        [[original, user, ip, product, agent]],
        schema={"original_timestamp": pl.Int64, "userId": pl.String, "ip": pl.String, "productId": pl.String, "userAgent": pl.String},
        orient="row",
    )
    expected = confluent_serializer(fmt)(record(events.row(0, named=True), replay_ms))
    assert encode_typed(events, fmt, schema_id_of(expected)).value(0, replay_ms * 1_000_000) == expected


@pytest.mark.parametrize("fmt", list(TypedFormat))
def test_readers_decode_every_field(fmt):
    messages = encode_typed(EVENTS, fmt, 7)
    values = [messages.value(i, 1_764_312_345_678_000_000) for i in range(len(messages))]
    typed = packaged_decoder(fmt)
    for event, value in zip(EVENTS.to_dicts(), values):
        assert decode_value(value, typed) == {"format": fmt.value, **event, "replay_time_ms": 1_764_312_345_678}
        assert decode_value(value) is None  # framed bytes without a registry: not a message
        assert json.loads(format_json(0, 1, b"k", [], value, typed))["value"] == event | {"timestamp": 1_764_312_345_678}
    assert "VD55179433" in format_row(__import__("datetime").datetime.now(), 0, 1, b"k", values[0], typed)
    headers = {"source_day": b"2012-03-01", "dagster_run_id": b"r"}
    found = verify_replay(
        [(0, i, b"k%d" % i, headers, v) for i, v in enumerate(values)], day="2012-03-01", run_ids=["r"],
        expected_rows=len(values), typed=typed,
    )
    assert found.passed and found.undecodable == 0


def test_a_value_framed_for_another_schema_is_undecodable():
    avro = encode_typed(EVENTS, "avro", 7).value(0, 10**15)
    assert packaged_decoder("avro").decode(avro[:-3]) is None
    assert packaged_decoder("protobuf").decode(avro[:5] + b"\x02\x04garbage") is None


def test_subjects_follow_the_naming_strategy():
    assert subject_name("clicks", "topic_name") == "clicks-value"
    assert subject_name("clicks", "record_name") == "clickstream.PageView"


@pytest.mark.parametrize("fmt", list(TypedFormat))
def test_the_packaged_schemas_fit_what_the_encoder_writes(fmt):
    from clickstream_dagster.typed_encoding import registered_schema_text

    assert _mismatch(fmt, registered_schema_text(fmt)) is None


def test_a_latest_version_lacking_a_field_or_reordered_does_not_fit():
    avro = json.loads(schema_file("avro"))
    lacking = avro | {"fields": [f for f in avro["fields"] if f["name"] != "userAgent"]}
    assert _mismatch(TypedFormat.AVRO, json.dumps(lacking)) == "lacks the field(s) userAgent"
    reordered = avro | {"fields": avro["fields"][::-1]}
    assert "orders or types its fields otherwise" in _mismatch(TypedFormat.AVRO, json.dumps(reordered))
    schema = json.loads(schema_file("json_schema"))
    del schema["properties"]["ip"]
    assert _mismatch(TypedFormat.JSON_SCHEMA, json.dumps(schema)) == "lacks the field(s) ip"
    proto = schema_file("protobuf")
    assert _mismatch(TypedFormat.PROTOBUF, proto) is None  # as text, as Confluent's registry returns it
    assert _mismatch(TypedFormat.PROTOBUF, proto.replace("string ip = 3;", "")) == "lacks the field(s) ip"
    assert "numbers its fields otherwise" in _mismatch(TypedFormat.PROTOBUF, proto.replace("ip = 3", "ip = 9"))


def test_failures_name_url_and_user_never_the_password():
    registry = RegistrySettings(url="https://me:secret@registry.example:8081/apis/ccompat/v7", user_info="alice:s3cret")
    assert "secret" not in repr(registry) and "s3cret" not in repr(registry)
    refused = str(registry.failure("registering", SchemaRegistryError(401, 40101, "Unauthorized")))
    assert "user 'alice'" in refused and "https://registry.example:8081/apis/ccompat/v7" in refused
    unreachable = str(registry.failure("registering", OSError("connection refused to alice:s3cret")))
    assert "unreachable" in unreachable
    for message in (refused, unreachable):
        assert "s3cret" not in message and "secret" not in message
    with pytest.raises(ValueError, match="expected http"):
        RegistrySettings(url="registry:8081")
    with pytest.raises(ValueError, match="user:password"):
        RegistrySettings(url="http://r", user_info="alice")
    assert isinstance(registry.failure("x", OSError()), RegistryError)


def test_an_id_the_registry_does_not_know_is_undecodable_not_fatal():
    from clickstream_dagster.typed_encoding import TypedDecoder

    value = encode_typed(EVENTS, "avro", 12345).value(0, 10**15)
    assert decode_value(value, TypedDecoder(lambda schema_id: None)) is None


def test_the_deployment_reads_the_registry_from_the_environment_user_info_as_envvar(monkeypatch):
    from dagster import EnvVar

    from clickstream_dagster.definitions import schema_registry_from_environment

    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "https://registry.example/apis/ccompat/v7")
    monkeypatch.setenv("SCHEMA_REGISTRY_USER_INFO", "alice:s3cret")
    monkeypatch.setenv("SCHEMA_REGISTRY_CA_FILE", "/etc/ca.pem")
    resource = schema_registry_from_environment()
    assert (resource.url, resource.ca_file) == ("https://registry.example/apis/ccompat/v7", "/etc/ca.pem")
    # Resolved only when a run starts, never part of the code location's config.
    assert resource.user_info == EnvVar("SCHEMA_REGISTRY_USER_INFO")
    for variable in ("SCHEMA_REGISTRY_URL", "SCHEMA_REGISTRY_USER_INFO", "SCHEMA_REGISTRY_CA_FILE"):
        monkeypatch.delenv(variable)
    assert schema_registry_from_environment().url is None


def test_a_typed_format_without_a_registry_fails_naming_the_variable():
    from dagster import Failure

    from clickstream_dagster.resources.schema_registry import SchemaRegistryResource

    with pytest.raises(Failure, match="SCHEMA_REGISTRY_URL"):
        SchemaRegistryResource().encode(EVENTS, "clicks", "avro")
    assert SchemaRegistryResource().decoder() is None
