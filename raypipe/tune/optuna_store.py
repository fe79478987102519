"""A study's Optuna side: open its persisted study, close trials a dead driver left RUNNING, and
draw Optuna's plots (optimization history, parameter importance, parallel coordinates)."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.tracking import MlflowClient

from raypipe.tracking.runs import scrub

if TYPE_CHECKING:
    from raypipe.tune.plan import Study


def optuna_study(study: Study):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(study.optuna_storage.resolve())))
    return optuna.load_study(study_name=study.optuna_name, storage=storage)


def close_stale_trials(study: Study) -> int:
    """Trials Optuna handed out that no Tune trial finished (the driver died after asking): FAIL.

    Called when every Tune trial of the round has ended, so nothing of this study is still running.
    """
    import optuna

    ostudy = optuna_study(study)
    stale = [t for t in ostudy.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for trial in stale:
        ostudy.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return len(stale)


def log_study_plots(client: MlflowClient, run_id: str, study: Study) -> None:
    """Optuna's optimization history, parameter importance and parallel coordinates as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    ostudy = optuna_study(study)
    complete = [t for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = {"optimization_history": ovm.plot_optimization_history, "parallel_coordinate": ovm.plot_parallel_coordinate}
    if len(complete) >= 2:
        plots["param_importances"] = ovm.plot_param_importances
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
        for name, draw in plots.items():
            try:
                ax = draw(ostudy)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. one distinct value only
                client.set_tag(run_id, f"raypipe.plot.{name}", scrub(f"skipped: {exc}")[:250])
                continue
            fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
            fig.set_size_inches(9, 5)
            fig.tight_layout()
            out = Path(tmp) / f"{name}.png"
            fig.savefig(out, dpi=110)
            plt.close(fig)
            client.log_artifact(run_id, str(out), "study_plots")
