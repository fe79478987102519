"""Champion / challenger aliases on a real MLflow registry (SQLite): who wins, rollback, concurrency."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
from mlflow.tracking import MlflowClient

from raypipe.errors import InputError
from raypipe.ship.promote import CHAMPION, _lock, current_champion, decide, rollback

NAME = "demo.fracture-AP-1"


@pytest.fixture
def registry(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model(NAME)
    return client, tmp_path


def new_version(client, tmp_path, auroc: float, split: str = "split-a") -> str:
    source = tmp_path / "model"
    source.mkdir(exist_ok=True)
    version = client.create_model_version(NAME, str(source)).version
    client.set_model_version_tag(NAME, version, "split_hash", split)
    client.set_model_version_tag(NAME, version, "test_auroc", repr(auroc))
    return version


def promote(client, tmp_path, auroc: float, split: str = "split-a", margin: float = 0.0):
    version = new_version(client, tmp_path, auroc, split)
    with _lock(tmp_path, NAME):
        return decide(client, NAME, version, "auroc", auroc, split, margin)


def test_first_is_champion_worse_never_takes_it_better_does(registry):
    client, tmp = registry
    assert promote(client, tmp, 0.80).alias == CHAMPION
    worse = promote(client, tmp, 0.79)
    assert worse.alias == "challenger" and "does not beat champion v1" in worse.reason
    assert str(current_champion(client, NAME).version) == "1"
    assert promote(client, tmp, 0.82, margin=0.05).alias == "challenger"  # within the margin
    better = promote(client, tmp, 0.90, margin=0.05)
    assert better.alias == CHAMPION and better.previous_champion == "1"
    assert str(current_champion(client, NAME).version) == better.version
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "3"


def test_other_test_split_is_not_comparable(registry):
    client, tmp = registry
    promote(client, tmp, 0.70)
    other = promote(client, tmp, 0.95, split="split-b")
    assert other.alias == "challenger" and "another split" in other.reason


def test_rollback_restores_the_replaced_champion(registry):
    client, tmp = registry
    promote(client, tmp, 0.70)
    promote(client, tmp, 0.80)
    assert rollback(client, NAME, tmp) == "1"
    assert str(current_champion(client, NAME).version) == "1"
    with pytest.raises(InputError, match="replaced no earlier version"):
        rollback(client, NAME, tmp)


def _promote_in_process(args):
    uri, tmp, auroc = args
    from pathlib import Path

    client = MlflowClient(uri)
    return str(promote(client, Path(tmp), auroc).version)


def test_concurrent_promotions_leave_one_champion_the_best(registry):
    client, tmp = registry
    scores = [0.61, 0.74, 0.69]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(scores), mp_context=context) as pool:
        versions = list(pool.map(_promote_in_process, [(client.tracking_uri, str(tmp), s) for s in scores]))
    assert len(set(versions)) == 3
    champion = current_champion(client, NAME)
    assert float(champion.tags["test_auroc"]) == max(scores)
    promotions = [client.get_model_version(NAME, v).tags["promotion"] for v in versions]
    assert sum(p.startswith("champion") for p in promotions) >= 1
