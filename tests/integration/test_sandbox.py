"""The sandbox against the real kernel: an unprivileged user with no way back to root, no
write access outside its own cgroup, no network unless asked for and allowed, and a fork
bomb contained by pids.max."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from tests import cgroup_files
from tests.conftest import SCRATCH, AgentHandle, agent_settings, start_agent
from tests.integration.test_agent import output, submit, wait_final

pytestmark = pytest.mark.anyio

SETUID_PROGRAM = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) {
    printf("uid=%d euid=%d\n", (int)getuid(), (int)geteuid());
    printf("setuid0=%s\n", setuid(0) == 0 ? "ok" : "refused");
    return 0;
}
"""


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A directory the job can see: outside /tmp, which is private to each job."""
    path = Path(tempfile.mkdtemp(prefix="sched-sandbox-", dir=SCRATCH))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def status_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    return fields


async def test_job_runs_as_its_tenants_uid_with_no_capabilities(
    db: asyncpg.Connection, agent: AgentHandle
) -> None:
    job_id = await submit(db, ["sh", "-c", "id -u; id -g; id -G; cat /proc/self/status"])
    [row] = await wait_final(db, [job_id])
    assert row["state"] == "succeeded", row["error"]
    uid, gid, groups, status = output(agent, job_id).split("\n", 3)
    own = await db.fetchval("SELECT uid FROM scheduler.tenants WHERE name = 'default'")
    assert (uid, gid, groups) == (str(own), str(own), str(own))
    fields = status_fields(status)
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[key], 16) == 0, key
    assert fields["NoNewPrivs"] == "1"


async def test_setuid_root_binary_gives_nothing_back(
    db: asyncpg.Connection, agent: AgentHandle, host_dir: Path
) -> None:
    source = host_dir / "suid.c"
    source.write_text(SETUID_PROGRAM)
    binary = host_dir / "suid"
    subprocess.run(["cc", "-o", str(binary), str(source)], check=True)
    os.chown(binary, 0, 0)
    binary.chmod(0o4755)
    # The control: outside the sandbox, the same user does get root through this binary,
    # so the bit works on this filesystem and the test below can fail.
    control = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(binary)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "euid=0" in control.stdout
    job_id = await submit(db, [str(binary)])
    su_id = await submit(db, ["sh", "-c", "su -c 'id -u' root < /dev/null; echo rc=$?"])
    rows = {r["id"]: r for r in await wait_final(db, [job_id, su_id])}
    assert rows[job_id]["state"] == "succeeded", rows[job_id]["error"]
    own = await db.fetchval("SELECT uid FROM scheduler.tenants WHERE name = 'default'")
    assert output(agent, job_id) == f"uid={own} euid={own}\nsetuid0=refused\n"
    su_out = output(agent, su_id)
    assert "rc=0" not in su_out
    assert "\n0\n" not in f"\n{su_out}"


async def test_job_cannot_write_outside_its_own_cgroup(
    db: asyncpg.Connection, agent: AgentHandle, cgroup_root: str
) -> None:
    tenant = (cgroup_root, "default")
    targets = [
        cgroup_files.pids_max_file(*tenant),  # the tenant's limit
        cgroup_files.procs(*tenant),  # move itself up to the tenant
        cgroup_files.procs(cgroup_root),  # the scheduler's root
        cgroup_files.procs(),  # the host's root: out of every limit
        cgroup_files.memory_limit_file(*tenant),
        cgroup_files.freeze_file(*tenant),
    ]
    await wait_final(db, [await submit(db, ["true"])])  # the tenant's cgroup now exists
    before = {t: t.read_text() for t in targets if "procs" not in t.name}
    script = "".join(
        f"if echo $$ > {t} 2>/dev/null; then echo WROTE {t}; else echo denied {t}; fi; "
        for t in targets
    )
    job_id = await submit(db, ["sh", "-c", script + "cat /proc/self/cgroup"])
    [row] = await wait_final(db, [job_id])
    assert row["state"] == "succeeded", row["error"]
    lines = output(agent, job_id).splitlines()
    assert lines[: len(targets)] == [f"denied {t}" for t in targets]
    # Its view of the cgroup tree starts at its own leaf, in every hierarchy.
    assert all(line.endswith(":/") for line in lines[len(targets) :])
    assert {t: t.read_text() for t in before} == before


async def test_job_is_in_its_cgroup_before_its_first_instruction(
    db: asyncpg.Connection, agent: AgentHandle, cgroup_root: str
) -> None:
    # The shell's first action: its own view of its cgroups, then the members of its leaf
    # (the kernel lists only members of the reader's pid namespace: init 1, sh 2, cat 3).
    # In the job's view /sys/fs/cgroup is its own cgroup (runtime/cgroupview.py): the one
    # tree's root on a pure v2 host, each hierarchy's mount point on v1.
    leaf = (
        "/sys/fs/cgroup/cgroup.procs"
        if cgroup_files.pure_v2()
        else "/sys/fs/cgroup/pids/cgroup.procs"
    )
    job_id = await submit(db, ["sh", "-c", f"cat /proc/self/cgroup {leaf}"])
    [row] = await wait_final(db, [job_id])
    assert row["state"] == "succeeded", row["error"]
    lines = output(agent, job_id).splitlines()
    if cgroup_files.pure_v2():  # the one tree
        assert [x for x in lines if ":" in x] == ["0::/"]
    else:  # one line per hierarchy
        assert [x.split(":", 1)[1] for x in lines if ":pids:" in x] == ["pids:/"]
    assert [x for x in lines if ":" not in x] == ["1", "2", "3"]


def listen_once() -> tuple[socket.socket, list[bytes]]:
    """A TCP service of the host on 127.0.0.1; what connecting clients send lands in the list."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    got: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by the test
            with conn:
                conn.settimeout(5)
                got.append(conn.recv(100))

    threading.Thread(target=serve, daemon=True).start()
    return server, got


def connect_script(port: int) -> list[str]:
    return ["bash", "-c", f"echo hello > /dev/tcp/127.0.0.1/{port} && echo connected"]


async def test_no_network_unless_asked_and_allowed(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    server, got = listen_once()
    port = server.getsockname()[1]
    try:
        async with anyio.create_task_group() as tg:
            settings = agent_settings(dsn, state_dir, cgroup_root, allow_network=True)
            agent = await start_agent(tg, settings)
            isolated = await submit(db, connect_script(port))
            networked = await submit(db, connect_script(port), network=True)
            rows = {r["id"]: r for r in await wait_final(db, [isolated, networked])}
            tg.cancel_scope.cancel()
    finally:
        server.close()
    assert rows[isolated]["state"] == "failed"
    assert "connected" not in output(agent, isolated)
    assert "Connection refused" in output(agent, isolated, name="stderr")
    assert rows[networked]["state"] == "succeeded", rows[networked]["error"]
    assert output(agent, networked) == "connected\n"
    assert got == [b"hello\n"]


async def test_network_asked_but_not_allowed_is_a_clear_error(
    db: asyncpg.Connection, agent: AgentHandle
) -> None:
    job_id = await submit(db, ["true"], network=True)
    [row] = await wait_final(db, [job_id])
    assert row["state"] == "failed"
    assert "allow_network" in row["error"]
    assert "network" in row["error"]


async def test_tenant_run_as(db: asyncpg.Connection, agent: AgentHandle) -> None:
    await db.execute(
        "INSERT INTO scheduler.tenants (name, run_as) VALUES ('ids', '400321:400765'), "
        "('ghost', 'no_such_user_here')"
    )
    ok = await submit(db, ["sh", "-c", "id -u; id -G"], tenant="ids")
    ghost = await submit(db, ["true"], tenant="ghost")
    rows = {r["id"]: r for r in await wait_final(db, [ok, ghost])}
    assert rows[ok]["state"] == "succeeded", rows[ok]["error"]
    assert output(agent, ok) == "400321\n400765\n"
    assert rows[ghost]["state"] == "failed"
    assert "no_such_user_here" in rows[ghost]["error"]
    assert "does not exist" in rows[ghost]["error"]


@pytest.mark.parametrize("bad", ["root", "0", "0:0", "12:0", "../etc", "a/b", "", "Nobody"])
async def test_database_refuses_bad_run_as(db: asyncpg.Connection, bad: str) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="tenant_run_as_format"):
        await db.execute("INSERT INTO scheduler.tenants (name, run_as) VALUES ('t', $1)", bad)


async def test_fork_bomb_is_contained_and_the_agent_stays_healthy(
    db: asyncpg.Connection, agent: AgentHandle
) -> None:
    bomb = await submit(
        db, ["sh", "-c", "f() { f | f & }; f; sleep 30"], pids_max=40, timeout_seconds=1
    )
    [row] = await wait_final(db, [bomb], timeout=60)
    assert row["state"] == "timed_out"
    assert "fork" in output(agent, bomb, name="stderr").lower()
    # The agent still launches and records the next jobs.
    after = [await submit(db, ["sh", "-c", f"echo {i}"]) for i in range(3)]
    rows = await wait_final(db, after)
    assert [r["state"] for r in rows] == ["succeeded"] * 3
    assert [output(agent, i) for i in after] == ["0\n", "1\n", "2\n"]
