"""Node labels and job constraints: one rule for both (migration 0016's label_set_valid).

A label set maps at most :data:`MAX_LABELS` keys to string values. Keys match
``[A-Za-z0-9][A-Za-z0-9._-]{0,62}``, values ``[A-Za-z0-9._-]{0,63}``: no spaces, commas or
``=`` (so ``SCHEDULER_NODE_LABELS=gpu=none,zone=a`` and ``--constraint zone=a`` parse without
quoting), nothing a shell, a log line or a terminal would read as more than text.
"""

from __future__ import annotations

import re
from typing import Any

MAX_LABELS = 32
KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
VALUE = re.compile(r"[A-Za-z0-9._-]{0,63}")


class LabelError(ValueError):
    """A label or a label set breaks the rule; the message says which and how."""


def check_pair(key: str, value: str) -> None:
    if not KEY.fullmatch(key):
        raise LabelError(f"label key {key[:70]!r} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,62}}")
    if not VALUE.fullmatch(value):
        raise LabelError(f"label {key}'s value {value[:70]!r} must match [A-Za-z0-9._-]{{0,63}}")


def check_set(labels: Any) -> dict[str, str]:
    """``labels`` as a checked dict of strings (a JSON object from a client)."""
    if not isinstance(labels, dict):
        raise LabelError("expected an object of label keys to string values")
    if len(labels) > MAX_LABELS:
        raise LabelError(f"at most {MAX_LABELS} labels: got {len(labels)}")
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise LabelError(f"label {str(key)[:70]!r} must map to a string")
        check_pair(key, value)
    return dict(labels)


def parse_pair(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (a CLI flag's argument)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise LabelError(f"{text[:70]!r}: expected KEY=VALUE")
    check_pair(key, value)
    return key, value


def parse_list(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` (SCHEDULER_NODE_LABELS); empty text is no labels; a key given twice
    is an error (which one was meant?)."""
    labels: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        key, value = parse_pair(item)
        if key in labels:
            raise LabelError(f"label {key!r} given twice")
        labels[key] = value
    return check_set(labels)
