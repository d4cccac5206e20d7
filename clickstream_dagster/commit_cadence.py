"""When a replay commits: the cadence policy of the replay loop (``replay.run_replay``).

A commit makes what was sent readable (exactly_once) or records how far the acknowledged
prefix reached (at_least_once), and renews the replay's claim on its topic. Commits cost
time, so they go where they are cheap: into the waits of a paced schedule when a wait can
hold one, otherwise at a steady interval that stretches when commits are slow.
"""

from __future__ import annotations

import statistics
from collections import deque

# How many recent commits say what a commit typically takes.
RECENT_COMMITS = 15


class CommitCadence:
    """Whether a commit is due, from how long ago the last one was and what commits take.

    ``commit_every_s``: a commit at least this often while messages flow; ``commit_share``: but
    commits take at most about this share of the time while messages flow (slow commits come
    less often instead); ``heartbeat_s``: a commit at least this often however idle."""

    def __init__(self, commit_every_s: float, commit_share: float, heartbeat_s: float):
        self.commit_every_s, self.commit_share, self.heartbeat_s = commit_every_s, commit_share, heartbeat_s
        # What a commit takes, as the median of the recent ones: a wait too short to hold one is
        # not spent committing. A median, so one slow commit does not push every message after it
        # back to the 100 ms cadence (as a running mean did, for the next half second).
        # None measured yet (0): try one in the first wait.
        self._recent_s: deque[float] = deque(maxlen=RECENT_COMMITS)
        self.typical_s = 0.0
        # How old the oldest unreadable message gets while messages flow.
        self.interval_s = commit_every_s

    def took(self, seconds: float) -> None:
        """A commit took ``seconds``: the typical commit and the interval follow."""
        self._recent_s.append(seconds)
        self.typical_s = statistics.median(self._recent_s)
        self.interval_s = max(self.commit_every_s, self.typical_s * (1 - self.commit_share) / self.commit_share)

    def fits(self, wait_s: float) -> bool:
        """Whether a wait this long can hold a commit and still end on time."""
        return wait_s > self.typical_s * 1.5

    def due_for_readability(self, since_commit_s: float, unreadable_for_s: float | None, waiting: bool) -> bool:
        """Exactly once: before a wait, make what was sent readable at once; while sending, once
        the oldest unreadable message (``unreadable_for_s`` old; None: there is none) is an
        interval old; and a heartbeat at least every ``heartbeat_s``."""
        if unreadable_for_s is not None and (waiting or unreadable_for_s >= self.interval_s):
            return True
        return since_commit_s >= self.heartbeat_s

    def due_for_progress(self, since_commit_s: float, advanced: bool) -> bool:
        """At least once: record the acknowledged prefix every ``commit_every_s`` while it
        ``advanced``, and a heartbeat at least every ``heartbeat_s``."""
        return (advanced and since_commit_s >= self.commit_every_s) or since_commit_s >= self.heartbeat_s
