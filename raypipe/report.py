"""One self-contained HTML page (images inlined) of an experiment's shipped models and their tuning.

Read back from MLflow, so it can be rebuilt at any time: per target, the latest promotion's test table
with 95% CIs, ROC / PR curves and reliability diagram (binary) or confusion matrix (age), subgroup
forest plots and tables, a Grad-CAM gallery of true / false positives / negatives, and the tuning summary of the study it came from (best params, trials finished / pruned / failed, Optuna's
parameter importance plot).
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from raypipe import fsio
from raypipe.errors import InputError
from raypipe.tracking import plots

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:32%;margin:.2em}
h2{border-bottom:2px solid #ddd;padding-bottom:.2em}.note{color:#666;font-size:.9em}
.pair{display:flex;gap:1em;align-items:flex-start}.pair img{max-width:48%}
.gallery{display:grid;grid-template-columns:repeat(4,1fr);gap:.8em}.gallery img{max-width:100%}
figure{margin:0 0 .6em}figcaption{font-size:.8em;color:#444}h4{margin:.2em 0}"""


def _img(path: Path | None) -> str:
    if path is None or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def _fmt(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def build(client: MlflowClient, experiment: str, out: Path) -> Path:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise InputError(f"experiment {experiment}", "not found in MLflow")
    promotions = client.search_runs([exp.experiment_id], "tags.`raypipe.kind` = 'promote' and "
                                    "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])
    latest: dict[str, object] = {}
    for run in promotions:
        latest.setdefault(run.data.tags["raypipe.target"], run)
    if not latest:
        raise InputError(f"experiment {experiment}", "has no finished promotion to report on")
    rows, sections = [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for target in sorted(latest):
            run = latest[target]
            run_id = run.info.run_id
            folder = tmp / target.replace("/", "-")
            folder.mkdir()
            evaluation = json.loads(Path(client.download_artifacts(run_id, "test_evaluation.json", str(folder)))
                                    .read_text())
            with np.load(client.download_artifacts(run_id, "test_predictions.npz", str(folder))) as preds:
                y, scores = preds["y"], preds["scores"]
            metrics, ci = evaluation["metrics"], evaluation["ci95"]
            main = "auroc" if "auroc" in metrics else "macro_f1"
            rows.append(
                f"<tr><td>{html.escape(target)}</td><td>{run.data.tags.get('raypipe.alias', '-')}</td>"
                f"<td>{evaluation['n_images']} / {evaluation['n_patients']}</td>"
                + "".join(f"<td>{_fmt(metrics.get(k))}<br><span class=note>{_ci(ci.get(k))}</span></td>"
                          for k in ("auroc", "auprc", "sensitivity", "specificity", "f1", "macro_f1"))
                + f"<td>{_fmt(metrics.get('ece'))}</td></tr>")
            pictures = []
            if main == "auroc":
                pictures += [plots.roc_png(y, scores, folder / "roc.png", f"{target} test ROC", evaluation["threshold"]),
                             plots.pr_png(y, scores, folder / "pr.png", f"{target} test PR"),
                             plots.reliability_png(evaluation["calibration"]["bins"], evaluation["calibration"]["ece"],
                                                   folder / "reliability.png", f"{target} calibration")]
            else:
                names = evaluation.get("class_names") or [str(i) for i in range(len(evaluation["confusion_matrix"]))]
                pictures.append(plots.confusion_png(np.asarray(evaluation["confusion_matrix"]), names,
                                                    folder / "confusion.png", f"{target} test confusion"))
            sections.append(f"<h2>{html.escape(target)}</h2><p class=note>{html.escape(run.data.tags.get('raypipe.reason', ''))}"
                            f"</p>{_decision(evaluation)}{''.join(_img(p) for p in pictures)}{_subgroups(evaluation, main, folder, target)}"
                            f"{_shortcut_audit(client, run_id, folder)}"
                            f"{_gallery(client, run_id, evaluation, folder)}"
                            f"{_tuning(client, exp.experiment_id, run, folder)}")
    header = ("<tr><th>target</th><th>alias</th><th>images / patients</th><th>AUROC</th><th>AUPRC</th>"
              "<th>sensitivity</th><th>specificity</th><th>F1</th><th>macro-F1</th><th>ECE</th></tr>")
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>raypipe report: {html.escape(experiment)}</title>"
            f"<style>{STYLE}</style></head><body><h1>raypipe report: {html.escape(experiment)}</h1>"
            f"<p class=note>Fixed, patient-disjoint test set, evaluated once per version to report; champions are "
            f"decided on out-of-fold scores of train+val. 95% CIs by patient-level bootstrap; binary decisions at each "
            f"model's out-of-fold operating point (Youden). Built {time.strftime('%Y-%m-%d %H:%M')}.</p>"
            f"<table>{header}{''.join(rows)}</table>{''.join(sections)}</body></html>")
    fsio.write_text(out, page)
    return out


def _decision(evaluation: dict) -> str:
    """How the version was chosen and what its figures mean, in plain words."""
    sel = evaluation.get("selection")
    lines = []
    if sel:
        lines.append(f"Decided on {sel['decided_on']} scores: {sel['metric']} {_fmt(sel['value'])} "
                     f"{_ci(sel['ci95'])} over {sel['n_images']} train+val images of {sel['n_patients']} patients "
                     f"({sel['folds']} patient-grouped folds); chance is {_fmt(sel['chance'])}"
                     + ("" if sel["above_chance"] else ", which the CI includes: never champion") + ". The test set "
                     "below was evaluated once, to report; it did not decide.")
    if evaluation.get("threshold_source"):
        lines.append(f"Threshold {evaluation['threshold']:.3f}: {evaluation['threshold_source']}.")
    if "prevalence" in evaluation:
        ppv = evaluation["at_prevalence"]
        lines.append(f"The test set is {evaluation['test_prevalence']:.0%} fractures by design; at the data set's "
                     f"prevalence of {evaluation['prevalence']:.0%}, PPV would be {_fmt(ppv['ppv'])} and NPV "
                     f"{_fmt(ppv['npv'])}.")
    return "".join(f"<p>{html.escape(line)}</p>" for line in lines)


def _subgroups(evaluation: dict, main: str, folder: Path, target: str) -> str:
    """Per subgroup kind, a forest plot of the main metric with CIs and the table; groups too small (or
    one-class) show their count only."""
    out = []
    for kind, groups in evaluation.get("subgroups", {}).items():
        cells = "".join(f"<tr><td>{html.escape(name)}</td><td>{row['n']}</td><td>{_fmt(row.get(main))}<br>"
                        f"<span class=note>{_ci(row.get('ci95'))}</span></td>"
                        f"<td>{_fmt(row.get('sensitivity'))}</td><td>{_fmt(row.get('specificity'))}</td></tr>"
                        for name, row in groups.items())
        title = {"age_bin": "age (1-year bins)", "sex": "sex"}.get(kind, kind)
        figure = plots.subgroup_png(groups, main, folder / f"subgroups-{kind}.png", f"{target} by {title}",
                                    evaluation["metrics"].get(main))
        out.append(f"<h3>Test set by {html.escape(title)}</h3><div class=pair>{_img(figure)}<table><tr><th>group</th>"
                   f"<th>images</th><th>{main}</th><th>sensitivity</th><th>specificity</th></tr>{cells}</table></div>")
    return "".join(out)


def _shortcut_audit(client: MlflowClient, run_id: str, folder: Path) -> str:
    """The promote run's ``shortcut_audit.json`` (binary models; evaluate/shortcuts.py) as two tables."""
    try:
        audit = json.loads(Path(client.download_artifacts(run_id, "shortcut_audit.json", str(folder))).read_text())
    except Exception:  # noqa: BLE001 - age models and promotions from before the audit have none
        return ""
    flag = ("<b>FLAGGED: the model's AUROC moves when text-box masks are shuffled; it may read markers</b>"
            if audit["flag"] else "not flagged")
    head = (f"<table><tr><th>text boxes alone (AUROC)</th><th>AUROC, masked as trained ({html.escape(audit['masking'])})"
            f"</th><th>AUROC, masks shuffled ({html.escape(audit['shuffle_masking'])})</th><th>shift</th><th>flag "
            f"(|shift| &gt; {audit['tolerance']:g})</th></tr><tr><td>{_fmt(audit['box_only_auroc'])}</td>"
            f"<td>{_fmt(audit['auroc_masked'])}</td><td>{_fmt(audit['auroc_shuffled'])}</td>"
            f"<td>{audit['shift']:+.3f}</td><td>{flag}</td></tr></table>")
    cells = "".join(
        f"<tr><td>{html.escape(kind)}: {html.escape(name)}</td><td>{row['n']}</td><td>{_fmt(row.get('auroc'))}<br>"
        f"<span class=note>{_ci(row.get('ci95'))}</span></td></tr>"
        for kind, groups in audit.get("subgroups", {}).items() for name, row in groups.items())
    return (f"<h3>Shortcut audit</h3><p class=note>{audit['n_test_images_with_boxes']} of {audit['n_test_images']} "
            "test images have text boxes. Boxes alone: a logistic regression on box count, position and size, "
            "trained on train, tested on test. Shuffled: each test image masked again with another test image's "
            "boxes added; traceless masking leaves the AUROC where it was.</p>"
            f"{head}<table><tr><th>subgroup</th><th>images</th><th>AUROC</th></tr>{cells}</table>")


def _gallery(client: MlflowClient, run_id: str, evaluation: dict, folder: Path) -> str:
    """Grad-CAM overlays of the most confident true / false positives / negatives (logged by promote)."""
    entries = evaluation.get("gallery")
    if not entries:
        return ""
    figures = []
    for cell in ("true_positive", "false_positive", "false_negative", "true_negative"):
        shown = [e for e in entries if e["cell"] == cell]
        images = "".join(
            f"<figure>{_img(Path(client.download_artifacts(run_id, e['artifact'], str(folder))))}<figcaption>"
            f"P(fracture) {e['probability']:.2f}, truth {'fracture' if e['label'] else 'no fracture'}"
            f"</figcaption></figure>" for e in shown) or "<p class=note>none in the test set</p>"
        figures.append(f"<div class=cell><h4>{cell.replace('_', ' ')}</h4>{images}</div>")
    return ("<h3>Grad-CAM gallery</h3><p class=note>The most confident calls of each kind at the operating "
            f"threshold {evaluation['threshold']:.3f}, overlaid on the original image.</p>"
            f"<div class=gallery>{''.join(figures)}</div>")


def _param(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    return text if value.is_integer() else f"{value:.4g}"


def _ci(pair) -> str:
    return "" if not pair else f"({_fmt(pair[0])}-{_fmt(pair[1])})"


def _tuning(client: MlflowClient, exp_id: str, promote_run, folder: Path) -> str:
    study = client.search_runs([exp_id], f"tags.`raypipe.kind` = 'study' and tags.`raypipe.study` = "
                               f"'{promote_run.data.tags.get('raypipe.study', '')}'", max_results=1)
    if not study:
        return ""
    run = study[0]
    params = {k.removeprefix("best."): v for k, v in run.data.tags.items() if k.startswith("best.")}
    m = run.data.metrics
    counts = (f"{int(m.get('trials_finished', 0))} finished, {int(m.get('trials_pruned', 0))} pruned by ASHA, "
              f"{int(m.get('trials_failed', 0))} failed")
    plot = None
    try:
        plot = Path(client.download_artifacts(run.info.run_id, "study_plots/param_importances.png", str(folder)))
    except Exception:  # noqa: BLE001 - importance needs two finished trials; the page says so
        pass
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(_param(v))}</td></tr>"
                    for k, v in sorted(params.items()))
    return (f"<h3>Tuning ({html.escape(run.data.tags.get('raypipe.study', ''))})</h3><p>{counts}; best "
            f"{html.escape(run.data.tags.get('raypipe.monitor', ''))} {_fmt(m.get('best_' + run.data.tags.get('raypipe.monitor', ''), float('nan')))}"
            f"</p><table><tr><th>parameter</th><th>best value</th></tr>{table}</table>{_img(plot)}")
