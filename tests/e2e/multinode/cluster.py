"""A two-node Ray cluster on this machine, in its own process, for the multi-node tests.

    python -m tests.e2e.multinode.cluster HEAD_CPUS WORKER_CPUS

Starts a head and one worker node (``ray.cluster_utils.Cluster``: separate raylets, each with its own
CPUs, both on 127.0.0.1, no dashboard) with the token auth of the environment (``RAY_AUTH_MODE``,
``RAY_AUTH_TOKEN_PATH``), prints one JSON line ``{"address", "head", "worker"}`` (node ids), then
obeys stdin: ``remove-worker`` kills the worker node's processes at once, as a lost machine would
(answers ``{"removed": id}``); end of input shuts the cluster down.

A process of its own so the test process never joins Ray, and every Ray process this cluster starts
ends with it.
"""

from __future__ import annotations

import json
import sys


def main(head_cpus: int, worker_cpus: int) -> None:
    from ray._common.utils import reset_ray_address
    from ray.cluster_utils import Cluster

    common = {"node_ip_address": "127.0.0.1", "include_dashboard": False, "object_store_memory": 100 << 20}
    # Fast node-death detection: a killed node's trials fail within seconds, not after a minute.
    health = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
              "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={**common, "num_cpus": head_cpus,
                                                            "_system_config": health})
    try:
        # Cluster writes its address where a bare `ray.init()` of any other process on this machine
        # would find and join it: take it back out (our driver gets RAY_ADDRESS).
        reset_ray_address()
        worker = cluster.add_node(**common, num_cpus=worker_cpus)
        cluster.wait_for_nodes()
        print(json.dumps({"address": cluster.address, "head": cluster.head_node.node_id,
                          "worker": worker.node_id}), flush=True)
        for line in sys.stdin:
            if line.strip() == "remove-worker" and worker in cluster.worker_nodes:
                cluster.remove_node(worker, allow_graceful=False)
                print(json.dumps({"removed": worker.node_id}), flush=True)
    finally:  # at once: the test is over, nothing to drain
        for node in [*cluster.worker_nodes, cluster.head_node]:
            cluster.remove_node(node, allow_graceful=False)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
