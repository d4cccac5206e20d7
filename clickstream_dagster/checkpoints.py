"""Where a replay got to, as Kafka itself records it. Pure: no Dagster, no Kafka client.

Every commit of a replay writes a checkpoint record (the next row of the day to send) into a
small compacted topic, in the same Kafka transaction as the messages it covers, as Kafka
Connect's exactly-once sources do (KIP-618). After any crash the last committed checkpoint says
exactly which rows a read_committed consumer has: a resumed replay starts there, so every row
of the day arrives once.

The same record is the topic's lease: a replay whose heartbeat is fresh holds its topic, and
any other replay into that topic waits (or fails naming it) instead of interleaving with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum

DEFAULT_CHECKPOINT_TOPIC = "clickstream-replay-checkpoints"
TRANSACTIONAL_ID_PREFIX = "clickstream-replay-"


class ReplayStatus(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"  # failed or terminated, cleanly: resumable, and holds nothing


def transactional_id(topic: str) -> str:
    """One per topic: a new attempt's producer fences every earlier one writing to that topic."""
    return f"{TRANSACTIONAL_ID_PREFIX}{topic}"


@dataclass(frozen=True)
class Checkpoint:
    topic: str
    day: str
    replay_id: str  # the run that started the replay: re-executions and retries share it
    run_id: str  # the run (attempt) that wrote this record
    next_row: int  # the first row of the day not yet committed
    total: int  # rows in the replay (the day, or its limit)
    status: ReplayStatus
    heartbeat_ms: int  # the writer's wall clock at the write
    owner: str = ""  # host and pid of the writer, for people reading a lease conflict
    # Where the topic's partitions ended when the replay began, and every run that wrote
    # rows of it: what a read-back of the replay reads, and whose messages it counts.
    start_offsets: tuple[tuple[int, int], ...] = ()
    run_ids: tuple[str, ...] = ()
    # The attempts of run_id so far (step retries), and how long its replay delivered nothing
    # between a failed attempt's last delivery and the next attempt's start: a run's report
    # covers every attempt. progress_ms: the writer's wall clock when it last delivered rows.
    attempt: int = 1
    stall_ms: int = 0
    progress_ms: int = 0
    # Where the replay's schedule ends, for a replay that follows it without a gap (the live
    # feed's next day): wall clock epoch ms when its last message is due (set once sending
    # began) and when it was sent (finished only), and that message's event time. 0: unknown.
    last_due_ms: int = 0
    last_sent_ms: int = 0
    last_event_ms: int = 0

    @property
    def key(self) -> bytes:
        return checkpoint_key(self.topic, self.day)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, value: bytes) -> Checkpoint:
        fields = json.loads(value)
        return cls(
            **{
                **fields,
                "status": ReplayStatus(fields["status"]),
                "start_offsets": tuple((int(p), int(o)) for p, o in fields.get("start_offsets", ())),
                "run_ids": tuple(fields.get("run_ids", ())),
            }
        )

    def holds_topic(self, now_ms: int, lease_s: float) -> bool:
        """Whether a replay is (as far as anyone can tell) still writing to the topic."""
        return self.status == ReplayStatus.RUNNING and now_ms - self.heartbeat_ms < lease_s * 1000

    def describe(self, now_ms: int) -> str:
        age_s = max(now_ms - self.heartbeat_ms, 0) / 1000
        return (
            f"replay {self.replay_id[:8]} of {self.day} (run {self.run_id[:8]}, {self.owner or 'unknown host'}): "
            f"{self.status.value} at row {self.next_row}/{self.total}, last heard of {age_s:.0f} s ago"
        )


def checkpoint_key(topic: str, day: str) -> bytes:
    return f"{topic}/{day}".encode()


class TopicBusy(RuntimeError):
    """Another replay holds the topic; ``holder`` is its latest checkpoint."""

    def __init__(self, holder: Checkpoint, now_ms: int):
        self.holder = holder
        super().__init__(f"topic {holder.topic!r} is being written by {holder.describe(now_ms)}")


class UnfinishedReplay(RuntimeError):
    """The day's last replay into the topic did not finish, and the launch chose neither to
    resume nor to restart it: replaying from the first row would send its rows twice."""

    def __init__(self, unfinished: Checkpoint, now_ms: int):
        self.unfinished = unfinished
        super().__init__(
            f"the last replay of {unfinished.day} into {unfinished.topic!r} did not finish: "
            f"{unfinished.describe(now_ms)}, so its first {unfinished.next_row} rows are in the topic already. "
            "Launch with resume: true to send the rest (each row once), or with restart: true to replay "
            "the whole day again (those rows a second time); nothing was sent"
        )


@dataclass(frozen=True)
class ReplayPlan:
    start_row: int  # 0, or where the resumed replay continues
    resumed: Checkpoint | None  # the checkpoint it continues from


def plan_replay(
    checkpoints: Iterable[Checkpoint],
    *,
    topic: str,
    day: str,
    replay_id: str,
    resume: bool,
    now_ms: int,
    lease_s: float,
    restart: bool = False,
) -> ReplayPlan:
    """Where this replay starts, or ``TopicBusy`` if another live replay holds the topic.

    - The same replay (a re-execution or retry of the run that started it) always continues
      from its last checkpoint, taking over from any zombie of an earlier attempt.
    - A fresh launch after a finished replay of the day (or none) starts from the first row.
    - A fresh launch after an unfinished one: ``resume`` continues it, ``restart`` starts from
      the first row anyway; with neither, ``UnfinishedReplay``: no silent duplicates.
    """
    if resume and restart:
        raise ValueError("resume and restart exclude each other: choose one")
    mine = None
    for checkpoint in checkpoints:
        if checkpoint.topic != topic:
            continue
        if checkpoint.replay_id != replay_id and checkpoint.holds_topic(now_ms, lease_s):
            raise TopicBusy(checkpoint, now_ms)
        if checkpoint.day == day:
            mine = checkpoint
    if mine is None:
        return ReplayPlan(start_row=0, resumed=None)
    if mine.replay_id == replay_id or (resume and mine.status != ReplayStatus.FINISHED):
        return ReplayPlan(start_row=mine.next_row, resumed=mine)
    # (one that committed no row yet left nothing to send twice)
    if mine.status != ReplayStatus.FINISHED and mine.next_row > 0 and not restart:
        raise UnfinishedReplay(mine, now_ms)
    return ReplayPlan(start_row=0, resumed=None)


def previous_replay(checkpoints: Iterable[Checkpoint], topic: str, replay_id: str) -> Checkpoint | None:
    """The latest checkpoint of replay ``replay_id`` into ``topic`` (any day), if any."""
    return next((c for c in checkpoints if c.topic == topic and c.replay_id == replay_id), None)


def next_attempt(resumed: Checkpoint | None, run_id: str, now_ms: int) -> tuple[int, int]:
    """(this attempt's number within ``run_id``, the run's stall so far in ms) for an attempt that
    starts now from ``resumed``: counting on from an earlier attempt of the same run, the time since
    that one last delivered (its failure, the retry's wait and start) added to the stall. Another
    run (a re-execution, a resume) counts its own attempts."""
    if resumed is None or resumed.run_id != run_id:
        return 1, 0
    last_delivered_ms = resumed.progress_ms or resumed.heartbeat_ms
    return resumed.attempt + 1, resumed.stall_ms + max(now_ms - last_delivered_ms, 0)


def abandoned_reason(
    checkpoint: Checkpoint | None, run_id: str, *, now_ms: int, lease_s: float, run_quiet_s: float
) -> str | None:
    """Why a run its Dagster instance still shows as started no longer replays; None while it may.

    Judged from the day's latest checkpoint, which a live replay renews at every commit (at
    least every few seconds). ``run_quiet_s``: how long since the run last logged anything.

    - The run wrote it, still ``running``, and has not renewed it for ``lease_s``: the process
      is gone (a live replay that cannot commit fails itself within its delivery timeout).
    - The run wrote it as ``finished`` or ``stopped`` over ``lease_s`` ago, yet never ended: the
      step is done, the process that would have ended the run is gone.
    - A later attempt of the same replay wrote it, and the run has been silent for ``lease_s``:
      it was fenced, and a live fenced run fails itself within its delivery timeout.

    A run with no checkpoint of its own (waiting for the topic, or killed before it claimed
    it) cannot be told apart from a live one: None.
    """
    if checkpoint is None or run_id not in (checkpoint.run_id, *checkpoint.run_ids):
        return None
    age_s = max(now_ms - checkpoint.heartbeat_ms, 0) / 1000
    if checkpoint.run_id != run_id:
        if run_quiet_s < lease_s:
            return None
        return (
            f"a later attempt (run {checkpoint.run_id[:8]}) took its replay over, fencing it, "
            f"and this run has logged nothing for {run_quiet_s:.0f} s"
        )
    if age_s < lease_s:
        return None
    if checkpoint.status == ReplayStatus.RUNNING:
        return (
            f"its replay has committed nothing for {age_s:.0f} s, at row {checkpoint.next_row}/"
            f"{checkpoint.total} (a live replay commits every few seconds): the process running it "
            f"({checkpoint.owner or 'unknown host'}) is gone"
        )
    return (
        f"its replay {checkpoint.status.value} at row {checkpoint.next_row}/{checkpoint.total} "
        f"{age_s:.0f} s ago, yet the run never ended: the process running it "
        f"({checkpoint.owner or 'unknown host'}) is gone"
    )
