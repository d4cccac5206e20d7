"""Labelled disorder: a day's planned stream with late and duplicated page views. Pure; no Dagster.

The plan is built before the send loop, as a list of messages placed on the day's own clock
(event time, the recorded seconds): row ``r`` at its time, a *late* row ``late_by_s`` after it
(so after the events of the next ``late_by_s``: a watermark has passed it by that much), a
*duplicated* row once at its time and again ``DUPLICATE_AFTER_S`` later, key and value byte
for byte the same. Pacing then turns the placements into send offsets as it does for the rows
(at original pacing and speed 1, a late row is sent ``late_by_s`` after its due time). The
plan does not depend on the pacing, and the send loop sends it exactly once (its checkpoints
count planned messages): a resume, at any pacing, continues the same plan. Which rows are late or
duplicated is drawn from ``seed`` alone: a rerun injects the same rows. Each injected message
carries the header ``clickstream-injected: late`` or ``duplicate``; the others carry none.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

INJECTED_HEADER = "clickstream-injected"
LATE, DUPLICATE = b"late", b"duplicate"
# A duplicate follows its original this long after (event time): "a few seconds later".
DUPLICATE_AFTER_S = 2.0


class InjectionError(ValueError):
    """A bad share or delay, named."""


def default_seed(day: str, topic: str) -> int:
    """The seed when none is given: the same for every replay of this day into this topic."""
    return int.from_bytes(hashlib.sha256(f"{day}\0{topic}".encode()).digest()[:8], "big") >> 1


def check_settings(late_share: float, late_by_s: float, duplicate_share: float) -> list[str]:
    """The problems with these settings, each naming its setting (empty: fine)."""
    problems = []
    for name, share in (("late_share", late_share), ("duplicate_share", duplicate_share)):
        if not (math.isfinite(share) and 0.0 <= share <= 1.0):
            problems.append(f"{name}={share!r}: expected a share between 0 and 1")
    if not (math.isfinite(late_by_s) and late_by_s > 0):
        problems.append(f"late_by_s={late_by_s!r}: expected a number of seconds > 0")
    if not problems and late_share + duplicate_share > 1.0:
        problems.append(
            f"late_share={late_share} + duplicate_share={duplicate_share}: a row is late or duplicated, "
            "not both: the shares add up to at most 1"
        )
    return problems


@dataclass(frozen=True)
class InjectionPlan:
    """The planned stream: message ``i`` is row ``rows[i]`` of the day, placed at ``times_s[i]``."""

    rows: np.ndarray  # int64, source row of each planned message
    times_s: np.ndarray  # float64, non-decreasing: where on the day's clock it is sent
    labels: list[bytes | None]  # LATE, DUPLICATE or None, per planned message
    original_of: dict[int, int]  # planned index of a duplicate -> planned index of its original
    seed: int

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def late(self) -> int:
        return self.labels.count(LATE)

    @property
    def duplicates(self) -> int:
        return self.labels.count(DUPLICATE)


def plan_injection(
    times_s: Sequence[float] | np.ndarray,
    *,
    late_share: float = 0.0,
    late_by_s: float = 60.0,
    duplicate_share: float = 0.0,
    seed: int,
    duplicate_after_s: float = DUPLICATE_AFTER_S,
) -> InjectionPlan:
    """Choose ``round(late_share * n)`` late rows and ``round(duplicate_share * n)`` duplicated
    ones (disjoint) of the ``n`` rows at ``times_s`` (their event times, in send order), and order
    the planned messages by placement (on a tie: the rows' own order, originals first)."""
    if problems := check_settings(late_share, late_by_s, duplicate_share):
        raise InjectionError("; ".join(problems))
    # Never before an earlier row: the rows keep their send order whatever their times.
    due = np.maximum.accumulate(np.asarray(times_s, dtype=np.float64)) if len(times_s) else np.zeros(0)
    n = len(due)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(n)
    n_late, n_dup = round(late_share * n), round(duplicate_share * n)
    late = np.sort(chosen[:n_late])
    duplicated = np.sort(chosen[n_late : n_late + n_dup])

    rows = np.concatenate([np.arange(n), duplicated])
    times = np.concatenate([due, due[duplicated] + duplicate_after_s])
    kinds = np.concatenate([np.zeros(n, dtype=np.int8), np.full(len(duplicated), 2, dtype=np.int8)])
    times[late] += late_by_s
    kinds[late] = 1
    order = np.lexsort((kinds, rows, times))  # by time, then row, then original first
    labels_by_kind = {0: None, 1: LATE, 2: DUPLICATE}
    labels = [labels_by_kind[k] for k in kinds[order].tolist()]
    planned_rows = rows[order]
    first_at: dict[int, int] = {}
    original_of: dict[int, int] = {}
    for i, (row, label) in enumerate(zip(planned_rows.tolist(), labels)):
        if label == DUPLICATE:
            original_of[i] = first_at[row]
        else:
            first_at[row] = i
    return InjectionPlan(rows=planned_rows, times_s=times[order], labels=labels, original_of=original_of, seed=seed)


class DuplicatesAsSent:
    """The planned messages (an ``EncodedMessages`` of the planned rows) whose duplicates are
    the bytes their original was sent with: values hold the send time, so a duplicate is
    re-sent, not re-encoded. ``sent`` may be seeded with originals an earlier attempt sent."""

    def __init__(self, messages, original_of: dict[int, int], sent: dict[int, bytes] | None = None):
        self._messages, self._original_of = messages, original_of
        self._needed = set(original_of.values())
        self.sent: dict[int, bytes] = dict(sent or {})
        self.reencoded = 0  # duplicates whose original's bytes were not known (see ``value``)
        self.keys = messages.keys

    def __len__(self) -> int:
        return len(self._messages)

    def value(self, i: int, replay_time_ns: int) -> bytes:
        original = self._original_of.get(i)
        if original is not None:
            if original in self.sent:
                return self.sent[original]
            self.reencoded += 1  # its original was sent by an attempt whose bytes were not found
        value = self._messages.value(i, replay_time_ns)
        if i in self._needed:
            self.sent[i] = value
        return value

    def values(self, start: int, stop: int, replay_time_ns: int) -> list[bytes]:
        return [self.value(i, replay_time_ns) for i in range(start, stop)]


def originals_to_recover(plan: InjectionPlan, start_row: int) -> set[int]:
    """Originals sent before ``start_row`` (by an earlier attempt) whose duplicate is still to send."""
    return {o for d, o in plan.original_of.items() if d >= start_row and o < start_row}


def recover_sent(
    plan: InjectionPlan,
    keys: Sequence[bytes],
    start_row: int,
    records: Iterable[tuple[bytes | None, bytes | None, bytes | None]],
) -> dict[int, bytes]:
    """The bytes of the originals in ``originals_to_recover`` as an earlier attempt sent them,
    from that replay's committed records ``(key, injected label, value)`` in offset order.

    A key lives on one partition and its messages were sent in plan order, so the k-th
    not-duplicate record of a key is the k-th not-duplicate planned message of that key."""
    wanted = originals_to_recover(plan, start_row)
    if not wanted:
        return {}
    planned_by_key: dict[bytes, list[int]] = {}
    for i in range(start_row):
        if plan.labels[i] != DUPLICATE:
            planned_by_key.setdefault(keys[i], []).append(i)
    seen: dict[bytes | None, int] = {}
    found: dict[int, bytes] = {}
    for key, label, value in records:
        if label == DUPLICATE or key not in planned_by_key:
            continue
        k = seen.get(key, 0)
        seen[key] = k + 1
        if k < len(planned_by_key[key]) and planned_by_key[key][k] in wanted:
            found[planned_by_key[key][k]] = value
    return found


class LabelledPublisher:
    """A publisher that adds the ``clickstream-injected`` header to the planned messages that
    carry a label. The send loop sends planned messages ``start_row..`` one ``send`` each, in
    order; so the n-th send is message ``start_row + n``. Batch sends are not offered (the loop
    then sends one at a time), so no message goes out without its label."""

    def __init__(self, inner, labels: Sequence[bytes | None], start_row: int):
        self._inner, self._labels, self._next = inner, labels, start_row
        self._base = list(inner.headers)
        self.transactional = inner.transactional

    def send(self, key: bytes, value: bytes, timestamp_ms: int | None):
        label = self._labels[self._next]
        self._next += 1
        # Both clients copy the headers into the record as it is handed over.
        self._inner.headers = [*self._base, (INJECTED_HEADER, label)] if label else self._base
        return self._inner.send(key, value, timestamp_ms)

    def commit(self, checkpoint_key: bytes, checkpoint_value: bytes, timeout_s: float) -> None:
        self._inner.commit(checkpoint_key, checkpoint_value, timeout_s)

    def resolve_commit(self, timeout_s: float) -> bool:
        return self._inner.resolve_commit(timeout_s)

    def flush(self, timeout_s: float) -> None:
        self._inner.flush(timeout_s)

    def abort(self, timeout_s: float) -> None:
        self._inner.abort(timeout_s)

    def close(self, *args, **kwargs) -> None:
        self._inner.close(*args, **kwargs)
