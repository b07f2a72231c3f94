"""The admin token of a first run: ``scheduler serve`` with the embedded database and no
``admin_token`` configured makes one, keeps it in ``<state>/admin-token`` (mode 0600, the same
one at every start) and says where it is, so the HTTP API and the status page can be tried at
once. A configured token (SCHEDULER_ADMIN_TOKEN, --config) is never replaced, and with an
external database nothing is made: production chooses its own token."""

from __future__ import annotations

import dataclasses
import os
import secrets

from scheduler.config import Settings
from scheduler.errors import ConfigError

TOKEN_FILE = "admin-token"  # noqa: S105 (a file name, not a secret)


def with_admin_token(settings: Settings) -> tuple[Settings, str | None]:
    """``settings`` with the first-run admin token when one applies, and the line to print."""
    if settings.http.admin_token or settings.db.url:
        return settings, None
    path = settings.paths.state / TOKEN_FILE
    # Made before the embedded Postgres, whose server runs as another user and must traverse
    # it (as embedded.py makes the parents it creates): others may pass, not list.
    settings.paths.state.mkdir(parents=True, exist_ok=True, mode=0o711)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        token = _read(path)
    except OSError as exc:
        raise ConfigError(f"cannot write the admin token to {path}: {exc.strerror}") from exc
    else:
        token = "sch_admin_" + secrets.token_urlsafe(32)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    note = (
        f"scheduler: admin token (for the API and the status page) in {path}:"
        f" export TOKEN=$(cat {path})"
    )
    return dataclasses.replace(
        settings, http=dataclasses.replace(settings.http, admin_token=token)
    ), note


def _read(path: os.PathLike[str]) -> str:
    # O_NOFOLLOW: a symlink planted in the state directory must not point us elsewhere.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"cannot read the admin token in {path}: {exc.strerror}") from exc
    with os.fdopen(fd) as f:
        if os.fstat(f.fileno()).st_mode & 0o077:
            raise ConfigError(f"{path} is readable by others: chmod 600 it or remove it")
        token = f.read().strip()
    if len(token) < 32:
        raise ConfigError(f"{path} holds no usable token (32+ characters): remove it")
    return token
