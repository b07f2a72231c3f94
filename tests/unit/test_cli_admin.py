"""The first-run admin token of `scheduler serve` with the embedded database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scheduler.cli.admin_token import TOKEN_FILE, with_admin_token
from scheduler.config import make_settings
from scheduler.errors import ConfigError


def test_made_once_kept_private_and_reused(tmp_path: Path) -> None:
    settings = make_settings(state_dir=tmp_path)
    first, note = with_admin_token(settings)
    path = tmp_path / TOKEN_FILE
    assert first.http.admin_token and len(first.http.admin_token) >= 32
    assert note is not None and str(path) in note and first.http.admin_token not in note
    assert path.stat().st_mode & 0o777 == 0o600
    again, _ = with_admin_token(settings)
    assert again.http.admin_token == first.http.admin_token


def test_a_configured_token_or_an_external_database_makes_none(tmp_path: Path) -> None:
    chosen, note = with_admin_token(make_settings(state_dir=tmp_path, admin_token="mine-" * 8))
    assert chosen.http.admin_token == "mine-" * 8 and note is None
    external, note = with_admin_token(
        make_settings(state_dir=tmp_path, database_url="postgresql://x")
    )
    assert external.http.admin_token is None and note is None
    assert not (tmp_path / TOKEN_FILE).exists()


def test_a_readable_or_planted_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / TOKEN_FILE
    path.write_text("x" * 40)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        with_admin_token(make_settings(state_dir=tmp_path))
    path.unlink()
    target = tmp_path / "elsewhere"
    target.write_text("y" * 40)
    target.chmod(0o600)
    os.symlink(target, path)
    with pytest.raises(ConfigError, match="cannot read"):
        with_admin_token(make_settings(state_dir=tmp_path))
