"""What a job's isolation setup costs the machine, one monitor's sources against another's.

Compiles bench/isolation_steps.c against this tree's monitor (scheduler/runtime/monitor/)
and against OTHER (another tree's scheduler/runtime/monitor/ directory, or the one-file
scheduler/runtime/monitor.c of a tree from before the split), then runs, alternating
between the two in blocks: "new mount ns only" (step 0) and each of --steps (by default 2:
"private dirs + cgroup view"; 1 private dirs only, 3 keyring, 4 no_new_privs + seccomp; see
isolation_steps.c), ITERATIONS in a row each. Per block it counts the children's CPU (the C
program's wait4) and the kernel threads' (the sum of /proc/<pid>/schedstat over the
children of kthreadd, pid 2): teardown work the kernel defers (RCU callbacks, superblocks freed in a
workqueue, expedited grace periods) lands there. Other processes' kernel work lands there
too, so it prints medians over the blocks.

Usage: python bench/isolation_steps.py OTHER_MONITOR [--iterations 300] [--rounds 6]
       [--steps 2] [--hierarchies blkio cpu cpuacct freezer memory pids unified]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def compile_steps(out: Path, monitor: Path) -> Path:
    flags = [f'-DMONITOR="{monitor}"']
    units: list[str] = []
    if monitor.is_dir():  # the monitor's steps (its main and fork server left out)
        flags += ["-DSPLIT", f"-I{monitor}"]
        skip = ("main.c", "forkserver.c")
        units = sorted(str(p) for p in monitor.glob("*.c") if p.name not in skip)
    elif "seal_private_mounts" not in monitor.read_text():
        flags.append("-DDETACHING")  # a monitor.c from before the one-tmpfs change
    steps_c = str(HERE / "isolation_steps.c")
    subprocess.run(
        ["cc", "-std=gnu11", "-O2", *flags, "-o", str(out), steps_c, *units],
        check=True,
    )
    return out


def kthreads_ns() -> int:
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != 2 and entry.name != "2":
                continue
            with open(f"/proc/{entry.name}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def block(binary: Path, step: int, iterations: int, hierarchies: list[str]) -> tuple[float, float]:
    """(children's CPU, kernel threads' CPU) per iteration, in us."""
    before = kthreads_ns()
    out = subprocess.run(
        [str(binary), str(iterations), *hierarchies],
        env={**os.environ, "ONLY": str(step)},
        capture_output=True,
        text=True,
        check=True,
    )
    kernel = (kthreads_ns() - before) / 1e3 / iterations
    return float(out.stdout), kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("other", type=Path)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, nargs="+", default=[2])
    parser.add_argument(
        "--hierarchies",
        nargs="+",
        default=["blkio", "cpu", "cpuacct", "freezer", "memory", "pids", "unified"],
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        binaries = {
            "this tree": compile_steps(
                Path(tmp) / "this", HERE.parent / "scheduler" / "runtime" / "monitor"
            ),
            "other": compile_steps(Path(tmp) / "other", args.other.resolve()),
        }
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for name, binary in binaries.items():
                for step in (0, *args.steps):
                    results.setdefault((name, step), []).append(
                        block(binary, step, args.iterations, args.hierarchies)
                    )
    names = {1: "private dirs", 2: "private dirs + cgroup view", 3: "keyring", 4: "seccomp"}
    print(f"{args.iterations} iterations a block, {args.rounds} blocks each; medians, us/iteration")
    for name in binaries:
        base = results[(name, 0)]
        print(
            f"{name}: new mount ns only: children {statistics.median(c for c, _ in base):.1f},"
            f" kernel threads {statistics.median(k for _, k in base):.1f}; on top of it:"
        )
        for step in args.steps:
            full = results[(name, step)]
            child = statistics.median(c for c, _ in full) - statistics.median(c for c, _ in base)
            kernel = statistics.median(k for _, k in full) - statistics.median(k for _, k in base)
            print(
                f"  {names.get(step, step)!s:<28} children {child:6.1f}, kernel threads"
                f" {kernel:6.1f}, total {child + kernel:6.1f}"
            )


if __name__ == "__main__":
    main()
