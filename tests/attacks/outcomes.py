"""What each attack of the suite did, kept for the table printed at the end of the run.

An attack test states the attack in a few words and what the system did about it once the
assertions that prove it have passed:

    record("8 slow request bodies", "lease kept, claims went on, /healthz in 12 ms")

Only attacks whose test reached :func:`record` are in the table, so a row is a claim the test
checked, never a hope.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    attack: str
    outcome: str


RESULTS: list[Outcome] = []


def record(attack: str, outcome: str) -> None:
    """Keep one row of the attack table (call it after the test's assertions)."""
    RESULTS.append(Outcome(attack, outcome))


def table(rows: list[Outcome]) -> list[str]:
    """The rows as an aligned two-column text table."""
    width = max(len("attack"), *(len(r.attack) for r in rows))
    lines = [f"{'attack':<{width}}  outcome", f"{'-' * width}  -------"]
    lines += [f"{r.attack:<{width}}  {r.outcome}" for r in rows]
    return lines
