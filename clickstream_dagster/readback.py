"""What a consumer finds of a replay, checked: every row once, each visitor's rows in order.

Pure: records come in as plain tuples, decoded with the same decoder ``clickstream-tail`` uses
(typed records through a schema registry's ``TypedDecoder``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from clickstream_dagster.injection import DUPLICATE, INJECTED_HEADER, LATE
from clickstream_dagster.tail import decode_value
from clickstream_dagster.typed_encoding import TypedDecoder

ROW_FIELDS = ("userId", "original_timestamp", "ip", "productId", "userAgent")


@dataclass(frozen=True)
class ReadBack:
    expected: int  # rows the replay sent, from its first row to its last
    found: int  # messages of the replay a read_committed consumer reads
    distinct: int
    out_of_order_keys: int  # visitors whose page views arrive out of their original order
    undecodable: int
    # Planned disorder (``clickstream-injected`` header): duplicates count as planned messages,
    # late rows as rows, and neither as out of order.
    injected_duplicates: int = 0
    injected_late: int = 0

    @property
    def duplicates(self) -> int:
        """Unplanned ones: copies of a row beyond the labelled duplicates."""
        return self.found - self.undecodable - self.distinct - self.injected_duplicates

    @property
    def missing(self) -> int:
        return max(self.expected - self.distinct, 0)

    @property
    def passed(self) -> bool:
        return (
            self.found == self.distinct + self.injected_duplicates == self.expected
            and not self.out_of_order_keys
        )


def verify_replay(
    records: Iterable[tuple[int, int, bytes | None, dict[str, bytes], bytes | None]],
    *,
    day: str,
    run_ids: Iterable[str],
    expected_rows: int,
    typed: TypedDecoder | None = None,
) -> ReadBack:
    """Check the ``(partition, offset, key, headers, value)`` records of a topic: those of the
    day written by ``run_ids`` (the runs of one replay) hold ``expected_rows`` rows, each once,
    and each key's rows in order of their original time (but for the labelled late and duplicate
    ones: a labelled duplicate must repeat a row found, and counts as a planned message)."""
    runs = {run_id.encode() for run_id in run_ids}
    rows: Counter[tuple] = Counter()
    times_by_key: dict[bytes | None, list[float]] = {}
    found = undecodable = 0
    injected: Counter[bytes] = Counter()
    duplicated: list[tuple] = []
    for _partition, _offset, key, headers, value in sorted(records, key=lambda r: (r[0], r[1])):
        if headers.get("source_day") != day.encode() or headers.get("dagster_run_id") not in runs:
            continue
        found += 1
        fields = decode_value(value, typed)
        if fields is None:
            undecodable += 1
            continue
        row = tuple(fields[name] for name in ROW_FIELDS)
        label = headers.get(INJECTED_HEADER)
        if label == DUPLICATE:
            duplicated.append(row)
            continue
        rows[row] += 1
        if label == LATE:
            injected[LATE] += 1
            continue
        times_by_key.setdefault(key, []).append(fields["original_timestamp"] or 0)
    # A labelled duplicate of no row found is a row of its own (and then fails the count).
    for row in duplicated:
        if row in rows:
            injected[DUPLICATE] += 1
        else:
            rows[row] += 1
    out_of_order = sum(1 for times in times_by_key.values() if any(b < a for a, b in zip(times, times[1:])))
    return ReadBack(
        expected=expected_rows, found=found, distinct=len(rows), out_of_order_keys=out_of_order,
        undecodable=undecodable, injected_duplicates=injected[DUPLICATE], injected_late=injected[LATE],
    )
