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
