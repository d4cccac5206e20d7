"""Labelled disorder: the plan of late and duplicated page views, and how it is sent."""

import numpy as np
import pytest

from clickstream_dagster.injection import (
    DUPLICATE,
    INJECTED_HEADER,
    LATE,
    DuplicatesAsSent,
    InjectionError,
    LabelledPublisher,
    plan_injection,
    recover_sent,
)

OFFSETS = np.cumsum(np.random.default_rng(3).uniform(0.0, 4.0, 997))


@pytest.mark.parametrize(("late", "dup"), [(0.1, 0.05), (0.333, 0.0), (0.0, 0.5), (0.5, 0.5), (0.0, 0.0)])
def test_shares_are_within_one_row_of_exact_and_every_row_is_planned(late, dup):
    plan = plan_injection(OFFSETS, late_share=late, late_by_s=30.0, duplicate_share=dup, seed=1)
    n = len(OFFSETS)
    assert abs(plan.late - late * n) <= 1 and abs(plan.duplicates - dup * n) <= 1
    assert len(plan) == n + plan.duplicates
    assert sorted(set(plan.rows.tolist())) == list(range(n))
    assert np.all(np.diff(plan.times_s) >= 0)
    late_rows = {r for r, label in zip(plan.rows.tolist(), plan.labels) if label == LATE}
    dup_rows = {r for r, label in zip(plan.rows.tolist(), plan.labels) if label == DUPLICATE}
    assert not late_rows & dup_rows


def test_the_plan_is_deterministic_from_the_seed():
    a = plan_injection(OFFSETS, late_share=0.1, duplicate_share=0.1, seed=42)
    b = plan_injection(OFFSETS, late_share=0.1, duplicate_share=0.1, seed=42)
    c = plan_injection(OFFSETS, late_share=0.1, duplicate_share=0.1, seed=43)
    assert a.labels == b.labels and np.array_equal(a.rows, b.rows) and a.original_of == b.original_of
    assert not np.array_equal(a.rows, c.rows)


def test_late_rows_go_after_later_events_and_duplicates_repeat_their_original_after_it():
    plan = plan_injection(OFFSETS, late_share=0.1, late_by_s=30.0, duplicate_share=0.1, seed=5)
    position = {}
    for i, (row, label) in enumerate(zip(plan.rows.tolist(), plan.labels)):
        position[(row, label)] = i
    overtaken = 0
    for (row, label), i in position.items():
        if label == LATE:
            due = OFFSETS[row]
            # every row due within late_by_s after it is sent before it
            later = [r for r in range(row + 1, len(OFFSETS)) if OFFSETS[r] < due + 30.0]
            assert all(position.get((r, None), position.get((r, LATE))) < i for r in later if (r, LATE) not in position)
            overtaken += len(later)
            assert plan.times_s[i] == pytest.approx(due + 30.0)
        if label == DUPLICATE:
            original = plan.original_of[i]
            assert original < i and plan.rows[original] == row and plan.labels[original] is None
    assert overtaken > 0


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"late_share": 1.5}, "late_share=1.5"),
        ({"duplicate_share": -0.1}, "duplicate_share=-0.1"),
        ({"late_share": 0.1, "late_by_s": 0}, "late_by_s=0"),
        ({"late_share": 0.6, "duplicate_share": 0.6}, "add up to at most 1"),
    ],
)
def test_bad_settings_are_refused_naming_them(settings, named):
    with pytest.raises(InjectionError, match=named):
        plan_injection(OFFSETS, seed=0, **settings)


class Encoded:
    """The slice of EncodedMessages the send loop uses: the value holds the send time."""

    def __init__(self, keys):
        self.keys = keys

    def __len__(self):
        return len(self.keys)

    def value(self, i, replay_time_ns):
        return self.keys[i] + b":" + str(replay_time_ns).encode()


def test_a_duplicate_is_sent_with_its_originals_bytes_also_after_a_resume():
    plan = plan_injection(np.arange(10.0), duplicate_share=0.3, seed=9)
    keys = [f"k{r % 3}".encode() for r in plan.rows.tolist()]
    messages = DuplicatesAsSent(Encoded(keys), plan.original_of)
    sent = [messages.value(i, 1000 + i) for i in range(len(plan))]
    for dup, original in plan.original_of.items():
        assert sent[dup] == sent[original]
    # A resume at a row between an original and its duplicate finds the original's bytes in the topic.
    dup, original = max(plan.original_of.items())
    start = original + 1
    records = [(keys[i], plan.labels[i], sent[i]) for i in range(start)]
    recovered = recover_sent(plan, keys, start, records)
    assert recovered == {o: sent[o] for d, o in plan.original_of.items() if d >= start > o}
    resumed = DuplicatesAsSent(Encoded(keys), plan.original_of, recovered)
    assert resumed.value(dup, 99_999) == sent[original] and resumed.reencoded == 0


class Inner:
    transactional = True

    def __init__(self):
        self.headers = [("source_day", b"2012-03-01")]
        self.sent = []

    def send(self, key, value, timestamp_ms):
        self.sent.append((key, list(self.headers)))


def test_each_injected_message_carries_its_label_from_where_the_attempt_starts():
    labels = [None, LATE, None, DUPLICATE]
    inner = Inner()
    publisher = LabelledPublisher(inner, labels, start_row=1)
    for key in (b"b", b"c", b"d"):
        publisher.send(key, b"v", None)
    assert [dict(h).get(INJECTED_HEADER) for _, h in inner.sent] == [LATE, None, DUPLICATE]
    assert all(dict(h)["source_day"] == b"2012-03-01" for _, h in inner.sent)
    assert not hasattr(publisher, "send_batch")
