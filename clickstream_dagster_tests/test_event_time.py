"""event_date and visitor_epoch: whole-day shifts and epoch visitor ids."""

import datetime as dt
import re
import uuid

import polars as pl
import pytest

from clickstream_dagster.event_time import DAY_S, EventTimeError, as_of, shift_days, visitor_id

UUID_UPPER = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")
RECORDED_IDS = ["D0F159FD-E0CB-11D2-9B39-00A0C9862BBB", "6474860B-26BE-4E17-B1F4-91BF2F4E4AB5"]


def events() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "original_timestamp": [1330560034, 1330560087, 1330646399],  # 2012-03-01 00:00:34 .. 23:59:59
            "userId": [RECORDED_IDS[0], RECORDED_IDS[1], RECORDED_IDS[0]],
            "ip": ["72.177.152.106", "68.49.202.219", "72.177.152.106"],
            "productId": ["a", "b", "c"],
            "userAgent": ["x", "y", "z"],
        }
    )


@pytest.mark.parametrize(
    ("event_date", "days"),
    [("recorded", 0), ("2012-03-16", 15), ("2012-02-29", -1), ("2026-03-08", 5120), ("today", 5389)],
)
def test_the_shift_is_in_whole_days(event_date, days):
    assert shift_days("2012-03-01", event_date, today=dt.date(2026, 12, 2)) == days


def test_a_shift_keeps_the_time_of_day_exactly_across_a_daylight_saving_change():
    # 2026-03-08 is a DST change in the US, 2026-03-29 in Europe: UTC epoch seconds have none.
    for target in ("2026-03-08", "2026-03-29", "2026-10-25"):
        moved = as_of(events(), days=shift_days("2012-03-01", target), visitor_epoch=0)
        times = [dt.datetime.fromtimestamp(t, dt.UTC) for t in moved["original_timestamp"]]
        assert [t.date().isoformat() for t in times[:2]] == [target, target]
        assert [t.strftime("%H:%M:%S") for t in times] == ["00:00:34", "00:01:27", "23:59:59"]
        assert (moved["original_timestamp"] - events()["original_timestamp"]).unique().to_list() == [
            shift_days("2012-03-01", target) * DAY_S
        ]


@pytest.mark.parametrize("bad", ["2012-3-1", "yesterday", "2012-03-32", "", "20120301"])
def test_a_bad_event_date_is_refused_naming_the_setting(bad):
    with pytest.raises(EventTimeError, match="event_date="):
        shift_days("2012-03-01", bad)


def test_epoch_ids_are_stable_distinct_upper_case_uuids():
    assert visitor_id(RECORDED_IDS[0], 0) == RECORDED_IDS[0]
    ids = {(r, e): visitor_id(r, e) for r in RECORDED_IDS for e in (1, 2, 3)}
    assert len(set(ids.values())) == 6 and not set(ids.values()) & set(RECORDED_IDS)
    for value in ids.values():
        assert UUID_UPPER.match(value) and uuid.UUID(value).version == 5
    assert ids == {(r, e): visitor_id(r, e) for r in RECORDED_IDS for e in (1, 2, 3)}


def test_an_epoch_maps_each_visitor_to_one_new_id_and_keeps_everything_else():
    moved = as_of(events(), days=0, visitor_epoch=7)
    assert moved["userId"].to_list() == [visitor_id(RECORDED_IDS[0], 7), visitor_id(RECORDED_IDS[1], 7), visitor_id(RECORDED_IDS[0], 7)]
    assert moved.drop("userId").equals(events().drop("userId"))
    with pytest.raises(EventTimeError, match="visitor_epoch=-1"):
        as_of(events(), days=0, visitor_epoch=-1)


@pytest.mark.parametrize("message_format", ["json", "quix"])
def test_every_format_carries_the_moved_time_and_the_epochs_ids(message_format):
    from clickstream_dagster.encoding import encode_messages
    from clickstream_dagster.tail import decode_value

    moved = as_of(events(), days=shift_days("2012-03-01", "2030-01-15"), visitor_epoch=2)
    messages = encode_messages(moved, message_format)
    decoded = [decode_value(messages.value(i, 1_700_000_000_000_000_000)) for i in range(len(messages))]
    assert [d["original_timestamp"] for d in decoded] == moved["original_timestamp"].to_list()
    assert dt.datetime.fromtimestamp(decoded[0]["original_timestamp"], dt.UTC).isoformat() == "2030-01-15T00:00:34+00:00"
    assert [d["userId"] for d in decoded] == [visitor_id(u, 2) for u in events()["userId"]]
    assert messages.keys == [visitor_id(u, 2).encode() for u in events()["userId"]]
