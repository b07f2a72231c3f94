"""Peer (d): Slurm from Debian's packages, one node on this host, with its cgroup plugins.

`SlurmNode.running()` writes a private configuration under a temporary directory in
/var/tmp (not /tmp: job_container/tmpfs refuses a base path there, and a spool under /tmp
would be hidden from the job by its private /tmp), starts munged, slurmctld and slurmd in
the foreground as children of this process (no systemd here), waits for the node to be
idle, and on exit stops all three, unmounts what Slurm mounted under the directory, removes
the cgroups Slurm made (`slurm_<host>` in each v1 hierarchy) and the directory.

Plugins: proctrack/cgroup (v1 freezer), task/cgroup with ConstrainRAMSpace (v1 memory),
jobacct_gather/cgroup (cpuacct, memory counters), job_container/tmpfs (a mount namespace
with a private /tmp per job). Slurm 22.05 has no pid, net, uts or ipc namespace per job.
`CgroupPlugin=cgroup/v1`: this host is hybrid (v1 controllers, cgroup2 without any).

Slurm allocates whole CPUs; so that admission does not cap concurrency at 2 (this project
admits 200 jobs of 0.01 core on 2 cores), the node declares `CPUS` CPUs
(`SlurmdParameters=config_overrides`) and cores are not constrained (no cpuset).
Jobs run as `nobody` (`sbatch --uid`), like this project's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")
CPUS = 200
CGROUP_FS = Path("/sys/fs/cgroup")
# Ports of our own, away from the defaults (6817/6818) a real installation would use.
CTLD_PORT, SLURMD_PORT = 16817, 16818
# Prints the time the batch script started (bash's clock, no extra process).
STAMP_SCRIPT = "#!/bin/bash\necho $EPOCHREALTIME\n"


def missing() -> str | None:
    """Why Slurm cannot run here, or None."""
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        return (
            f"not installed ({', '.join(absent)} missing): "
            "apt-get install slurm-wlm munge, or make bench-peers-deps"
        )
    if not (CGROUP_FS / "freezer").is_dir() or not (CGROUP_FS / "memory").is_dir():
        return "needs cgroup v1 freezer and memory hierarchies (cgroup.conf uses cgroup/v1)"
    return None


def slurm_cgroups(host: str) -> list[Path]:
    """The node-level cgroups Slurm's v1 plugin makes, one per hierarchy."""
    return sorted(CGROUP_FS.glob(f"*/slurm_{host}"))


def _config(base: Path, host: str, sched_params: str) -> str:
    tuning = f"SchedulerParameters={sched_params}\n" if sched_params else ""
    return (
        tuning
        + f"""\
ClusterName=bench
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={CTLD_PORT}
SlurmdPort={SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={base}/munge-run/munge.socket
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
JobAcctGatherType=jobacct_gather/cgroup
JobContainerType=job_container/tmpfs
PrologFlags=Contain
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
NodeName={host} NodeAddr=127.0.0.1 CPUs={CPUS} State=UNKNOWN
PartitionName=bench Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
    )


CGROUP_CONF = """\
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=no
ConstrainRAMSpace=yes
ConstrainDevices=no
"""


@dataclass
class SlurmNode:
    base: Path
    host: str
    env: dict[str, str]
    sched_params: str = ""

    def run(self, *argv: str) -> str:
        out = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip()}")
        return out.stdout

    def sbatch(self, *args: str) -> int:
        return int(self.run("sbatch", "--parsable", "--uid=nobody", *args).split(";")[0])

    def active(self, job_id: int) -> int:
        """How many of the job's (or array's) tasks are pending, running or completing."""
        return len(self.run("squeue", "-h", "-r", "-j", str(job_id), "-o", "%i").split())

    def wait_gone(self, job_id: int, timeout: float, poll: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while self.active(job_id):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Slurm job {job_id} still active after {timeout} s")
            time.sleep(poll)

    def states(self, job_id: int) -> dict[str, int]:
        """JobState:ExitCode of every task of a finished job or array, counted."""
        counts: dict[str, int] = {}
        for line in self.run("scontrol", "-o", "show", "job", str(job_id)).splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            key = f"{fields.get('JobState')}:{fields.get('ExitCode')}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for log in sorted((self.base / "log").glob("*.log")):
            out.append(f"== {log.name}")
            out.extend(log.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(out)

    @classmethod
    @contextlib.contextmanager
    def running(cls, sched_params: str = "") -> Iterator[SlurmNode]:
        host = socket.gethostname().split(".")[0]
        if slurm_cgroups(host):
            # Someone else's Slurm (or a crashed run): never touch cgroups we did not make.
            raise RuntimeError(f"cgroups already exist: {', '.join(map(str, slurm_cgroups(host)))}")
        base = Path(tempfile.mkdtemp(prefix="peers-slurm-", dir="/var/tmp"))
        base.chmod(0o755)  # jobs run as nobody: the spool below must be reachable
        node = cls(base, host, dict(os.environ, SLURM_CONF=str(base / "slurm.conf")), sched_params)
        daemons: list[subprocess.Popen[bytes]] = []
        try:
            node._write_files()
            daemons.append(node._start_munged())
            for daemon in ("slurmctld", "slurmd"):
                daemons.append(
                    subprocess.Popen(
                        [daemon, "-D", "-f", str(base / "slurm.conf")],
                        env=node.env,
                        cwd=base,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            node._wait_idle(daemons)
            yield node
        finally:
            node._stop(daemons)

    def _write_files(self) -> None:
        for sub in ("state", "spool", "log", "jobtmp", "out", "munge-run"):
            (self.base / sub).mkdir(mode=0o755)
        (self.base / "out").chmod(0o1777)  # job output, written as nobody
        keys = self.base / "munge-key"
        keys.mkdir(mode=0o700)
        (keys / "munge.key").write_bytes(os.urandom(128))
        (keys / "munge.key").chmod(0o400)
        (self.base / "slurm.conf").write_text(_config(self.base, self.host, self.sched_params))
        (self.base / "cgroup.conf").write_text(CGROUP_CONF)
        (self.base / "job_container.conf").write_text(
            f"AutoBasePath=true\nBasePath={self.base}/jobtmp\n"
        )
        (self.base / "stamp.sh").write_text(STAMP_SCRIPT)
        (self.base / "stamp.sh").chmod(0o755)

    def _start_munged(self) -> subprocess.Popen[bytes]:
        keys, run = self.base / "munge-key", self.base / "munge-run"
        proc = subprocess.Popen(
            [
                "munged",
                "--foreground",
                f"--socket={run}/munge.socket",
                f"--key-file={keys}/munge.key",
                f"--pid-file={run}/munged.pid",
                f"--log-file={self.base}/log/munged.log",
                f"--seed-file={keys}/munged.seed",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not (run / "munge.socket").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start:\n{self.log_tail()}")
            time.sleep(0.05)
        return proc

    def _wait_idle(self, daemons: list[subprocess.Popen[bytes]]) -> None:
        deadline = time.monotonic() + 60
        while True:
            if any(d.poll() is not None for d in daemons):
                raise RuntimeError(f"a Slurm daemon exited:\n{self.log_tail()}")
            with contextlib.suppress(RuntimeError):
                if self.run("sinfo", "-h", "-o", "%T").strip() == "idle":
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"node not idle after 60 s:\n{self.log_tail()}")
            time.sleep(0.2)

    def _stop(self, daemons: list[subprocess.Popen[bytes]]) -> None:
        # slurmd first (it ends its job steps), then slurmctld, then munged.
        for proc in reversed(daemons):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._unmount_below()
        self._remove_cgroups()
        shutil.rmtree(self.base, ignore_errors=True)

    def _unmount_below(self) -> None:
        """job_container/tmpfs bind-mounts its base path and each job's namespace file."""
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        prefix = f"{self.base}/"
        for target in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
            subprocess.run(["umount", "-l", target], check=False)

    def _remove_cgroups(self) -> None:
        """rmdir, deepest first, every cgroup under slurm_<host>: all were made by our slurmd
        (start refuses when one exists), and its jobs have ended with it."""
        for top in slurm_cgroups(self.host):
            dirs = [*sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True), top]
            for d in dirs:
                for _ in range(100):
                    try:
                        d.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.05)  # a step's last process is still exiting
        left = slurm_cgroups(self.host)
        if left:
            raise RuntimeError(f"Slurm cgroups left behind: {', '.join(map(str, left))}")


def latency(node: SlurmNode, n: int) -> list[float]:
    """sbatch -> batch script started, ms, one job at a time on an idle node."""
    samples = []
    for _ in range(n):
        t0 = time.time()
        job_id = node.sbatch("-o", f"{node.base}/out/%j", str(node.base / "stamp.sh"))
        out = node.base / "out" / str(job_id)
        deadline = time.monotonic() + 60
        while not out.is_file() or not out.read_text().endswith("\n"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Slurm job {job_id} did not start:\n{node.log_tail()}")
            time.sleep(0.001)
        samples.append((float(out.read_text()) - t0) * 1000)
        node.wait_gone(job_id, timeout=60, poll=0.01)  # idle node before the next one
        time.sleep(0.01)
    return samples


def throughput(node: SlurmNode, n: int) -> float:
    """One job array of n `true` tasks (one submission) to every task ended, jobs/s."""
    t0 = time.perf_counter()
    job_id = node.sbatch(f"--array=0-{n - 1}", "-o", "/dev/null", "--wrap=true")
    node.wait_gone(job_id, timeout=900)
    elapsed = time.perf_counter() - t0
    states = node.states(job_id)
    assert states == {"COMPLETED:0:0": n}, states
    return n / elapsed
