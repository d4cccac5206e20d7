"""The pure printing logic of ``clickstream-tail``: no broker needed."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from clickstream_dagster.encoding import encode_message
from clickstream_dagster.kafka_client import KafkaSettings
from clickstream_dagster.tail import (
    build_parser,
    decode_value,
    format_header,
    format_json,
    format_original_time,
    format_row,
    main,
    settings_from_env,
)

EVENT = {
    "original_timestamp": 1330560000,  # 2012-03-01 00:00:00 UTC
    "userId": "F6F8B460-4204-4C26-A32C-B93826EDCB99",
    "ip": "67.180.253.113",
    "productId": "VD55179433",
    "userAgent": "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/535.11",
}
REPLAY_NS = 1_764_312_345_678_123_456
ARRIVAL = datetime(2025, 11, 28, 14, 3, 7, 123456)
KEY = EVENT["userId"].encode()


@pytest.mark.parametrize("fmt", ["json", "quix"])
def test_decode_value_both_formats(fmt: str) -> None:
    decoded = decode_value(encode_message(EVENT, fmt, REPLAY_NS))
    assert decoded == {
        "format": fmt,
        "userId": EVENT["userId"],
        "ip": EVENT["ip"],
        "productId": EVENT["productId"],
        "userAgent": EVENT["userAgent"],
        "original_timestamp": 1330560000,
        "replay_time_ms": REPLAY_NS // 1_000_000,
    }


@pytest.mark.parametrize("fmt", ["json", "quix"])
def test_decode_value_null_product(fmt: str) -> None:
    decoded = decode_value(encode_message(EVENT | {"productId": None}, fmt, REPLAY_NS))
    assert decoded is not None
    assert decoded["productId"] is None
    assert decoded["userId"] == EVENT["userId"]


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"not json at all",
        b"\xff\xfe\x00garbage",
        b'{"truncated": ',
        b"[1, 2, 3]",
        b"42",
        b'"a string"',
        b'{"some": "other json"}',
        b'{"original_timestamp": "yesterday", "userId": "u"}',  # wrong type
        b'{"original_timestamp": 1, "userId": 7}',
        b'{"StringValues": {"userId": "not-a-list"}, "NumericValues": {}}',
        b"[" * 100_000,  # deeper than the JSON parser's recursion limit
    ],
)
def test_decode_value_rejects_what_is_not_a_clickstream_message(value: bytes | None) -> None:
    assert decode_value(value) is None


def test_format_original_time() -> None:
    assert format_original_time(1330560000) == "2012-03-01 00:00:00"
    assert format_original_time(1330560000 + 3661) == "2012-03-01 01:01:01"
    assert format_original_time(None) == "-"
    assert format_original_time(10**20) == str(10**20)  # out of range: shown as is


def _columns(line: str) -> list[str]:
    return [cell for cell in re.split(r" {2,}", line) if cell]


@pytest.mark.parametrize("fmt", ["json", "quix"])
def test_format_row_both_formats(fmt: str) -> None:
    row = format_row(ARRIVAL, 2, 1234, KEY, encode_message(EVENT, fmt, REPLAY_NS))
    assert _columns(row) == [
        "14:03:07.123",
        "2/1234",
        EVENT["userId"],
        "VD55179433",
        "67.180.253.113",
        "2012-03-01 00:00:00",
    ]


def test_format_row_is_aligned_with_the_header() -> None:
    header = format_header()
    starts = [header.index(name) for name in ("TIME", "PART/OFFSET", "KEY", "PRODUCT", "IP", "ORIGINAL TIME")]
    rows = [
        format_row(ARRIVAL, 0, 7, KEY, encode_message(EVENT, "json", REPLAY_NS)),
        format_row(ARRIVAL, 12, 123456, KEY, encode_message(EVENT | {"ip": "1.2.3.4"}, "quix", REPLAY_NS)),
        format_row(ARRIVAL, 1, 1, KEY, encode_message(EVENT | {"productId": None}, "json", REPLAY_NS)),
    ]
    for row in rows:
        for start, cell in zip(starts, _columns(row), strict=True):
            assert row[start:].startswith(cell), (row, start, cell)


@pytest.mark.parametrize("fmt", ["json", "quix"])
def test_format_row_null_product_is_a_dash(fmt: str) -> None:
    row = format_row(ARRIVAL, 0, 5, KEY, encode_message(EVENT | {"productId": None}, fmt, REPLAY_NS))
    assert _columns(row)[3] == "-"
    assert _columns(row)[5] == "2012-03-01 00:00:00"


def test_format_row_garbage_is_shown_raw_and_truncated() -> None:
    garbage = b"this is not a clickstream message " * 20
    row = format_row(ARRIVAL, 1, 9, b"k", garbage)
    cells = _columns(row)
    assert cells[:3] == ["14:03:07.123", "1/9", "k"]
    assert row.count("\n") == 0
    raw = row[row.index("raw: ") :]
    assert raw.startswith("raw: this is not a clickstream message")
    assert raw.endswith("…")
    assert len(raw) <= len("raw: ") + 80


def test_format_row_never_breaks_the_line() -> None:
    # undecodable bytes, control characters and terminal escapes stay on one line
    for key, value in [
        (b"\xff\xfe", b"\x00\x01\x02"),
        (b"a\nb", b"line one\nline two\r\x1b[31mred"),
        (None, None),
        (b"k", json.dumps(EVENT | {"productId": "evil\nnewline", "ip": "\x1b[2J"}).encode()),
    ]:
        row = format_row(ARRIVAL, 0, 0, key, value)
        assert "\n" not in row and "\r" not in row and "\x1b" not in row, row
    assert "(null value)" in format_row(ARRIVAL, 0, 0, b"k", None)
    assert _columns(format_row(ARRIVAL, 0, 0, None, b"x"))[2] == "-"


@pytest.mark.parametrize("fmt", ["json", "quix"])
def test_format_json_parses_the_value(fmt: str) -> None:
    value = encode_message(EVENT, fmt, REPLAY_NS)
    headers = [("source_day", b"2012-03-01"), ("dagster_run_id", b"run-1")]
    line = format_json(2, 1234, KEY, headers, value)
    assert "\n" not in line
    record = json.loads(line)
    assert record == {
        "partition": 2,
        "offset": 1234,
        "key": EVENT["userId"],
        "headers": {"source_day": "2012-03-01", "dagster_run_id": "run-1"},
        "value": json.loads(value),
    }


def test_format_json_garbage_is_a_raw_string() -> None:
    record = json.loads(format_json(0, 1, b"\xffk", [], b"not json\n\xff"))
    assert record["value"] == "not json\n\ufffd"
    assert record["key"] == "\ufffdk"
    assert record["headers"] == {}
    assert json.loads(format_json(0, 1, None, [("h", None)], None)) == {
        "partition": 0, "offset": 1, "key": None, "headers": {"h": None}, "value": None,
    }


def test_settings_from_env_reads_the_project_variables() -> None:
    environ = {
        "KAFKA_BOOTSTRAP_SERVERS": "broker-1:9096,broker-2:9096",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "alice",
        "KAFKA_SASL_PASSWORD": "s3cret-password",
        "KAFKA_SSL_CAFILE": "/etc/ca.pem",
        "KAFKA_SSL_CERTFILE": "",  # empty counts as unset
    }
    settings = settings_from_env(None, 4.0, environ)
    assert isinstance(settings, KafkaSettings)
    assert settings.bootstrap_servers == "broker-1:9096,broker-2:9096"
    assert (settings.security_protocol, settings.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (settings.sasl_username, settings.sasl_password) == ("alice", "s3cret-password")
    assert (settings.ssl_cafile, settings.ssl_certfile) == ("/etc/ca.pem", None)
    assert settings.connect_timeout_s == 4.0
    assert "s3cret-password" not in repr(settings)
    # the flag wins over the variable; nothing set means a local broker
    assert settings_from_env("other:1", 4.0, environ).bootstrap_servers == "other:1"
    assert settings_from_env(None, 4.0, {}).bootstrap_servers == "localhost:9092"
    assert settings_from_env(None, 4.0, {}).security_protocol == "PLAINTEXT"


def test_invalid_settings_exit_2_without_printing_the_password(monkeypatch, capsys) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "alice")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret-password")
    monkeypatch.delenv("KAFKA_SASL_MECHANISM", raising=False)
    assert main(["--bootstrap-servers", "localhost:1"]) == 2
    captured = capsys.readouterr()
    assert "sasl_mechanism" in captured.err
    assert "s3cret-password" not in captured.err + captured.out


def test_parser_defaults_and_validation() -> None:
    args = build_parser().parse_args([])
    assert (args.topic, args.from_beginning, args.limit, args.timeout, args.format, args.connect_timeout) == (
        "click-data", False, None, None, "table", 10.0,
    )
    for bad in (["--limit", "0"], ["--timeout", "-1"], ["--format", "xml"], ["--connect-timeout", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(bad)
        assert exit_info.value.code == 2


def test_unreachable_broker_exits_2_naming_the_servers(capsys, monkeypatch) -> None:
    for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM"):
        monkeypatch.delenv(name, raising=False)
    # port 1 on localhost: refused at once, so this stays fast
    assert main(["--bootstrap-servers", "127.0.0.1:1", "--connect-timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert "127.0.0.1:1" in err
    assert err.count("\n") == 1
