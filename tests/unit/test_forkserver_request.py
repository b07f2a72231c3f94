"""The fork server's request encoding (pure)."""

from __future__ import annotations

import sys

import pytest

from scheduler.errors import LaunchError
from scheduler.runtime.forkserver import REQUEST_MAX, encode_request


def test_request_encoding_counts_argv_so_empty_strings_survive() -> None:
    data = encode_request(["/m", "", "x"], {"A": "1", "B": ""})
    assert data[4:] == b"3\0/m\0\0x\0A=1\0B=\0"
    assert int.from_bytes(data[:4], sys.byteorder) == len(data[4:])


def test_oversized_request_is_refused() -> None:
    with pytest.raises(LaunchError, match="exceed"):
        encode_request(["/m"], {"BIG": "x" * REQUEST_MAX})
