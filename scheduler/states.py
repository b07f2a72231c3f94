"""A job's states, defined once (no imports beyond typing: the CLI reads it at start-up).

The database's CHECKs on scheduler.jobs (job_state_valid, job_desired_state_valid) carry the
same lists; tests/integration/test_facts.py compares them in a live catalogue.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

JobState = Literal[
    "queued", "running", "frozen", "succeeded", "failed", "cancelled", "timed_out", "lost"
]
DesiredState = Literal["running", "frozen", "cancelled"]
FinalState = Literal["succeeded", "failed", "cancelled", "timed_out", "lost"]

JOB_STATES: Final[tuple[JobState, ...]] = get_args(JobState)
DESIRED_STATES: Final[tuple[DesiredState, ...]] = get_args(DesiredState)
# States a job never leaves.
FINAL_STATES: Final[frozenset[str]] = frozenset(get_args(FinalState))
