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


def test_a_stopped_heads_address_file_is_forgotten_a_live_ones_kept(tmp_path, monkeypatch):
    """Ray's state API reads /tmp/ray/ray_current_cluster even inside a private cluster: left pointing at a
    stopped head, every DDP run's shutdown stalls 12 s. `ray stop` removes it; so do ray-down and init_ray
    when nothing answers there."""
    import socket

    from raypipe.ray_cluster import forget_dead_cluster_address

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    address_file = tmp_path / "ray" / "ray_current_cluster"
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))
        live.listen()
        address_file.write_text(f"127.0.0.1:{live.getsockname()[1]}")
        forget_dead_cluster_address()
        assert address_file.exists()  # someone's head answers there: not ours to forget
    forget_dead_cluster_address()  # the socket is closed now: a stopped head
    assert not address_file.exists()
    forget_dead_cluster_address()  # no file: nothing to do
