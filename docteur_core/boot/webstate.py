"""Which `docteur boot --http` guests are running, for `docteur boot --stop`.

A running one is a file `http-PORT.json` in the state folder
($XDG_RUNTIME_DIR/docteur, else /tmp/docteur-UID), written when it starts
and removed when it stops: its pid, the process's start time (so that a
pid reused by another process is never signalled), the address and the
image. `--stop` sends SIGTERM to each (the boot then stops QEMU and nbdkit
as on Ctrl-C) and waits until it is gone. A file whose process is gone
(the boot was killed) is removed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STOP_PATIENCE = 60.0


def state_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "docteur"
    return Path(f"/tmp/docteur-{os.getuid()}")


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: when the process started (clock ticks);
    None when it is gone, or has exited and waits for its parent (a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(b")", 1)[1].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


@contextmanager
def registered(host: str, port: int, image: str) -> Iterator[None]:
    """This process serves `host:port` while the block runs."""
    folder = state_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"http-{port}.json"
    pid = os.getpid()
    record = {"pid": pid, "start": _start_time(pid), "host": host, "port": port,
              "image": os.path.abspath(image) if "://" not in image else image}
    partial = path.with_name(path.name + f".{pid}.tmp")
    partial.write_text(json.dumps(record))
    partial.replace(path)
    try:
        yield
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == pid:
                path.unlink()
        except (OSError, ValueError):
            pass


def running() -> list[tuple[Path, dict[str, Any]]]:
    """(file, record) of each guest server still running; stale files removed.
    A record is the JSON object `registered` wrote (pid, start, host, port,
    image), as json.loads gives it."""
    found = []
    for path in sorted(state_dir().glob("http-*.json")):
        try:
            record = json.loads(path.read_text())
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _start_time(pid) is None or _start_time(pid) != record.get("start"):
            path.unlink(missing_ok=True)
            continue
        found.append((path, record))
    return found


def stop_all(port: int | None, log: Callable[[str], None]) -> int:
    """Stop the guest serving `port`, or every one; 1 when none runs."""
    from .runner import BootError

    targets = [(p, r) for p, r in running() if port is None or r.get("port") == port]
    if not targets:
        raise BootError("no guest is serving " + (f"port {port}" if port else "HTTP")
                        + " (started with docteur boot IMAGE --http PORT)")
    for _, record in targets:
        os.kill(record["pid"], signal.SIGTERM)
    deadline = time.monotonic() + STOP_PATIENCE
    for path, record in targets:
        pid = record["pid"]
        while _start_time(pid) == record.get("start") and time.monotonic() < deadline:
            time.sleep(0.1)
        if _start_time(pid) == record.get("start"):
            raise BootError(f"the guest serving port {record['port']} (pid {pid}) did not stop "
                            f"within {STOP_PATIENCE:.0f} s")
        path.unlink(missing_ok=True)
        log(f"stopped the guest serving {record['image']} on "
            f"http://{record['host']}:{record['port']}/")
    return 0
