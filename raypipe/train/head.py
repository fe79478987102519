"""Stop the Ray head that `make ray-up` started on one port, and nothing else.

    python -m raypipe.train.head stop PORT

`ray stop --force` kills every Ray process on the machine: other users' heads, and the local clusters
of raypipe commands running beside it. A head's own processes are the ones that name its GCS port on
their command line (GCS server, raylet, dashboard, monitors, client server), plus everything below
them (workers and agents rename themselves, so only their parent ties them to the head). Linux /proc
only; elsewhere it falls back to `ray stop --force`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process we can read."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        out[int(stat.parent.name)] = (ppid, cmdline)
    return out


def with_descendants(roots: set[int], procs: dict[int, tuple[int, str]] | None = None) -> set[int]:
    """``roots`` and every process below them."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in (procs if procs is not None else _processes()).items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = set(roots), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    return tree


def head_processes(port: int) -> set[int]:
    procs = _processes()
    names_port = re.compile(rf"(?:127\.0\.0\.1:|gcs_server_port=|--port[= ]){port}(?:\s|$)")
    roots = {pid for pid, (_, cmd) in procs.items() if "ray" in cmd and names_port.search(cmd)}
    roots.discard(os.getpid())
    return with_descendants(roots, procs)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie its parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop(port: int, grace_s: float = 5.0) -> int:
    """SIGTERM the head's processes, SIGKILL what is left after ``grace_s``; returns how many there were."""
    pids = head_processes(port)
    found = len(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.2)
        pids = {pid for pid in pids if alive(pid)}
        if not pids:
            break
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "stop" or not argv[1].isdigit():
        print("usage: python -m raypipe.train.head stop PORT", file=sys.stderr)
        return 2
    if not Path("/proc/self/stat").exists():
        return subprocess.call([str(Path(sys.executable).parent / "ray"), "stop", "--force"])
    found = stop(int(argv[1]))
    from raypipe.ray_cluster import forget_dead_cluster_address

    forget_dead_cluster_address()  # as `ray stop` does: no later Ray process looks for the stopped head
    print(f"stopped the Ray head on 127.0.0.1:{argv[1]} ({found} processes)" if found
          else f"no Ray head on 127.0.0.1:{argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
