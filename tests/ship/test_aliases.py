"""Champion / challenger aliases on a real MLflow registry (SQLite): decided on out-of-fold evidence, never
on test; chance is never champion; rollback; concurrency."""

from __future__ import annotations

import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from raypipe.errors import InputError
from raypipe.ship import selection
from raypipe.ship.aliases import CHAMPION, _lock, current_champion, decide, rollback

NAME = "demo.fracture-AP-1"


@pytest.fixture
def registry(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model(NAME)
    return client, tmp_path


def scores(quality: float, seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, out-of-fold scores whose separation grows with ``quality`` (0 = chance), patient codes."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    noise = np.random.default_rng(seed).normal(0, 1, n)
    return y, 1 / (1 + np.exp(-(quality * (2 * y - 1) + noise))), np.arange(n) // 2


def new_version(client, tmp_path, quality: float, split: str = "split-a", seed: int = 1,
                test_auroc: float = 0.7) -> tuple[str, selection.Selection]:
    """A registered version with its promote run's out-of-fold evidence logged, as promote leaves it."""
    y, p, groups = scores(quality, seed)
    evidence = selection.evidence(y, p, groups, folds=3, n_boot=200)
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifact(run.info.run_id, str(evidence.save(Path(tmp))), "selection")
    source = tmp_path / "model"
    source.mkdir(exist_ok=True)
    version = client.create_model_version(NAME, str(source), run_id=run.info.run_id).version
    client.set_model_version_tag(NAME, version, "split_hash", split)
    client.set_model_version_tag(NAME, version, "test_auroc", repr(test_auroc))
    return version, evidence


def promote(client, tmp_path, quality: float, split: str = "split-a", margin: float = 0.0, seed: int = 1,
            test_auroc: float = 0.7):
    version, evidence = new_version(client, tmp_path, quality, split, seed, test_auroc)
    with _lock(tmp_path, NAME):
        return decide(client, NAME, version, evidence, split, margin, n_boot=200)


def test_first_is_champion_worse_never_takes_it_clearly_better_does(registry):
    client, tmp = registry
    assert promote(client, tmp, 0.6).alias == CHAMPION
    worse = promote(client, tmp, 0.3, seed=2)
    assert worse.alias == "challenger" and "not better" in worse.reason
    assert str(current_champion(client, NAME).version) == "1"
    same = promote(client, tmp, 0.6, seed=3)  # the same recipe again: a noisy draw must not win
    assert same.alias == "challenger"
    better = promote(client, tmp, 3.0, seed=4, margin=0.02)
    assert better.alias == CHAMPION, better.reason
    assert better.previous_champion == "1" and "paired 95% CI" in better.reason
    assert str(current_champion(client, NAME).version) == better.version
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "3"


def test_the_test_set_never_decides(registry):
    """A challenger with the better test figure but a worse out-of-fold figure leaves the champion as it
    is; the reverse moves it."""
    client, tmp = registry
    promote(client, tmp, 1.5, test_auroc=0.70)
    lucky = promote(client, tmp, 0.5, seed=2, test_auroc=0.95)
    assert lucky.alias == "challenger" and str(current_champion(client, NAME).version) == "1"
    honest = promote(client, tmp, 3.0, seed=3, test_auroc=0.60)
    assert honest.alias == CHAMPION and str(current_champion(client, NAME).version) == honest.version


def test_a_version_whose_ci_includes_chance_is_never_champion(registry):
    client, tmp = registry
    coin = promote(client, tmp, 0.0, seed=4)  # a coin: AUROC 0.515 (0.431-0.605)
    assert coin.alias == "challenger" and "includes chance" in coin.reason
    assert current_champion(client, NAME) is None
    assert client.get_model_version(NAME, coin.version).tags["raypipe.chance_floor"] == "failed"


def test_other_split_is_not_comparable(registry):
    client, tmp = registry
    promote(client, tmp, 1.0)
    other = promote(client, tmp, 3.0, split="split-b")
    assert other.alias == "challenger" and "another split" in other.reason


def test_rollback_restores_the_replaced_champion(registry):
    client, tmp = registry
    promote(client, tmp, 1.0)
    promote(client, tmp, 3.0, seed=2)
    assert rollback(client, NAME, tmp) == "1"
    assert str(current_champion(client, NAME).version) == "1"
    with pytest.raises(InputError, match="replaced no earlier version"):
        rollback(client, NAME, tmp)


def _promote_in_process(args):
    uri, tmp, quality = args
    client = MlflowClient(uri)
    return str(promote(client, Path(tmp), quality, seed=int(quality * 10)).version)


def test_concurrent_promotions_leave_one_champion(registry):
    client, tmp = registry
    qualities = [1.0, 3.0, 2.0]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(qualities), mp_context=context) as pool:
        versions = list(pool.map(_promote_in_process, [(client.tracking_uri, str(tmp), q) for q in qualities]))
    assert len(set(versions)) == 3
    assert current_champion(client, NAME) is not None
    promotions = [client.get_model_version(NAME, v).tags["promotion"] for v in versions]
    assert sum(p.startswith("champion") for p in promotions) >= 1


def test_cross_fit_scores_every_image_once_by_a_model_that_never_saw_its_patient():
    rows, y = np.arange(60), np.tile([0, 1], 30)
    groups = np.arange(60) // 3  # 20 patients, 3 images each
    seen = []

    def score_fold(fold, train_idx, held_idx):
        assert not set(groups[train_idx]) & set(groups[held_idx])  # patient-grouped
        seen.append((fold, len(held_idx)))
        return np.full(len(held_idx), fold, dtype=float)

    oof = selection.cross_fit(rows, y, groups, 3, 0, score_fold)
    assert [f for f, _ in seen] == [0, 1, 2] and sum(n for _, n in seen) == 60
    for g in range(20):  # a patient's images are all held out in the same fold
        assert len(set(oof[groups == g])) == 1
