"""Layered root filesystems: images built from directories and tarballs, jobs on an overlay
of their layers plus a writable layer of their own, entered with pivot_root."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.agent.isolation import ROOTFS_DIR
from scheduler.errors import ImageError, ImageNotFound
from scheduler.rundirs import run_dir_for
from scheduler.runtime.images import ImageStore
from tests.conftest import SCRATCH, AgentHandle, agent_settings, start_agent
from tests.integration.test_agent import output, submit, wait_final

pytestmark = pytest.mark.anyio

TOOLS = ("sh", "cat", "ls", "echo", "id", "sleep", "touch", "test", "mount")


def _libraries(binary: str) -> list[Path]:
    result = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False)
    return [Path(p) for p in result.stdout.split() if p.startswith("/")]


def build_tiny_root(root: Path) -> None:
    """A root filesystem of a few tools: busybox when installed, else host binaries + libs."""
    (root / "bin").mkdir(parents=True)
    busybox = shutil.which("busybox")
    if busybox:
        shutil.copy2(busybox, root / "bin/busybox")
        for tool in TOOLS:
            (root / "bin" / tool).symlink_to("busybox")
    else:
        for tool in TOOLS:
            found = shutil.which(tool)
            assert found, tool
            shutil.copy2(found, root / "bin" / tool)
            for lib in _libraries(found):
                target = root / lib.relative_to("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(lib, target)
    (root / "etc").mkdir()
    (root / "etc/release").write_text("tiny 1\n")
    (root / "etc/base-only").write_text("from the base layer\n")


def tarball(files: dict[str, bytes], dirs: dict[str, int]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, mode in dirs.items():
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tree_digest(path: Path) -> dict[str, str]:
    """Every entry under path with its type, mode and content hash."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(root) / name
            st = p.lstat()
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
            out[str(p.relative_to(path))] = f"{st.st_mode:o}:{hashlib.sha256(data).hexdigest()}"
    return out


@pytest.fixture
def sources() -> Iterator[tuple[Path, Path]]:
    """A base directory and a tarball layer over it (outside the jobs' private /tmp)."""
    base = Path(tempfile.mkdtemp(prefix="sched-image-", dir=SCRATCH))
    build_tiny_root(base / "root")
    layer = base / "top.tar"
    layer.write_bytes(
        tarball(
            {"etc/release": b"tiny 2\n", "data/hello": b"hello from the top layer\n"},
            {"etc": 0o755, "data": 0o1777},
        )
    )
    yield base / "root", layer
    shutil.rmtree(base, ignore_errors=True)


def add_image(state_dir: Path, name: str, paths: list[Path]) -> None:
    ImageStore(state_dir / "images").add(name, paths)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scheduler.cli", *args], capture_output=True, text=True, check=False
    )


async def test_two_jobs_on_one_image_share_layers_not_writes(
    db: asyncpg.Connection, agent: AgentHandle, sources: tuple[Path, Path]
) -> None:
    add_image(agent.settings.paths.state, "tiny", list(sources))
    images = ImageStore(agent.settings.paths.images_dir)
    before = tree_digest(images.path("tiny"))
    script = (
        "cat /etc/release /etc/base-only /data/hello; echo {me} > /data/{me}; "
        "echo t > /tmp/t; sleep 1; ls /data; ls /dev; "
        "test -e /usr/bin/python3 || echo no-host-root; id -u"
    )
    a = await submit(db, ["sh", "-c", script.format(me="a")], image="tiny")
    b = await submit(db, ["sh", "-c", script.format(me="b")], image="tiny")
    rows = {r["id"]: r for r in await wait_final(db, [a, b])}
    own = await db.fetchval("SELECT uid FROM scheduler.tenants WHERE name = 'default'")
    for job_id, me in ((a, "a"), (b, "b")):
        assert rows[job_id]["state"] == "succeeded", rows[job_id]["error"]
        lines = output(agent, job_id).split("\n")
        assert lines[:3] == ["tiny 2", "from the base layer", "hello from the top layer"]
        # Its own write, and not the other job's (both slept while the other wrote).
        assert lines[3:5] == [me, "hello"]
        devices = ["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "tty"]
        assert lines[5:16] == [*devices, "urandom", "zero"]
        assert lines[16:] == ["no-host-root", str(own), ""]
        # The writable layer is removed after the attempt (keep_upper = never).
        assert not (run_dir_for(agent.settings.paths.runs_dir, job_id, 1) / ROOTFS_DIR).exists()
    assert tree_digest(images.path("tiny")) == before


async def test_keep_upper_always_keeps_the_writable_layer(
    dsn: str,
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    sources: tuple[Path, Path],
) -> None:
    add_image(state_dir, "tiny", list(sources))
    async with anyio.create_task_group() as tg:
        agent = await start_agent(
            tg, agent_settings(dsn, state_dir, cgroup_root, keep_upper="always")
        )
        job_id = await submit(db, ["sh", "-c", "echo kept > /data/mine"], image="tiny")
        [row] = await wait_final(db, [job_id])
        tg.cancel_scope.cancel()
    assert row["state"] == "succeeded", row["error"]
    upper = run_dir_for(agent.settings.paths.runs_dir, job_id, 1) / ROOTFS_DIR / "upper"
    assert (upper / "data/mine").read_text() == "kept\n"
    assert not (upper / "etc").exists()  # untouched files stay in the read-only layers


async def test_missing_image_is_a_readable_error(
    db: asyncpg.Connection, agent: AgentHandle
) -> None:
    job_id = await submit(db, ["true"], image="nope")
    [row] = await wait_final(db, [job_id])
    assert row["state"] == "failed"
    assert "image 'nope' not found" in row["error"]


async def test_database_refuses_image_names_that_are_paths(db: asyncpg.Connection) -> None:
    for bad in ("../etc", "a/b", ".hidden", "Upper", ""):
        with pytest.raises(asyncpg.CheckViolationError, match="job_image_name_format"):
            await submit(db, ["true"], image=bad)


def test_image_store_builds_atomically_and_lists(
    tmp_path: Path, sources: tuple[Path, Path]
) -> None:
    added = cli("images", "add", "--state-dir", str(tmp_path), "tiny", *map(str, sources))
    assert added.returncode == 0, added.stderr
    store = ImageStore(tmp_path / "images")
    layers = store.layers("tiny")
    assert [p.name for p in layers] == ["1", "0"]  # top first, as overlayfs wants it
    assert (layers[0] / "etc/release").read_text() == "tiny 2\n"
    assert (layers[1] / "etc/release").read_text() == "tiny 1\n"
    with pytest.raises(ImageError, match="already exists"):
        store.add("tiny", list(sources))
    # A bad source leaves nothing behind, not even a half-built image.
    bad = tmp_path / "not-a-tarball"
    bad.write_text("plain text")
    with pytest.raises(ImageError, match="neither a directory nor a tarball"):
        store.add("broken", [sources[0], bad])
    assert [i.name for i in store.all()] == ["tiny"]
    assert list((tmp_path / "images" / ".incoming").iterdir()) == []
    escape = cli("images", "add", "--state-dir", str(tmp_path), "../escape", str(sources[0]))
    assert escape.returncode == 1
    assert "image name '../escape' is invalid" in escape.stderr
    assert not (tmp_path / "escape").exists()
    with pytest.raises(ImageNotFound):
        store.layers("missing")
    listed = cli("images", "list", "--state-dir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("tiny\t2 layer(s)")
