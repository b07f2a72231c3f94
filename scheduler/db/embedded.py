"""An embedded Postgres server kept in the state directory.

When ``SCHEDULER_DATABASE_URL`` is not set, the agent runs its own Postgres: one cluster per
state directory, reached only over a unix socket. Layout under ``base_dir`` (by default
``<state_dir>/postgres``)::

    base_dir/            mode 0700, owned by the OS user the server runs as
      data/              the cluster (PGDATA); settings we manage are in data/scheduler.conf
      run/               the unix socket .s.PGSQL.<port> (mode 0700), no TCP listener
      postgres.log       the server's log (stderr of the postmaster)
      .lock              flock held while a process sets up or starts the server

Authentication is ``trust`` over the socket only; the socket (and ``base_dir``) are mode 0700,
so only the server's OS user and root can connect. The database role is always ``postgres``.

Root: Postgres refuses to run as root, so when the effective uid is 0 the server runs as the
OS user ``postgres`` if it exists, else as the system user ``scheduler-pg``, which is created
with ``useradd --system`` on first use. ``base_dir`` is chowned to that user. That user must be
able to traverse every parent of ``base_dir`` (and of the Postgres binaries): missing parents we
create are made mode 0711 (others may traverse, not list), but existing parents are never
loosened; if one blocks (say a 0700 ``/root`` or ``/tmp/pytest-of-root``) :meth:`start` raises
an :class:`EmbeddedPostgresError` naming the directory and the fix. Non-root: the server runs
as the current user.

Binaries are found by :func:`find_binaries`; ``pip install 'scheduler[embedded]'`` (pgserver)
supplies them on machines without a system Postgres.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import anyio
import anyio.to_thread
import asyncpg

from scheduler.errors import EmbeddedPostgresError


class _Log:
    """structlog's logger, imported on first use: every CLI command computes the embedded
    server's URL from this module, and importing structlog (with rich, when installed) would
    double `scheduler jobs`' start-up (bench/cli_startup.py)."""

    def __getattr__(self, name: str) -> Any:
        import structlog  # noqa: PLC0415

        return getattr(structlog.get_logger(__name__), name)


log = _Log()

__all__ = [
    "FALLBACK_USER",
    "EmbeddedPostgres",
    "PostgresBinaries",
    "find_binaries",
    "pgserver_binaries",
]

#: The system user created to run the server when root starts it and ``postgres`` is absent.
FALLBACK_USER = "scheduler-pg"
#: The database role the cluster is created with.
SUPERUSER = "postgres"

_REQUIRED = ("initdb", "pg_ctl", "postgres")
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*)")
_INSTALL_HINT = (
    "install PostgreSQL (Debian/Ubuntu: apt-get install postgresql; Fedora: dnf install "
    "postgresql-server), or install the bundled binaries with pip install 'scheduler[embedded]', "
    "or point SCHEDULER_PG_BINDIR at a directory holding initdb, pg_ctl and postgres"
)


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class PostgresBinaries:
    """A directory holding ``initdb``, ``pg_ctl`` and ``postgres`` of one Postgres version."""

    bindir: Path
    version: str  # e.g. "15.18"
    source: str  # "system" | "pgserver" | "env"

    @property
    def major(self) -> int:
        """The major version, e.g. 15: a data directory only runs under its own major."""
        return int(self.version.split(".", 1)[0])

    def tool(self, name: str) -> str:
        """The absolute path of one program of this installation."""
        return str(self.bindir / name)


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in _REQUIRED)


def _version(bindir: Path) -> str:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedPostgresError(
            f"{bindir / 'postgres'} --version failed: {exc}; {_INSTALL_HINT}"
        ) from exc
    match = _VERSION.search(out)
    if match is None:
        raise EmbeddedPostgresError(
            f"could not read the version from {bindir / 'postgres'} --version: {out.strip()!r}"
        )
    return match.group(1)


def _binaries(bindir: Path, source: str) -> PostgresBinaries:
    return PostgresBinaries(bindir=bindir, version=_version(bindir), source=source)


def _pgserver_bindir() -> Path | None:
    # find_spec locates the package without importing it (importing pgserver has side
    # effects: it computes a runtime directory and may warn about XDG_RUNTIME_DIR).
    try:
        spec = importlib.util.find_spec("pgserver")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


def pgserver_binaries() -> PostgresBinaries:
    """The Postgres binaries bundled with the ``pgserver`` package (``scheduler[embedded]``)."""
    bindir = _pgserver_bindir()
    if bindir is None:
        raise EmbeddedPostgresError(
            "the pgserver package is not installed: pip install 'scheduler[embedded]'"
        )
    if not _has_server(bindir):
        raise EmbeddedPostgresError(
            f"the pgserver package has no usable binaries in {bindir}; reinstall it with "
            "pip install --force-reinstall pgserver"
        )
    return _binaries(bindir, "pgserver")


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


def _debian_bindirs() -> list[Path]:
    root = Path("/usr/lib/postgresql")
    try:
        entries = [p for p in root.iterdir() if re.fullmatch(r"\d+(\.\d+)?", p.name)]
    except OSError:
        return []
    entries.sort(key=lambda p: tuple(int(x) for x in p.name.split(".")), reverse=True)
    return [p / "bin" for p in entries]


def find_binaries() -> PostgresBinaries:
    """Find a Postgres server installation.

    In order: ``$SCHEDULER_PG_BINDIR`` (an error if it lacks the programs), ``pg_config
    --bindir`` if that holds a server (Debian's pg_config comes with libpq-dev and may not),
    the highest ``/usr/lib/postgresql/<version>/bin``, ``initdb`` on ``PATH`` (symlinks
    followed), and finally the binaries bundled with the ``pgserver`` package.
    """
    env = os.environ.get("SCHEDULER_PG_BINDIR")
    if env:
        bindir = Path(env)
        if not _has_server(bindir):
            raise EmbeddedPostgresError(
                f"SCHEDULER_PG_BINDIR={env} does not hold executable "
                f"{', '.join(_REQUIRED)}; point it at a PostgreSQL bin directory "
                "(e.g. /usr/lib/postgresql/15/bin) or unset it"
            )
        return _binaries(bindir, "env")

    candidates: list[Path] = []
    if (configured := _pg_config_bindir()) is not None:
        candidates.append(configured)
    candidates.extend(_debian_bindirs())
    if (initdb := shutil.which("initdb")) is not None:
        candidates.append(Path(initdb).resolve().parent)
    for candidate in candidates:
        if _has_server(candidate):
            return _binaries(candidate, "system")

    bundled = _pgserver_bindir()
    if bundled is not None and _has_server(bundled):
        return _binaries(bundled, "pgserver")
    raise EmbeddedPostgresError(
        "no PostgreSQL server binaries found (looked at pg_config --bindir, "
        "/usr/lib/postgresql/*/bin, initdb on PATH and the pgserver package); to run the "
        f"embedded database, {_INSTALL_HINT}; or set SCHEDULER_DATABASE_URL to use an existing "
        "server"
    )


# --------------------------------------------------------------------------- OS user


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged OS user the server runs as when we are root."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def of(cls, entry: pwd.struct_passwd) -> _RunAs:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)

    def can_traverse(self, st: os.stat_result) -> bool:
        """Whether the mode bits let this user search a directory (ACLs not considered)."""
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid in self.groups:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)


async def _unprivileged_user() -> _RunAs:
    with contextlib.suppress(KeyError):
        return _RunAs.of(pwd.getpwnam("postgres"))
    with contextlib.suppress(KeyError):
        return _RunAs.of(pwd.getpwnam(FALLBACK_USER))
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    command = [
        useradd,
        "--system",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        "--user-group",
        FALLBACK_USER,
    ]
    try:
        result = await anyio.run_process(command, check=False)
    except OSError as exc:
        raise EmbeddedPostgresError(
            f"Postgres refuses to run as root and neither the user 'postgres' nor "
            f"{FALLBACK_USER!r} exists; creating {FALLBACK_USER!r} failed ({exc}). Create a "
            f"system user named {FALLBACK_USER!r}, or run the scheduler as a non-root user"
        ) from exc
    try:
        entry = pwd.getpwnam(FALLBACK_USER)  # exit 9 (already exists) means a racing creator
    except KeyError:
        output = (result.stderr or b"").decode(errors="replace").strip()
        raise EmbeddedPostgresError(
            f"Postgres refuses to run as root, and creating the system user {FALLBACK_USER!r} "
            f"failed: {shlex.join(command)} exited {result.returncode}: {output}"
        ) from None
    log.info("embedded_postgres_user_created", user=FALLBACK_USER, uid=entry.pw_uid)
    return _RunAs.of(entry)


# --------------------------------------------------------------------------- helpers


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            data = f.read()
    except OSError as exc:
        return f"(no log: {exc})"
    text = data.decode(errors="replace").splitlines()[-lines:]
    return "\n".join(text) if text else "(log is empty)"


def _read_pidfile(path: Path) -> list[str] | None:
    """The lines of a postmaster.pid (pid, datadir, start, port, socketdir, addr, shm, status)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    lines = text.splitlines()
    if not lines or not lines[0].strip().lstrip("-").isdigit():
        return []  # being written, or garbage
    return lines


def _is_postmaster_of(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is alive and is a Postgres process serving ``data_dir``."""
    if not _is_alive(pid):
        return False
    # A postmaster chdirs into its data directory: the precise test, when we may look.
    try:
        return Path(f"/proc/{pid}/cwd").readlink() == data_dir.resolve()
    except PermissionError:
        pass
    except OSError:
        return False
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return Path(os.fsdecode(argv0)).name in ("postgres", "postmaster")


def _processes_in(data_dir: Path) -> list[int]:
    """Pids of Postgres processes working in ``data_dir`` (orphans of a killed postmaster)."""
    target = data_dir.resolve()
    pids: list[int] = []
    own = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        with contextlib.suppress(OSError):
            if (entry / "cwd").readlink() != target:
                continue
            # Children retitle themselves "postgres: checkpointer" and so on.
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
            name = Path(os.fsdecode(argv0)).name
            if name.startswith("postgres") or name == "postmaster":
                pids.append(int(entry.name))
    return pids


@dataclass
class _Outcome:
    returncode: int
    output: str


# --------------------------------------------------------------------------- the server


class EmbeddedPostgres:
    """A Postgres cluster in ``base_dir``, started on demand and reached over a unix socket.

    ``start()`` creates the cluster on first use (``initdb``), starts the server with
    ``pg_ctl -w``, and creates ``database`` if it is missing. It reuses a server that is
    already running on the same data directory (another agent, or one left by a crash) and
    clears a stale ``postmaster.pid``. ``stop()`` stops the server only if this object started
    it. ``unsafe_fast`` turns durability off (fsync, synchronous_commit, full_page_writes):
    for tests only. Settings we manage live in ``data/scheduler.conf``, rewritten on every
    start; ``ALTER SYSTEM`` settings (``postgresql.auto.conf``) override them.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        database: str = "scheduler",
        port: int = 5432,
        unsafe_fast: bool = False,
        binaries: PostgresBinaries | None = None,
    ) -> None:
        if not database or "\0" in database or len(database.encode()) > 63:
            raise EmbeddedPostgresError(f"invalid database name {database!r}")
        if not 1 <= port <= 65535:
            raise EmbeddedPostgresError(f"port must be in 1..65535: got {port}")
        self.base_dir = Path(base_dir).absolute()
        self.database = database
        self.port = port
        self.unsafe_fast = unsafe_fast
        self._binaries = binaries
        self._lock = anyio.Lock()
        self._running = False
        self._owned_pid: int | None = None  # the postmaster this object started
        self._run_as: _RunAs | None = None

    # ---------------------------------------------------------------- paths and names

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "run"

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / f".s.PGSQL.{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def binaries(self) -> PostgresBinaries | None:
        """The binaries in use: those given, or those found by :meth:`start`."""
        return self._binaries

    @property
    def running(self) -> bool:
        return self._running

    def _url(self, database: str) -> str:
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://{SUPERUSER}@/{quote(database, safe='')}?host={host}&port={self.port}"

    @property
    def dsn(self) -> str:
        """A libpq/asyncpg URL for ``database`` over the unix socket."""
        return self._url(self.database)

    @property
    def admin_dsn(self) -> str:
        """A libpq/asyncpg URL for the ``postgres`` maintenance database."""
        return self._url("postgres")

    def psql_command(self) -> str:
        """A shell command that opens psql on ``database`` (as root or the server's user)."""
        psql = "psql"
        if shutil.which("psql") is None and self._binaries is not None:
            candidate = self._binaries.bindir / "psql"
            if candidate.exists():
                psql = str(candidate)
        return shlex.join(
            [psql, "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, self.database]
        )

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> EmbeddedPostgres:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.stop()

    async def start(self) -> None:
        """Create the cluster if needed, start (or reuse) the server, create the database."""
        async with self._lock:
            if self._running:
                return
            begun = time.monotonic()
            self._check_socket_path()
            if self._binaries is None:
                self._binaries = await anyio.to_thread.run_sync(find_binaries)
            binaries = self._binaries
            self._run_as = await _unprivileged_user() if os.geteuid() == 0 else None
            await anyio.to_thread.run_sync(self._prepare_dirs)
            if self._run_as is not None:
                await self._check_access(binaries)
            async with self._file_lock():
                initialized = await self._initdb_if_needed(binaries)
                await anyio.to_thread.run_sync(self._write_config)
                reused = await self._adopt_running_server()
                if not reused:
                    await self._pg_ctl_start(binaries)
                try:
                    await self._create_database()
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await self._stop_owned()
                    raise
            self._running = True
            log.info(
                "embedded_postgres_started",
                base_dir=str(self.base_dir),
                version=binaries.version,
                source=binaries.source,
                user=self._run_as.name if self._run_as else None,
                initdb=initialized,
                reused=reused,
                seconds=round(time.monotonic() - begun, 3),
            )

    async def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``) if this object started it."""
        async with self._lock:
            if not self._running:
                return
            self._running = False
            await self._stop_owned()

    async def _stop_owned(self) -> None:
        owned, self._owned_pid = self._owned_pid, None
        if owned is None or self._binaries is None:
            return
        lines = await anyio.to_thread.run_sync(_read_pidfile, self.data_dir / "postmaster.pid")
        if not lines or int(lines[0]) != owned:
            return  # ours is gone; whatever runs there now is not ours to stop
        outcome = await self._run(
            [
                self._binaries.tool("pg_ctl"),
                "stop",
                "-D",
                str(self.data_dir),
                "-m",
                "fast",
                "-w",
                "-t",
                str(_START_TIMEOUT),
                "-s",
            ]
        )
        if outcome.returncode != 0:
            raise EmbeddedPostgresError(
                f"pg_ctl stop failed for {self.data_dir} (exit {outcome.returncode}): "
                f"{outcome.output.strip()}\n--- tail of {self.log_path} ---\n"
                f"{await anyio.to_thread.run_sync(_tail, self.log_path)}"
            )
        log.info("embedded_postgres_stopped", base_dir=str(self.base_dir))

    # ---------------------------------------------------------------- steps

    def _check_socket_path(self) -> None:
        length = len(os.fsencode(self.socket_path))
        if length > _SUN_PATH_MAX:
            raise EmbeddedPostgresError(
                f"the embedded Postgres socket path {self.socket_path} is {length} bytes, over "
                f"the {_SUN_PATH_MAX}-byte limit of unix socket paths; use a shorter state "
                "directory (SCHEDULER_STATE_DIR), e.g. /var/lib/scheduler"
            )

    def _prepare_dirs(self) -> None:
        """Create base_dir and run/ (0700) and hand them to the server's user."""
        run_as = self._run_as
        missing: list[Path] = []
        for parent in [self.base_dir, *self.base_dir.parents]:
            if parent.exists():
                break
            missing.append(parent)
        try:
            for d in reversed(missing[1:]):
                with contextlib.suppress(FileExistsError):
                    d.mkdir()
                    if run_as is not None:  # the server's user must traverse what we create
                        d.chmod(0o711)
            self.base_dir.mkdir(mode=0o700, exist_ok=True)
            self.socket_dir.mkdir(mode=0o700, exist_ok=True)
            if run_as is None:
                return
            for path in (self.base_dir, self.socket_dir, self.log_path):
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_uid != run_as.uid:
                        os.chown(path, run_as.uid, run_as.gid)
            with contextlib.suppress(FileNotFoundError):
                if self.data_dir.stat().st_uid != run_as.uid:
                    # A cluster made under another uid (e.g. before 'postgres' existed).
                    for root, dirs, files in os.walk(self.data_dir):
                        os.chown(root, run_as.uid, run_as.gid)
                        for name in dirs + files:
                            os.lchown(Path(root) / name, run_as.uid, run_as.gid)
        except OSError as exc:
            raise EmbeddedPostgresError(
                f"could not prepare the embedded Postgres directory {self.base_dir}: {exc}"
            ) from exc

    async def _check_access(self, binaries: PostgresBinaries) -> None:
        """As root: check that the server's user can reach base_dir and run the binaries."""
        run_as = self._run_as
        assert run_as is not None
        postgres = binaries.bindir / "postgres"
        outcome = await self._run(
            [
                "/bin/sh",
                "-c",
                'test -x "$1" && test -w "$1" && test -x "$2"',
                "sh",
                str(self.base_dir),
                str(postgres),
            ]
        )
        if outcome.returncode == 0:
            return

        def blocker(path: Path) -> Path | None:
            for parent in reversed(path.parents):
                try:
                    if not run_as.can_traverse(parent.stat()):
                        return parent
                except OSError:
                    return parent
            return None

        where, what = self.base_dir, "its data directory"
        culprit = blocker(self.base_dir / "x")
        if culprit is None and (culprit := blocker(postgres)) is not None:
            where, what = postgres, "the Postgres binaries"
        detail = (
            f"{culprit} (mode {stat.S_IMODE(culprit.stat().st_mode):04o}, "
            f"owner uid {culprit.stat().st_uid}) does not let it through"
            if culprit is not None
            else "permission denied"
        )
        raise EmbeddedPostgresError(
            f"Postgres refuses to run as root, so the embedded server runs as the user "
            f"{run_as.name!r}, but that user cannot reach {what} at {where}: {detail}. "
            "Use a state directory whose parents others may traverse (e.g. /var/lib/scheduler, "
            f"via SCHEDULER_STATE_DIR), or allow traversal with chmod o+x "
            f"{culprit if culprit is not None else where.parent}"
        )

    @contextlib.asynccontextmanager
    async def _file_lock(self) -> AsyncIterator[None]:
        """Serialize set-up and start across processes sharing base_dir."""
        path = self.base_dir / ".lock"
        fd = await anyio.to_thread.run_sync(
            lambda: os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        )
        try:
            deadline = time.monotonic() + _START_TIMEOUT * 2
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise EmbeddedPostgresError(
                            f"timed out after {_START_TIMEOUT * 2}s waiting for another "
                            f"process that holds {path} (setting up the same server)"
                        ) from None
                    await anyio.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock

    async def _initdb_if_needed(self, binaries: PostgresBinaries) -> bool:
        version_file = self.data_dir / "PG_VERSION"
        existing = await anyio.to_thread.run_sync(
            lambda: version_file.read_text().strip() if version_file.exists() else None
        )
        if existing is not None:
            if existing != str(binaries.major):
                raise EmbeddedPostgresError(
                    f"the embedded database in {self.data_dir} was created by PostgreSQL "
                    f"{existing}, but the binaries found are PostgreSQL {binaries.version} "
                    f"({binaries.source}: {binaries.bindir}); point SCHEDULER_PG_BINDIR at a "
                    f"PostgreSQL {existing} bin directory, or upgrade the data with pg_upgrade"
                )
            return False
        if await anyio.to_thread.run_sync(self.data_dir.exists):
            raise EmbeddedPostgresError(
                f"{self.data_dir} exists but is not a Postgres data directory (no PG_VERSION); "
                "move it away to let the scheduler create a fresh one"
            )

        # initdb into a scratch directory and rename: a crash never leaves half a cluster.
        scratch = self.base_dir / "data.initdb"
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(scratch, ignore_errors=True))
        command = [
            binaries.tool("initdb"),
            "-D",
            str(scratch),
            "-U",
            SUPERUSER,
            "--encoding=UTF8",
            "--no-locale",
            "--auth-local=trust",
            "--auth-host=reject",
        ]
        if binaries.major >= 13:
            command.append("--no-instructions")
        if self.unsafe_fast:
            command.append("--no-sync")
        outcome = await self._run(command)
        if outcome.returncode != 0:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(scratch, ignore_errors=True))
            raise EmbeddedPostgresError(
                f"initdb failed for {self.data_dir} (exit {outcome.returncode}, "
                f"{binaries.source} PostgreSQL {binaries.version} in {binaries.bindir}):\n"
                f"{outcome.output.strip()}"
            )

        def finish() -> None:
            with (scratch / "postgresql.conf").open("a") as f:
                f.write(
                    "\n# Settings managed by the scheduler (rewritten on every start);\n"
                    "# ALTER SYSTEM settings in postgresql.auto.conf override them.\n"
                    "include_if_exists = 'scheduler.conf'\n"
                )
            scratch.rename(self.data_dir)

        await anyio.to_thread.run_sync(finish)
        log.info("embedded_postgres_initdb", data_dir=str(self.data_dir), version=binaries.version)
        return True

    def _write_config(self) -> None:
        settings: dict[str, str] = {
            "listen_addresses": "''",
            "port": str(self.port),
            "unix_socket_directories": _conf_quote(str(self.socket_dir)),
            "unix_socket_permissions": "0700",
            "max_connections": "200",
            "log_timezone": "'UTC'",
        }
        if self.unsafe_fast:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        text = (
            "# Written by scheduler.db.embedded on every start; edits here are lost.\n"
            + "".join(f"{key} = {value}\n" for key, value in settings.items())
        )
        path = self.data_dir / "scheduler.conf"
        scratch = path.with_suffix(".conf.tmp")
        scratch.write_text(text)
        scratch.chmod(0o600)
        if self._run_as is not None:
            os.chown(scratch, self._run_as.uid, self._run_as.gid)
        scratch.replace(path)

    async def _adopt_running_server(self) -> bool:
        """Reuse a live server on our data dir; clear the leftovers of a dead one."""
        pidfile = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            lines = await anyio.to_thread.run_sync(_read_pidfile, pidfile)
            if lines is None:
                break
            # A negative pid is a single-user backend (postgres --single): not stale either.
            if lines and not await anyio.to_thread.run_sync(
                _is_postmaster_of, abs(int(lines[0])), self.data_dir
            ):
                await anyio.to_thread.run_sync(self._clear_stale, abs(int(lines[0])))
                break
            status = lines[7].strip() if len(lines) > 7 else ""
            if status == "ready":
                port = lines[3].strip() if len(lines) > 3 else ""
                sockets = lines[4].strip() if len(lines) > 4 else ""
                if port != str(self.port) or sockets != str(self.socket_dir):
                    raise EmbeddedPostgresError(
                        f"a Postgres server (pid {lines[0]}) already runs on {self.data_dir} "
                        f"with port {port} and socket directory {sockets!r}, not {self.port} "
                        f"and {str(self.socket_dir)!r}; stop it (pg_ctl stop -D "
                        f"{self.data_dir}) and start again"
                    )
                log.info("embedded_postgres_reused", pid=int(lines[0]), data_dir=str(self.data_dir))
                return True
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"a Postgres server on {self.data_dir} stayed in state {status or 'unknown'!r} "
                    f"for {_START_TIMEOUT}s\n--- tail of {self.log_path} ---\n"
                    f"{await anyio.to_thread.run_sync(_tail, self.log_path)}"
                )
            await anyio.sleep(0.1)  # starting, stopping or being written: look again

        # Orphaned children of a killed postmaster hold its shared memory: wait them out.
        deadline = time.monotonic() + 15
        while orphans := await anyio.to_thread.run_sync(_processes_in, self.data_dir):
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"processes {orphans} of a dead Postgres server still run in "
                    f"{self.data_dir}; stop them (kill {' '.join(map(str, orphans))}) and retry"
                )
            await anyio.sleep(0.1)
        return False

    def _clear_stale(self, pid: int) -> None:
        log.warning("embedded_postgres_stale_pidfile", pid=pid, data_dir=str(self.data_dir))
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "postmaster.pid").unlink()
        lock = self.socket_dir / f".s.PGSQL.{self.port}.lock"
        lines = _read_pidfile(lock)
        if lines is not None and (
            not lines or not _is_postmaster_of(abs(int(lines[0])), self.data_dir)
        ):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    async def _pg_ctl_start(self, binaries: PostgresBinaries) -> None:
        outcome = await self._run(
            [
                binaries.tool("pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(_START_TIMEOUT),
                "-s",
            ]
        )
        lines = await anyio.to_thread.run_sync(_read_pidfile, self.data_dir / "postmaster.pid")
        if outcome.returncode != 0 or not lines:
            raise EmbeddedPostgresError(
                f"the embedded Postgres in {self.data_dir} did not start (pg_ctl exit "
                f"{outcome.returncode}): {outcome.output.strip()}\n"
                f"--- tail of {self.log_path} ---\n"
                f"{await anyio.to_thread.run_sync(_tail, self.log_path)}"
            )
        self._owned_pid = int(lines[0])

    async def _create_database(self) -> None:
        try:
            conn = await asyncpg.connect(self.admin_dsn, timeout=_START_TIMEOUT)
        except (OSError, asyncpg.PostgresError) as exc:
            raise EmbeddedPostgresError(
                f"could not connect to the embedded Postgres at {self.socket_dir}: {exc}\n"
                f"--- tail of {self.log_path} ---\n"
                f"{await anyio.to_thread.run_sync(_tail, self.log_path)}"
            ) from exc
        try:
            exists = await conn.fetchval(
                "SELECT true FROM pg_database WHERE datname = $1", self.database
            )
            if not exists:
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f"CREATE DATABASE {_ident(self.database)}")
                    log.info("embedded_postgres_database_created", database=self.database)
        except asyncpg.PostgresError as exc:
            raise EmbeddedPostgresError(
                f"could not create the database {self.database!r} in the embedded Postgres: {exc}"
            ) from exc
        finally:
            await conn.close()

    async def _run(self, command: Sequence[str]) -> _Outcome:
        """Run a program as the server's user, never raising on a non-zero exit."""
        run_as = self._run_as
        env: Mapping[str, str] = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PG")},
            "LC_ALL": "C",
        }
        if run_as is not None:
            env = {**env, "HOME": str(self.base_dir), "USER": run_as.name, "LOGNAME": run_as.name}
        # subprocess.run in a worker thread, not the event loop's subprocess support: uvloop
        # (the agent's loop when installed) cannot switch the child's user and groups.
        run = functools.partial(
            subprocess.run,
            list(command),
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=str(self.base_dir),
            env=env,
            user=run_as.uid if run_as else None,
            group=run_as.gid if run_as else None,
            extra_groups=run_as.groups if run_as else None,
            umask=0o077,
        )
        try:
            result = await anyio.to_thread.run_sync(run)
        except OSError as exc:
            raise EmbeddedPostgresError(f"could not run {shlex.join(command)}: {exc}") from exc
        output = result.stdout or b""
        text = output.decode(errors="replace") if isinstance(output, bytes) else output
        return _Outcome(result.returncode, text)


def _is_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, not yet reaped by its parent, is dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return not fields or fields[0] not in ("Z", "X")
