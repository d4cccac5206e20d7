"""What a consumer finds of a replay, checked: every row once, each visitor's rows in order.

Pure: records come in as plain tuples, decoded with the same decoder ``clickstream-tail`` uses
(typed records through a schema registry's ``TypedDecoder``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

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

    @property
    def duplicates(self) -> int:
        return self.found - self.undecodable - self.distinct

    @property
    def missing(self) -> int:
        return max(self.expected - self.distinct, 0)

    @property
    def passed(self) -> bool:
        return self.found == self.distinct == self.expected and not self.out_of_order_keys


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
    and each key's rows in order of their original time."""
    runs = {run_id.encode() for run_id in run_ids}
    rows: Counter[tuple] = Counter()
    times_by_key: dict[bytes | None, list[float]] = {}
    found = undecodable = 0
    for _partition, _offset, key, headers, value in sorted(records, key=lambda r: (r[0], r[1])):
        if headers.get("source_day") != day.encode() or headers.get("dagster_run_id") not in runs:
            continue
        found += 1
        fields = decode_value(value, typed)
        if fields is None:
            undecodable += 1
            continue
        rows[tuple(fields[name] for name in ROW_FIELDS)] += 1
        times_by_key.setdefault(key, []).append(fields["original_timestamp"] or 0)
    out_of_order = sum(1 for times in times_by_key.values() if any(b < a for a, b in zip(times, times[1:])))
    return ReadBack(expected=expected_rows, found=found, distinct=len(rows), out_of_order_keys=out_of_order, undecodable=undecodable)
