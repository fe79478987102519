"""The one loop, in-process: resumes from its checkpoints and refuses pickled code in them."""

from __future__ import annotations

import pickle

import pytest

from raypipe.config import TrainConfig
from raypipe.data.prepare import prepare
from raypipe.data.targets import parse_target
from raypipe.train import checkpoint, loop
from raypipe.train.job import make_job
from raypipe.train.session import LocalSession
from tests.conftest import write_grazpedwri


@pytest.fixture
def job_factory(tmp_path):
    data = write_grazpedwri(tmp_path / "d", n_patients=12, size=(64, 48))

    def make(epochs: int):
        cfg = TrainConfig(image_size=32, epochs=epochs, patience=10, batch_size=8, test_per_class=0,
                          val_fraction=0.34, augment=0.0)
        prepared = prepare(data, cfg, tmp_path / "run")
        return make_job(prepared, parse_target("fracture", prepared.scheme), cfg)

    return make


def test_resume_continues_from_last_checkpoint(job_factory, tmp_path):
    reports: list[int] = []
    out = tmp_path / "out"
    loop.run(job_factory(2), LocalSession(out, "val_auroc", on_report=lambda m, c: reports.append(m["epoch"])))
    state = loop.run(job_factory(3), LocalSession(out, "val_auroc", on_report=lambda m, c: reports.append(m["epoch"])))
    assert reports == [1, 2, 3] and state["epoch"] == 3
    last = LocalSession(out, "val_auroc").latest_checkpoint()
    assert last.name == "epoch_003" and checkpoint.read_state(last)["epoch"] == 3


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_in_checkpoint_is_refused(job_factory, tmp_path):
    out = tmp_path / "out"
    loop.run(job_factory(1), LocalSession(out, "val_auroc"))
    last = LocalSession(out, "val_auroc").latest_checkpoint()
    (last / checkpoint.OPTIM_FILE).write_bytes(pickle.dumps({"optimizer": _Evil()}))
    with pytest.raises(pickle.UnpicklingError):
        loop.run(job_factory(2), LocalSession(out, "val_auroc"))


def test_a_rank_whose_share_fits_one_batch_still_trains():
    from torch.utils.data import DistributedSampler

    data = list(range(20))
    small = [loop.train_data_loader(data, DistributedSampler(data, 2, rank, shuffle=False), 16) for rank in (0, 1)]
    assert [len(x) for x in small] == [1, 1]  # 10 images per rank, batch 16: one batch each, not zero
    data = list(range(40))
    big = loop.train_data_loader(data, DistributedSampler(data, 2, 0, shuffle=False), 16)
    assert len(big) == 1  # 20 per rank: the 4-image remainder is dropped


def test_a_replay_reproduces_the_trial_up_to_its_peak(job_factory, tmp_path):
    """A promotion retrains the trial's recipe up to its best epoch: stopping there while the schedule
    keeps the trial's length (or replaying its learning rates) gives the trial's model; shortening
    `epochs` to the peak (what promotion used to do) anneals the rate to zero early and does not."""
    import dataclasses

    import numpy as np

    def run(job, out):
        seen = []
        loop.run(job, LocalSession(out, "val_auroc", on_report=lambda m, c: seen.append(
            (m["lr"], m["train_loss"], checkpoint.read_predictions(c)["scores"]))))
        return seen

    trial = job_factory(4)
    original = run(trial, tmp_path / "trial")
    lrs = [lr for lr, _, _ in original]
    for cfg in (dataclasses.replace(trial.cfg, stop_epoch=2),
                dataclasses.replace(trial.cfg, stop_epoch=2, lr_by_epoch=lrs[:2])):
        replay = run(trial.with_config(cfg), tmp_path / f"replay-{cfg.lr_by_epoch is None}")
        assert len(replay) == 2 and [lr for lr, _, _ in replay] == lrs[:2]
        assert replay[1][1] == original[1][1]
        np.testing.assert_array_equal(replay[1][2], original[1][2])
    shortened = run(trial.with_config(dataclasses.replace(trial.cfg, epochs=2)), tmp_path / "short")
    assert shortened[1][0] != lrs[1] and not np.array_equal(shortened[1][2], original[1][2])
