"""`make ray-down` stops the head on its port and leaves every other Ray process on the machine alone."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from raypipe.train.head import alive, head_processes, stop

# A stand-in for a head process: a command line naming the GCS port, and a renamed child (as Ray's
# workers and agents are) that only its parent ties to the head.
FAKE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def fake_ray(gcs: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", FAKE, "ray", f"--gcs-address={gcs}"],
                            stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_ray_down_stops_only_the_head_on_its_port() -> None:
    head, head_child = fake_ray("127.0.0.1:41234")
    other, other_child = fake_ray("127.0.0.1:412340")  # a port that merely starts the same
    try:
        assert head_processes(41234) == {head.pid, head_child}
        assert stop(41234, grace_s=5) == 2
        head.wait(timeout=10)
        deadline = time.monotonic() + 5
        while alive(head_child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(head_child)
        assert other.poll() is None and alive(other_child)
        assert stop(41234) == 0  # nothing left: a second ray-down is harmless
    finally:
        for proc, child in ((head, head_child), (other, other_child)):
            proc.kill()
            subprocess.run(["kill", "-9", str(child)], capture_output=True)
