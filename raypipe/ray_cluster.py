"""The Ray cluster a command runs on: join ``RAY_ADDRESS`` or start a private one on 127.0.0.1, check
that it can place what the run asks for, and free the placement groups Ray Train leaves behind."""

from __future__ import annotations

import os

import ray

from raypipe.errors import InputError


def init_ray() -> None:
    """Attach to ``RAY_ADDRESS`` when set, else start a private local cluster bound to 127.0.0.1.

    ``address="local"``: without it ``ray.init()`` joins whatever cluster ``ray start`` last left on
    this machine (``/tmp/ray/ray_current_cluster``), someone else's included.
    """
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if not address or address.split("://")[-1].split(":")[0] in ("127.0.0.1", "localhost"):
        _stay_on_loopback()
    if not address:
        forget_dead_cluster_address()
    if address:
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError("RAY_ADDRESS", f"cannot join the Ray cluster at {address}: {first} (a token-auth "
                             "cluster also needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH)") from None
    else:
        ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                 _node_ip_address="127.0.0.1")


def check_gpus(per_trial: float) -> None:
    """Refuse, before any trial or retrain starts, GPU settings the Ray cluster cannot place (a trial
    asking for a GPU on a CPU-only cluster would wait PENDING forever)."""
    if per_trial <= 0:
        return
    init_ray()
    have = float(ray.cluster_resources().get("GPU", 0))
    if have < per_trial:
        raise InputError("resources.gpus_per_trial", f"asks for {per_trial:g} GPU(s) per trial but the Ray cluster "
                         f"has {have:g}; set gpus_per_trial: 0 (or --gpus-per-trial 0) to train on CPUs")


def _stay_on_loopback() -> None:
    """Keep a single-machine cluster on 127.0.0.1.

    Ray rewrites 127.0.0.1 to the host's address (for a driver joining a head too), and its GCS, raylet
    and agents then listen on every interface, unless it believes it runs a single-machine
    (Windows/macOS-style) cluster. The variable reaches Ray's own processes; the constant is this
    process's cached copy of it.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] != "0"


def record_placement_group(key: str) -> None:
    """In a Train worker: remember the worker group's placement group in Ray's key-value store."""
    from ray.experimental.internal_kv import _internal_kv_put

    group = ray.util.get_current_placement_group()
    if group is not None:
        _internal_kv_put(key, group.id.hex().encode(), overwrite=True)


def release_placement_group(key: str) -> None:
    """Remove the placement group recorded under ``key``.

    A TorchTrainer run inside a Tune trial keeps its workers' placement group after it returns (Ray
    issue 54305, still so in 2.60): on a small cluster the next trial then waits for CPUs forever.
    """
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    recorded = _internal_kv_get(key)
    if recorded:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(recorded.decode()))))
        _internal_kv_del(key)


def forget_dead_cluster_address() -> None:
    """Remove Ray's "current cluster" file (``/tmp/ray/ray_current_cluster``) when nothing answers at it.

    ``ray start`` writes it and only ``ray stop`` removes it; a head stopped otherwise (``make ray-down``,
    a crash) leaves it behind. Ray's state API reads it even inside a private cluster: Ray Train's
    placement-group cleaner then waits on a dead address, and every DDP run's shutdown stalls 12 s
    (``Failed to stop PlacementGroupCleaner gracefully``). A live address is left alone.
    """
    import socket

    from ray._common.utils import get_ray_address_file

    path = get_ray_address_file(None)
    try:
        host, port = open(path).read().strip().rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=0.5):
            return
    except (OSError, ValueError):
        pass
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
