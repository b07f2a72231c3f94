"""Tenants who do not trust each other (issue 14), tried the way a hostile tenant would: real
jobs of two tenants, alpha and beta, on the real kernel, through a running agent."""

from __future__ import annotations

import ast
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.agent.tenants import node_pids_cap
from tests import cgroup_files
from tests.conftest import AgentHandle, agent_settings, slow, start_agent
from tests.integration.test_agent import output, submit, wait_final
from tests.integration.test_control import cli

pytestmark = pytest.mark.anyio

PYTHON = "/usr/bin/python3"
# The node-wide pids cap of the agent below: far under any job's own pids_max.
NODE_PIDS = 40

# A job's probes, each printing "name errno" (0: it worked).
PROBES = r"""
import ctypes, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def call(name, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(*args)
    print(name, ctypes.get_errno() if rc < 0 else 0, flush=True)
call("bpf", 321, 5, None, 0)                                   # BPF_PROG_LOAD
call("mount", 165, b"none", b"/tmp", b"tmpfs", 0, None)
call("unshare_user", 272, 0x10000000)                          # CLONE_NEWUSER
call("join_session", 250, 1, b"another-jobs-session")          # KEYCTL_JOIN_SESSION_KEYRING
call("perf_event_open", 298, None, 0, -1, -1, 0)
r = subprocess.run(["unshare", "-r", "id", "-u"], capture_output=True, text=True)
print("unshare_r", r.returncode, r.stdout.strip() or "-", r.stderr.strip().replace(" ", "_") or "-")
r = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "none", "/mnt"], capture_output=True)
print("unshare_mount", r.returncode)
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
print("seccomp", status["Seccomp"].strip())
"""


@pytest.fixture
async def isolated(
    dsn: str, state_dir: Path, cgroup_root: str, db: asyncpg.Connection
) -> AsyncIterator[AgentHandle]:
    """An agent with a small node-wide pids cap and one trusted tenant, and tenants alpha,
    beta and trusted."""
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('alpha'), ('beta'), ('trusted')")
    settings = agent_settings(
        dsn, state_dir, cgroup_root, max_pids=NODE_PIDS, trusted_tenants="trusted"
    )
    async with anyio.create_task_group() as tg:
        yield await start_agent(tg, settings)
        tg.cancel_scope.cancel()


async def wait_output(
    db: asyncpg.Connection, agent: AgentHandle, job_id: int, text: str, timeout: float = 30
) -> str:
    """The job's output once it holds ``text``; fails at once if the job ended without it."""
    with anyio.fail_after(timeout):
        while text not in (found := output(agent, job_id)):
            state = await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", job_id)
            assert state in ("queued", "running"), (state, output(agent, job_id, name="stderr"))
            await anyio.sleep(0.05)
    return found


async def run_one(db: asyncpg.Connection, agent: AgentHandle, tenant: str, script: str) -> str:
    job_id = await submit(db, [PYTHON, "-c", script], tenant=tenant, memory_bytes=256 << 20)
    [row] = await wait_final(db, [job_id], timeout=60)
    assert row["state"] == "succeeded", (row["error"], output(agent, job_id, name="stderr"))
    return output(agent, job_id)


async def test_each_tenant_runs_as_its_own_uid_from_the_range(
    dsn: str, db: asyncpg.Connection, isolated: AgentHandle
) -> None:
    ids = {
        r["name"]: (r["uid"], r["gid"])
        for r in await db.fetch("SELECT name, uid, gid FROM scheduler.tenants")
    }
    span = await db.fetchrow("SELECT uid_first, uid_last FROM scheduler.isolation")
    assert span is not None
    first, last = span["uid_first"], span["uid_last"]
    assert len({uid for uid, _ in ids.values()}) == len(ids)
    assert all(first <= uid <= last and gid == uid for uid, gid in ids.values())
    seen = {}
    for tenant in ("alpha", "beta"):
        seen[tenant] = await run_one(
            db, isolated, tenant, "import os; print(os.getuid(), os.getgid(), os.getgroups())"
        )
    for tenant in ("alpha", "beta"):
        uid, gid = ids[tenant]
        assert seen[tenant].split() == [str(uid), str(gid), "[]"]
    code, out, err = await cli(dsn, "tenants", "list")
    assert code == 0, err
    assert "UID" in out.splitlines()[0]
    for tenant in ("alpha", "beta"):
        [line] = [x for x in out.splitlines() if x.startswith(f"{tenant} ")]
        assert str(ids[tenant][0]) in line.split()
    # The database hands the ids out; nobody picks or changes them.
    with pytest.raises(asyncpg.CheckViolationError, match="allocated"):
        await db.execute("INSERT INTO scheduler.tenants (name, uid) VALUES ('x', 1234567)")
    with pytest.raises(asyncpg.CheckViolationError, match="never change"):
        await db.execute("UPDATE scheduler.tenants SET uid = uid + 1 WHERE name = 'beta'")


async def test_shm_var_tmp_and_tmp_files_are_invisible_to_another_tenant(
    db: asyncpg.Connection, isolated: AgentHandle
) -> None:
    name = f"secret-{uuid.uuid4().hex[:8]}"
    # /run/lock: the one other directory every user may write on this host.
    dirs = ("/dev/shm", "/var/tmp", "/tmp", "/run/lock")
    writer = (
        "import os, time\n"
        f"for d in {dirs!r}:\n"
        f"    fd = os.open(d + '/{name}', os.O_CREAT | os.O_WRONLY, 0o600)\n"
        "    os.write(fd, b'alpha only'); os.close(fd)\n"
        "opts = {l.split()[4]: l.split()[5] for l in open('/proc/self/mountinfo')}\n"
        "print('opts', opts['/dev/shm'], opts['/var/tmp'], flush=True)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    alpha = await submit(db, [PYTHON, "-c", writer], tenant="alpha")
    try:
        text = await wait_output(db, isolated, alpha, "ready")
        for options in text.split("\n", 1)[0].split()[1:]:
            assert {"nosuid", "nodev"} <= set(options.split(",")), options
        reader = (
            "import os\n"
            f"for d in {dirs!r}:\n"
            f"    print(d, os.path.exists(d + '/{name}'), sorted(os.listdir(d)))\n"
        )
        lines = (await run_one(db, isolated, "beta", reader)).splitlines()
        assert lines == [f"{d} False []" for d in dirs]
        # Nothing of alpha's reached the host either, and its mounts go with it.
        for d in dirs:
            assert not (Path(d) / name).exists()
    finally:
        await db.execute(
            "UPDATE scheduler.jobs SET desired_state = 'cancelled' WHERE id = $1", alpha
        )
        await wait_final(db, [alpha])
        for d in dirs:  # what a sandbox without private directories would leave
            (Path(d) / name).unlink(missing_ok=True)


KEYS = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
def add(ring):
    ctypes.set_errno(0)
    rc = libc.syscall(248, b"user", DESC, b"alpha-secret", 12, ctypes.c_int(ring))
    return rc if rc >= 0 else -ctypes.get_errno()
def search(ring):
    ctypes.set_errno(0)
    rc = libc.syscall(250, 10, ctypes.c_int(ring), b"user", DESC, 0)   # KEYCTL_SEARCH
    return rc if rc >= 0 else -ctypes.get_errno()
session = libc.syscall(250, 0, ctypes.c_int(-3), 0)                   # KEYCTL_GET_KEYRING_ID @s
"""


async def test_keys_do_not_cross_between_tenants(
    db: asyncpg.Connection, isolated: AgentHandle
) -> None:
    desc = f"key-{uuid.uuid4().hex[:8]}".encode()
    setup = KEYS + f"DESC = {desc!r}\n"
    alpha = await run_one(
        db, isolated, "alpha", setup + "print(session, add(-4), add(-5), add(-3))\n"
    )
    alpha_session, user_key, user_session_key, session_key = map(int, alpha.split())
    # The per-uid keyrings, which outlive the job, are closed to it; its own session is not.
    assert user_key == user_session_key == -1  # -EPERM
    assert session_key > 0
    beta = await run_one(
        db,
        isolated,
        "beta",
        setup + "print(session, search(-3), search(-4), search(-5))\n"
        f"ctypes.set_errno(0); rc = libc.syscall(250, 11, {session_key}, None, 0)\n"
        "print(rc if rc >= 0 else -ctypes.get_errno())\n",  # KEYCTL_READ of alpha's key
    )
    beta_session, *found = map(int, beta.split())
    assert beta_session != alpha_session  # each job starts in a new session keyring
    assert all(f < 0 for f in found), found


INOTIFY = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
"""


async def test_one_tenants_inotify_quota_does_not_touch_another(
    db: asyncpg.Connection, isolated: AgentHandle
) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    hog = INOTIFY + (
        "fds = []\n"
        "while True:\n"
        "    fd = libc.inotify_init1(0)\n"
        "    if fd < 0: break\n"
        "    fds.append(fd)\n"
        "print('held', len(fds), ctypes.get_errno(), flush=True)\n"
        "time.sleep(60)\n"
    )
    alpha = await submit(db, [PYTHON, "-c", hog], tenant="alpha")
    try:
        held = (await wait_output(db, isolated, alpha, "held")).split()
        assert int(held[2]) == 24  # EMFILE: alpha's uid is at its quota
        assert 0 < int(held[1]) <= limit
        beta = await run_one(
            db,
            isolated,
            "beta",
            INOTIFY + "fd = libc.inotify_init1(0); print(fd >= 0, ctypes.get_errno())\n",
        )
        assert beta.split() == ["True", "0"]
    finally:
        await db.execute(
            "UPDATE scheduler.jobs SET desired_state = 'cancelled' WHERE id = $1", alpha
        )
        await wait_final(db, [alpha])


async def test_sys_fs_cgroup_shows_only_the_jobs_own_cgroup(
    db: asyncpg.Connection, isolated: AgentHandle, cgroup_root: str
) -> None:
    v2 = cgroup_files.pure_v2()
    # Where the job's own limit and processes show, as seen from inside its view: on a pure
    # v2 host the one tree is /sys/fs/cgroup itself (its own cgroup bound there).
    memory_file, procs_file, depth = (
        ("memory.max", "cgroup.procs", 3)
        if v2
        else ("memory/memory.limit_in_bytes", "unified/cgroup.procs", 4)
    )
    script = (
        "import os\n"
        "root = '/sys/fs/cgroup'\n"
        "print([n for n in sorted(os.listdir(root)) if os.path.isdir(f'{root}/{n}')"
        " and os.listdir(f'{root}/{n}')])\n"
        "subdirs = [r for r, ds, _ in os.walk('/sys/fs/cgroup') for d in ds"
        f" if r.count('/') >= {depth}]\n"
        "print(subdirs)\n"
        f"print(open('/sys/fs/cgroup/{memory_file}').read().strip())\n"
        f"print(open('/sys/fs/cgroup/{procs_file}').read().split())\n"
    )
    job_id = await submit(db, [PYTHON, "-c", script], tenant="beta", memory_bytes=300 << 20)
    [row] = await wait_final(db, [job_id], timeout=60)
    assert row["state"] == "succeeded", row["error"]
    names, subdirs, memory, procs = output(isolated, job_id).splitlines()
    # The job's own hierarchies only: cpuset, devices and systemd are empty, nothing of the
    # host's is left (v2: its cgroup's files, no directory at all).
    assert ast.literal_eval(names) == (
        [] if v2 else sorted(["blkio", "cpu", "cpuacct", "freezer", "memory", "pids", "unified"])
    )
    # Its cgroup has no children: no tenant's cgroup (its own tenant's neither) is reachable.
    assert ast.literal_eval(subdirs) == []
    assert int(memory) == 300 << 20
    assert ast.literal_eval(procs) != []  # its own processes, seen from its cgroup


async def test_namespaces_keyrings_bpf_and_mount_are_refused_with_eperm(
    db: asyncpg.Connection, isolated: AgentHandle
) -> None:
    lines = (await run_one(db, isolated, "alpha", PROBES)).splitlines()
    results = {line.split()[0]: line.split()[1:] for line in lines}
    for probe in ("bpf", "mount", "unshare_user", "join_session", "perf_event_open"):
        assert results[probe] == ["1"], (probe, results[probe])  # EPERM
    assert results["unshare_r"][0] != "0" and "Operation_not_permitted" in results["unshare_r"][2]
    assert results["unshare_mount"] != ["0"]
    assert results["seccomp"] == ["2"]
    # The node relaxes the filter for the tenants it trusts.
    trusted = (await run_one(db, isolated, "trusted", PROBES)).splitlines()
    assert "seccomp 0" in trusted


async def test_run_as_of_a_system_account_is_refused(
    db: asyncpg.Connection, isolated: AgentHandle
) -> None:
    await db.execute("UPDATE scheduler.tenants SET run_as = 'postgres' WHERE name = 'alpha'")
    job_id = await submit(db, ["id", "-u"], tenant="alpha")
    [row] = await wait_final(db, [job_id], timeout=60)
    assert row["state"] == "failed"
    assert "run_as 'postgres'" in row["error"], row["error"]
    assert output(isolated, job_id) == ""
    # Numeric ids are refused by the database itself.
    for bad, why in (("100", "system id"), ("1", "system id")):
        with pytest.raises(asyncpg.CheckViolationError, match=why):
            await db.execute("UPDATE scheduler.tenants SET run_as = $1 WHERE name = 'beta'", bad)
    alpha_uid = await db.fetchval("SELECT uid FROM scheduler.tenants WHERE name = 'alpha'")
    with pytest.raises(asyncpg.CheckViolationError, match="tenant 'alpha'"):
        await db.execute(
            "UPDATE scheduler.tenants SET run_as = $1 WHERE name = 'beta'", str(alpha_uid)
        )


async def test_a_fork_bomb_asking_for_four_million_pids_is_refused_or_capped(
    db: asyncpg.Connection, isolated: AgentHandle, cgroup_root: str
) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="pids_max 4000000 is above 8192"):
        await submit(db, ["true"], tenant="alpha", pids_max=4_000_000)
    await db.execute("UPDATE scheduler.tenants SET pids_limit = 500 WHERE name = 'beta'")
    with pytest.raises(asyncpg.CheckViolationError, match="tenant 'beta''s pids_limit"):
        await submit(db, ["true"], tenant="beta", pids_max=501)
    # Allowed by the database, capped by the node: the tenant's cgroup holds NODE_PIDS.
    bomb = (
        "import os, time\n"
        "n = 0\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30); os._exit(0)\n"
        "        n += 1\n"
        "    except OSError:\n"
        "        break\n"
        "print(n, flush=True)\n"
        "os.killpg(0, 9)\n"
    )
    job_id = await submit(db, [PYTHON, "-c", bomb], tenant="alpha", pids_max=8000)
    [row] = await wait_final(db, [job_id], timeout=60)
    forked = int(output(isolated, job_id) or "-1")
    assert 0 < forked < NODE_PIDS, (row["error"], forked)
    pids_max = cgroup_files.pids_max_file(cgroup_root, "alpha").read_text().strip()
    assert pids_max == str(NODE_PIDS)
    assert node_pids_cap() == int(Path("/proc/sys/kernel/pid_max").read_text()) // 4


def test_monitor_binds_a_v2_hosts_cgroup_at_the_view_root(monitor: Path, tmp_path: Path) -> None:
    """On a v2 host the one hierarchy is /sys/fs/cgroup itself: the job's directory is bound
    there (tried with this host's cgroup2 mount)."""
    leaf = cgroup_files.directory("unified", f"sched-view-{uuid.uuid4().hex[:8]}")
    leaf.mkdir()
    try:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        script = "ls /sys/fs/cgroup | tr '\\n' ' '; echo; cat /sys/fs/cgroup/cgroup.procs"
        argv = [str(monitor), "--run-dir", str(run_dir), "--hostname", "h", "--cwd", "/"]
        argv += ["--tmp-size", str(1 << 20), "--procs", f"{leaf}/cgroup.procs"]
        argv += ["--uid", "65534", "--gid", "65534", "--cgroup-view", ".", str(leaf)]
        subprocess.run([*argv, "--", "sh", "-c", script], check=True, timeout=30)
        assert "kind=exited\nexit_code=0\n" in (run_dir / "exit").read_text()
        listing, procs = (run_dir / "stdout").read_text().splitlines()[:2]
        assert "cgroup.procs" in listing.split()
        assert "unified" not in listing.split() and "memory" not in listing.split()
        assert procs.strip()
    finally:
        leaf.rmdir()


async def test_memory_a_job_left_in_dev_shm_is_not_charged_after_it_ended(
    db: asyncpg.Connection, isolated: AgentHandle, cgroup_root: str
) -> None:
    name = f"left-{uuid.uuid4().hex[:8]}"
    fill = f"dd if=/dev/zero of=/dev/shm/{name} bs=1M count=48 2>&1"
    try:
        job_id = await submit(db, ["sh", "-c", fill], tenant="alpha", memory_bytes=256 << 20)
        [row] = await wait_final(db, [job_id], timeout=60)
        assert row["state"] == "succeeded", output(isolated, job_id)
        usage = cgroup_files.directory("memory", cgroup_root, "alpha") / (
            "memory.current" if cgroup_files.pure_v2() else "memory.usage_in_bytes"
        )
        # Its /dev/shm went with it: nothing stays charged to the tenant, unbilled.
        with anyio.fail_after(slow(20)):
            while int(usage.read_text()) > 24 << 20:
                await anyio.sleep(0.1)
    finally:
        Path(f"/dev/shm/{name}").unlink(missing_ok=True)


SCRATCH_PROBE = r"""
import os
places = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
print("devices", len({os.stat(p).st_dev for p in places}))
print("listings", [sorted(os.listdir(p)) for p in places])
with open("/dev/shm/mine", "w") as f:
    f.write("x")
print("seen_elsewhere", [p for p in places if "mine" in os.listdir(p)])
fs = os.statvfs("/tmp")
print("size", fs.f_blocks * fs.f_frsize)
opts = {l.split()[4]: set(l.split()[5].split(",")) for l in open("/proc/self/mountinfo")}
print("nosuid_nodev", all({"nosuid", "nodev"} <= opts[p] for p in places))
"""

COVER_PROBE = r"""
import os
print("hidden", os.listdir("/sys/fs/cgroup/cpuset"))
try:
    os.mkdir("/sys/fs/cgroup/cpuset/x")
    print("cover_writable", True)
except OSError as exc:
    print("cover_writable", exc.errno)
"""


def probe_in_monitor(
    monitor: Path, tmp_path: Path, leaf: Path, view: list[str], probe: str
) -> dict[str, str]:
    """``probe`` run by the monitor as nobody in a job's sandbox, its process in ``leaf``;
    what it printed, as {first word: the rest}."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    argv = [str(monitor), "--run-dir", str(run_dir), "--hostname", "h", "--cwd", "/"]
    argv += ["--tmp-size", str(8 << 20), "--procs", f"{leaf}/cgroup.procs"]
    argv += ["--uid", "65534", "--gid", "65534", *view]
    subprocess.run([*argv, "--", PYTHON, "-c", probe], check=True, timeout=slow(30))
    assert "kind=exited\nexit_code=0\n" in (run_dir / "exit").read_text(), (
        run_dir / "stderr"
    ).read_text()
    lines = (run_dir / "stdout").read_text().splitlines()
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in lines}


def test_private_directories_are_one_tmpfs_whose_root_the_job_cannot_reach(
    monitor: Path, tmp_path: Path
) -> None:
    """/tmp, /var/tmp, /dev/shm and /run/lock are directories of one tmpfs of the job's
    (one superblock, not four: see docs/architecture.md "Launch speed"): still apart from
    each other, nosuid,nodev, tmp_size in all, and its root (where the other places'
    directories live) out of the job's reach. On any host: the job's cgroup is on the
    unified hierarchy (v2's, or the hybrid host's cgroup2 mount)."""
    leaf = cgroup_files.directory("unified", f"sched-scratch-{uuid.uuid4().hex[:8]}")
    leaf.mkdir()
    try:
        results = probe_in_monitor(
            monitor, tmp_path, leaf, ["--cgroup-view", ".", str(leaf)], SCRATCH_PROBE
        )
    finally:
        leaf.rmdir()
    assert results["devices"] == "1"
    assert results["listings"] == "[[], [], [], []]"
    assert results["seen_elsewhere"] == "['/dev/shm']"
    assert int(results["size"]) == 8 << 20
    assert results["nosuid_nodev"] == "True"


@pytest.mark.v1_host
def test_a_v1_hierarchy_the_job_is_not_in_is_an_empty_cover_it_cannot_write(
    monitor: Path, tmp_path: Path
) -> None:
    """v1 only (v2 has one hierarchy): a hierarchy the job is not in is covered by an empty
    directory it cannot write, not unmounted (see docs/architecture.md "Launch speed")."""
    leaf = Path(f"/sys/fs/cgroup/memory/sched-scratch-{uuid.uuid4().hex[:8]}")
    leaf.mkdir()
    try:
        view = ["--cgroup-view", "memory", str(leaf), "--cgroup-hide", "cpuset"]
        results = probe_in_monitor(monitor, tmp_path, leaf, view, COVER_PROBE)
    finally:
        leaf.rmdir()
    assert results["hidden"] == "[]"
    assert results["cover_writable"] == "13"  # EACCES
