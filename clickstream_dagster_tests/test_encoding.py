"""Both message formats, byte for byte against a plain-json reference, read by Quix Streams 3, and the headers."""

import json

import polars as pl
import pytest
from quixstreams.models.serializers.base import MessageField, SerializationContext
from quixstreams.models.serializers.quix import QuixDeserializer, QuixTimeseriesSerializer

from clickstream_dagster.encoding import MessageFormat, encode_message, encode_messages, replay_headers

EVENTS = pl.DataFrame(
    {
        "original_timestamp": [1330560000, 1330560005],
        "userId": ["F6F8B460-4204-4C26-A32C-B93826EDCB99", "00071AA7-86D2-4EB9-871A-A786D27EB9BA"],
        "ip": ["75.85.165.38", "1.2.3.4"],
        "productId": ["VD55179433", None],
        "userAgent": ['Mozilla/5.0 (KHTML, like Gecko) "quoted" é', "UA"],
    }
)
NOW_NS = 1_764_312_345_678_901_234


def test_json_message_is_a_flat_object_with_the_replay_time_in_ms():
    message = json.loads(encode_messages(EVENTS, "json").value(0, NOW_NS))
    assert message == {
        "original_timestamp": 1330560000,
        "userId": "F6F8B460-4204-4C26-A32C-B93826EDCB99",
        "ip": "75.85.165.38",
        "productId": "VD55179433",
        "userAgent": 'Mozilla/5.0 (KHTML, like Gecko) "quoted" é',
        "timestamp": 1_764_312_345_678,
    }


QUIX_ROW_1 = {
    "Timestamps": [NOW_NS],
    "NumericValues": {"original_timestamp": [1330560005.0]},
    "StringValues": {
        "ip": ["1.2.3.4"],
        "productId": [None],
        "userAgent": ["UA"],
        "userId": ["00071AA7-86D2-4EB9-871A-A786D27EB9BA"],
    },
    "BinaryValues": {},
    "TagValues": {},
}


def test_quix_message_is_timeseries_data_in_the_legacy_sdk_envelope():
    value = encode_messages(EVENTS, "quix").value(1, NOW_NS)
    message = json.loads(value)
    end = len(value) - len(',"S":34,"E":NNN}')
    assert message == {"C": "JT", "K": "ParameterData", "V": QUIX_ROW_1, "S": 34, "E": end}
    # Doubles, as the SDK writes them: readers that type columns see one numeric type.
    assert b'"original_timestamp":[1330560005.0]' in value


@pytest.mark.parametrize("row", [0, 1])
def test_quix_offsets_slice_out_exactly_the_timeseries_data(row):
    # The legacy SDK reads V as message[S:E], counted in bytes (row 0 has non-ASCII text).
    value = encode_messages(EVENTS, "quix").value(row, NOW_NS)
    envelope = json.loads(value)
    assert json.loads(value[envelope["S"] : envelope["E"]]) == envelope["V"]
    assert value[envelope["E"] :] == f',"S":{envelope["S"]},"E":{envelope["E"]}}}'.encode()


def test_quix_streams_3_reads_the_row_its_fields_and_its_timestamp():
    value = encode_messages(EVENTS, "quix").value(0, NOW_NS)
    rows = list(QuixDeserializer()(value, SerializationContext("click-data", MessageField.VALUE, headers=None)))
    assert rows == [
        {
            "original_timestamp": 1330560000.0,
            "ip": "75.85.165.38",
            "productId": "VD55179433",
            "userAgent": 'Mozilla/5.0 (KHTML, like Gecko) "quoted" é',
            "userId": "F6F8B460-4204-4C26-A32C-B93826EDCB99",
            "Tags": {},
            "Timestamp": NOW_NS,
        }
    ]


def test_quix_value_starts_where_quix_streams_own_legacy_writer_puts_it():
    ctx = SerializationContext("click-data", MessageField.VALUE)
    theirs = json.loads(QuixTimeseriesSerializer()({"ip": "é", "Timestamp": NOW_NS}, ctx))
    ours = json.loads(encode_messages(EVENTS, "quix").value(0, NOW_NS))
    assert {k: ours[k] for k in ("C", "K", "S")} == {k: theirs[k] for k in ("C", "K", "S")}


# Replay times of other widths than today's 19 digits move the quix end offset.
@pytest.mark.parametrize("now_ns", [NOW_NS, 7, 999_999_999, 10**19 + 5])
@pytest.mark.parametrize("fmt", list(MessageFormat))
def test_vectorised_encoding_equals_the_reference_byte_for_byte(fmt, now_ns):
    encoded = encode_messages(EVENTS, fmt)
    for i, event in enumerate(EVENTS.iter_rows(named=True)):
        assert encoded.value(i, now_ns) == encode_message(event, fmt, now_ns)


def test_keys_are_the_user_ids():
    assert encode_messages(EVENTS, "json").keys == [u.encode() for u in EVENTS["userId"]]


def test_no_messages_for_an_empty_day():
    assert len(encode_messages(EVENTS.clear(), "json")) == 0


def test_headers_name_the_day_and_the_run():
    assert replay_headers("2012-03-01", "run-1") == [("source_day", b"2012-03-01"), ("dagster_run_id", b"run-1")]


def test_values_of_a_range_equal_each_value_at_one_replay_time():
    events = pl.DataFrame(
        {"original_timestamp": [1330560000, 1330560001, 1330560002], "userId": ["a", "b", "c"], "ip": ["1", "2", "3"],
         "productId": [None, "P", "Q"], "userAgent": ["UA", None, "UB"]}
    )
    for message_format in ("json", "quix"):
        messages = encode_messages(events, message_format)
        assert messages.values(1, 3, 1_700_000_000_123_456_789) == [
            messages.value(i, 1_700_000_000_123_456_789) for i in (1, 2)
        ]
