"""One process, two MLflow stores: registering a champion in one leaves no trace in how the process
(or a command it starts) reaches the other. mlflow's fluent API keeps process-wide URIs and exports
them as environment variables; promote and predict must put them back."""

from __future__ import annotations

import os

from mlflow.tracking import MlflowClient

from raypipe.ship.predict import Router
from raypipe.tracking.runs import store_client
from tests.ship.champions import register_champion


def test_registering_and_loading_in_one_store_leave_another_store_its_own_registry(tmp_path):
    exported = {k: os.environ.get(k) for k in ("MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_URI")}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    uri_a = register_champion(tmp_path / "a", "iso", "fracture")
    uri_b = register_champion(tmp_path / "b", "iso", "age")
    assert Router(store_client(uri_a), "iso").champion("fracture") is not None  # a models:/ load from A

    assert {k: os.environ.get(k) for k in exported} == exported  # what a subprocess would inherit
    for client in (store_client(uri_b), MlflowClient(uri_b)):  # the plain client too: no global left
        assert [m.name for m in client.search_registered_models()] == ["iso.age"]
    assert [m.name for m in store_client(uri_a).search_registered_models()] == ["iso.fracture"]
