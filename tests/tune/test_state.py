"""Study state survives Tune's pickling: a restored scheduler or callback reports to the live table."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

from raypipe.tune.progress import table
from raypipe.tune.state import StudyState, trial_number


def test_unpickled_state_is_the_live_object_of_this_process():
    live = StudyState.open("exp/fracture/round-1", target="fracture", monitor="val_auroc", total=4)
    restored = pickle.loads(pickle.dumps({"scheduler_state": live}))["scheduler_state"]
    assert restored is live
    restored.pruned.add("t1")
    assert live.was_pruned("t1")


def test_counts_and_best_follow_the_trials():
    state = StudyState.open("exp/age/round-2", target="age", monitor="val_macro_f1", total=3)
    first, second = SimpleNamespace(experiment_tag="1_lr=0.1"), SimpleNamespace(experiment_tag="2_lr=0.01")
    state.started_trial("a")
    state.result(first, 0.3)
    state.result(second, 0.5)
    state.result(first, float("nan"))
    state.ended_trial("a")
    state.started_trial("b")
    state.ended_trial("b", failed=True)
    assert (state.done, len(state.failed), state.best, state.best_trial) == (2, 1, 0.5, 2)
    assert trial_number(second) == 2 and trial_number(SimpleNamespace()) == 0
    rendered = table([state]).columns
    assert [c.header for c in rendered][:6] == ["target", "done", "running", "pruned", "failed", "best"]
