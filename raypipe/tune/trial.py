"""One Tune trial: the sampled parameters on top of the study's config, then the one training loop.

W = 1: the loop runs in the trial's own process and reports through ``ray.tune`` (no worker group:
~15-40 s cheaper per trial). W > 1: the trial builds a ``TorchTrainer`` (the Ray Train V2 shape) whose
rank-0 reports reach Tune through ``TuneReportCallback``; its run name holds the trial id, so a
resumed trial continues the same Train run from its last checkpoint.

A trial process may run on any node of the cluster. It needs only what travels with it: the job
(config, row indices, the image cache's path) and a storage path or URI every node reaches. It never
opens MLflow: each report carries the node it ran on (``session.NODE_KEY``), and the driver's
callbacks (``StudyLogger``, ``TagTrialNode``) write the runs, through the tracking URI.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ray import tune

from raypipe import ray_cluster
from raypipe.train import checkpoint, loop
from raypipe.train.loop import TrainJob
from raypipe.train.session import NODE_KEY, RaySession


def run_trial(config: dict[str, Any], job: TrainJob, train_storage: str, cpus_per_worker: float = 1.0,
              gpus_per_worker: float = 0.0) -> None:
    """``train_storage``: a path or URI that every node reaches (``<study>/train``)."""
    trial_job = job.with_config(dataclasses.replace(job.cfg, **config))
    if trial_job.cfg.workers <= 1:
        loop.run(trial_job, RaySession("tune", trial_job.cfg.use_gpu))
        return

    # Ray Train only where it is used: a W=1 trial process never imports it (a second or more per process)
    from ray.tune.integration.ray_train import TuneReportCallback

    from raypipe.train import launch

    trial_id = tune.get_context().get_trial_id()
    trainer = launch.torch_trainer(trial_job, f"trial-{trial_id}", train_storage, [TuneReportCallback()],
                                   cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                                   placement_group_key=placement_group_key(trial_id))
    trainer.fit()


def placement_group_key(trial_id: str) -> str:
    return f"raypipe-placement-group-{trial_id}"


class ReleaseTrainWorkers(tune.Callback):
    """Driver side: when a trial ends, free what its process may have left behind.

    Tune stops a trial (ASHA, or its last epoch) by killing the trial actor, often before
    ``trainer.fit()`` returns, and Ray 2.60 leaves the Train workers' placement group behind (Ray
    issue 54305): the next W > 1 trial then waits for CPUs forever. A kill during or right after a
    report also leaves the epoch's checkpoint staging folder in the temp folder (tens of MB a trial).
    Only the driver sees every end. (Staging folders of trials on other nodes stay there: this
    sweep reaches the driver's node, where W = 1 studies of one machine run.)
    """

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        ray_cluster.release_placement_group(placement_group_key(trial.trial_id))
        checkpoint.remove_staging(trial.trial_id)

    on_trial_error = on_trial_complete


class TagTrialNode(tune.Callback):
    """Driver side: tag each trial's MLflow child run with the Ray node(s) it trained on.

    ``raypipe.node`` is the node of the latest report; ``raypipe.nodes`` lists every node in order, so
    a trial restarted elsewhere after its node was lost shows both. Runs through ``StudyLogger``
    (placed before this callback), which owns the child runs.
    """

    def __init__(self, logger) -> None:
        self.logger = logger
        self._nodes: dict[str, list[str]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"logger": self.logger, "_nodes": {}}

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict[str, Any], **info) -> None:
        node = result.get(NODE_KEY)
        if not isinstance(node, str) or not node:
            return
        run_id = self.logger.run_id(trial)
        nodes = self._nodes.get(trial.trial_id)
        if nodes is None:  # after a driver restart: continue the list the run already has
            known = self.logger.client.get_run(run_id).data.tags.get("raypipe.nodes", "")
            nodes = self._nodes[trial.trial_id] = [n for n in known.split(",") if n]
        if nodes and nodes[-1] == node:
            return
        nodes.append(node)
        self.logger.client.set_tag(run_id, "raypipe.node", node)
        self.logger.client.set_tag(run_id, "raypipe.nodes", ",".join(nodes))
