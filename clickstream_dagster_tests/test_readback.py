"""The read-back check's verdict on what a consumer found, on hand-made records."""

import json

from clickstream_dagster.readback import verify_replay

DAY = "2012-03-05"


def record(offset, user, ts, run="r1", day=DAY, partition=0, value=None):
    body = {"ip": "1.2.3.4", "original_timestamp": ts, "productId": "P", "userAgent": "UA", "userId": user, "timestamp": 5}
    headers = {"source_day": day.encode(), "dagster_run_id": run.encode()}
    return (partition, offset, user.encode(), headers, value if value is not None else json.dumps(body).encode())


def test_every_row_once_in_order_passes():
    found = verify_replay([record(0, "a", 1), record(1, "a", 2), record(0, "b", 1, partition=1)], day=DAY, run_ids=["r1"], expected_rows=3)
    assert found.passed and (found.found, found.duplicates, found.missing) == (3, 0, 0)


def test_a_row_delivered_twice_fails_as_a_duplicate():
    found = verify_replay([record(0, "a", 1), record(1, "a", 2), record(2, "a", 1, run="r2")], day=DAY, run_ids=["r1", "r2"], expected_rows=2)
    assert not found.passed and found.duplicates == 1
    assert found.out_of_order_keys == 1  # and visitor a's page views go backwards in time


def test_a_missing_row_fails():
    found = verify_replay([record(0, "a", 1)], day=DAY, run_ids=["r1"], expected_rows=2)
    assert not found.passed and found.missing == 1


def test_other_days_and_other_runs_are_not_this_replays_messages():
    records = [record(0, "a", 1), record(1, "a", 1, run="someone-else"), record(2, "a", 1, day="2012-03-06")]
    found = verify_replay(records, day=DAY, run_ids=["r1"], expected_rows=1)
    assert found.passed and found.found == 1


def test_an_undecodable_message_of_the_replay_fails():
    found = verify_replay([record(0, "a", 1), record(1, "a", 2, value=b"\xff junk")], day=DAY, run_ids=["r1"], expected_rows=1)
    assert not found.passed and found.undecodable == 1


def labelled(rec, label: bytes):
    partition, offset, key, headers, value = rec
    return (partition, offset, key, headers | {"clickstream-injected": label}, value)


def test_labelled_late_and_duplicate_messages_count_as_planned():
    # a's row 1 is sent late, after its row 2; b's row is sent twice, the copy labelled.
    records = [
        record(0, "a", 2), labelled(record(1, "a", 1), b"late"),
        record(0, "b", 1, partition=1), labelled(record(1, "b", 1, partition=1), b"duplicate"),
    ]
    found = verify_replay(records, day=DAY, run_ids=["r1"], expected_rows=4)
    assert found.passed, found
    assert (found.injected_late, found.injected_duplicates, found.duplicates, found.out_of_order_keys) == (1, 1, 0, 0)


def test_unlabelled_disorder_still_fails_beside_labelled_disorder():
    records = [
        record(0, "a", 2), record(1, "a", 1),  # out of order, no label
        record(0, "b", 1, partition=1), labelled(record(1, "b", 1, partition=1), b"duplicate"),
        record(2, "b", 1, partition=1),  # a second, unlabelled copy
    ]
    found = verify_replay(records, day=DAY, run_ids=["r1"], expected_rows=4)
    assert not found.passed and found.out_of_order_keys == 1 and found.duplicates == 1


def test_a_labelled_duplicate_of_a_row_never_sent_is_not_a_planned_copy():
    found = verify_replay([labelled(record(0, "b", 1), b"duplicate")], day=DAY, run_ids=["r1"], expected_rows=2)
    assert not found.passed and found.injected_duplicates == 0 and found.missing == 1
