"""Time, CPU and peak memory of one command, for the benchmarks that compare with git.

Peak RSS is what the kernel counts for the command alone. It must come
from a process forked by a small parent: Linux carries `ru_maxrss` across
exec, and Python's subprocess starts children with vfork, so a child
started straight from a benchmark that holds an image in memory would
report the benchmark's own peak. `/usr/bin/time` forks its child itself;
without it a tiny `python -S` wrapper does the same (its own few MiB are
then an upper bound on what leaks into the figure).

CPU time (user + sys) is reported beside wall time: the machine is often
shared, and the ratio of CPU times is what load disturbs least.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None

_WRAPPER = r"""
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {ru.ru_utime} {ru.ru_stime} {ru.ru_maxrss}")
"""


@dataclass
class Measured:
    wall: float  # seconds
    cpu: float  # user + sys seconds
    rss_mib: float  # peak resident memory
    out: bytes = b""

    def ratio(self, other: "Measured") -> str:
        return (f"{self.wall / other.wall:.2f}x time ({self.cpu / max(other.cpu, 1e-3):.2f}x "
                f"CPU), {self.rss_mib / max(other.rss_mib, 1e-3):.2f}x memory")

    def __str__(self) -> str:
        return f"{self.wall:.3f} s ({self.cpu:.3f} s CPU), {self.rss_mib:.0f} MiB"


def measure(cmd: list[str], stdin: bytes | None = None, keep_output: bool = False,
            env: dict | None = None) -> Measured:
    """Run `cmd` once; its output is discarded unless `keep_output`.

    Python runs as installed: pip compiles the bytecode at install time, so
    PYTHONDONTWRITEBYTECODE (set on some machines) is dropped and the first
    of `best`'s runs writes it; otherwise every run would compile every
    module again (~40 ms for `docteur verify`) and measure that instead.
    """
    env = {k: v for k, v in (os.environ if env is None else env).items()
           if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.NamedTemporaryFile("r", suffix=".time") as rep:
        if TIME:
            full = [TIME, "-f", "0 %U %S %M", "-o", rep.name, *cmd]
        else:
            full = [sys.executable, "-S", "-c", _WRAPPER, rep.name, *cmd]
        t = time.perf_counter()
        proc = subprocess.run(full, input=stdin, env=env,
                              stdout=subprocess.PIPE if keep_output else subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
        wall = time.perf_counter() - t
        fields = rep.read().split()
    if proc.returncode or len(fields) < 4:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}: "
                         f"{proc.stderr.decode(errors='replace').strip()[-500:]}")
    return Measured(wall, float(fields[-3]) + float(fields[-2]), int(fields[-1]) / 1024,
                    proc.stdout if keep_output else b"")


def best(cmd: list[str], repeat: int, **kw) -> Measured:
    """The fastest of `repeat` runs (its peak memory is the largest seen)."""
    runs = [measure(cmd, **kw) for _ in range(max(1, repeat))]
    fast = min(runs, key=lambda m: m.wall)
    return Measured(fast.wall, min(m.cpu for m in runs), max(m.rss_mib for m in runs), fast.out)


def load() -> str:
    """What else the machine is doing, for the record (`uptime`'s load averages)."""
    try:
        return "load average " + " ".join(open("/proc/loadavg").read().split()[:3]) + \
            f" on {os.cpu_count()} CPUs"
    except OSError:
        return "load unknown"


def find_shared(root: Path) -> Path | None:
    """The shared folder beside the checkout ($DOCTEUR_SHARED, else ../shared)."""
    env = os.environ.get("DOCTEUR_SHARED")
    for cand in ([Path(env)] if env else []) + [root.parent / "shared", root / "shared"]:
        if (cand / "corpus" / "unpack.sh").exists():
            return cand
    return None
