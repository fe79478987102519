"""Security defaults end to end: what a real tune, promote, train and predict leave behind, and what
raypipe's own local Ray listens on.

* No patient identifier (patient_id, filestem, timehash of the data set) in any MLflow run name, param,
  tag, metric key, artifact path or text artifact, nor in the model registry.
* DICOM headers never travel: a DICOM data set and a DICOM predict input whose headers carry marker
  strings leave the markers in no file of the run directory, the MLflow store or the predict output.
* A checkpoint file with pickled code, given as pretrained weights, is refused (exit 2, one line)
  and its payload never runs.
* The local Ray cluster raypipe starts listens on loopback addresses only.
(Loader-level and static checks: tests/test_security.py.)
"""

from __future__ import annotations

import csv
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import pytest
import torch
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from raypipe.train.head import with_descendants
from tests.conftest import write_grazpedwri
from tests.e2e.conftest import REPO, raypipe

EXPERIMENT = "sec"
TINY = ["--set", "image_size=48", "--set", "test_per_class=3", "--epochs", "2"]
MARKERS = {"PatientName": "ZZMARKERNAME^QQ", "PatientID": "ZZMARKERPID4711", "InstitutionName": "ZZMARKERHOSPITAL",
           "AccessionNumber": "ZZMARKERACC42", "ReferringPhysicianName": "ZZMARKERDOC^X"}


@pytest.fixture(scope="module")
def shipped(shortcut_data, tmp_path_factory) -> Path:
    """A tiny study, tuned and promoted: runs, artifacts and a registered champion to inspect (the marker
    set unmasked, so that the model clears the chance floor and becomes champion)."""
    run_dir = tmp_path_factory.mktemp("secure")
    common = ["--data", str(shortcut_data), "--run-dir", str(run_dir), "--experiment", EXPERIMENT]
    proc = raypipe("tune", *common, "--target", "fracture", "--trials", "2", *TINY, "--max-concurrent", "2",
                   "--set", "masking=off", "--epochs", "3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = raypipe("promote", *common, "--target", "fracture", "--bootstrap", "50", "--folds", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir


# ------------------------------------------------------------------------ patient identifiers
def identifiers(data: Path) -> dict[str, set[str]]:
    with open(data / "dataset.csv", encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {col: {r[col] for r in rows} for col in ("filestem", "patient_id", "timehash")}


def tokens(text: str) -> set[str]:
    """Words and numbers (a decimal stays whole: ``0.0007`` is not patient ``0007``)."""
    return set(re.findall(r"\d+(?:\.\d+)+|[A-Za-z0-9]+", text))


def leaks(texts: list[str], ids: dict[str, set[str]]) -> list[str]:
    found = []
    for text in texts:
        words = tokens(text)
        for col, values in ids.items():
            hits = [v for v in values if v in text] if col == "filestem" else sorted(words & values)
            found += [f"{col} {v!r} in {text[:120]!r}" for v in hits]
    return found


def mlflow_texts(run_dir: Path) -> list[str]:
    """Everything of every run (deleted ones too) and of the registry that a reader of MLflow sees."""
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    texts: list[str] = []
    experiments = client.search_experiments(view_type=ViewType.ALL)
    runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL, max_results=10000)
    assert len(runs) >= 4  # parent, two trials, promote: a scan of nothing proves nothing
    for e in experiments:
        texts += [e.name, *e.tags.keys(), *e.tags.values()]
    for run in runs:
        texts += [run.info.run_name or "", *run.data.params.keys(), *run.data.params.values(),
                  *run.data.tags.keys(), *run.data.tags.values(), *run.data.metrics.keys()]
        with tempfile.TemporaryDirectory() as tmp:
            for path in artifact_paths(client, run.info.run_id):
                texts.append(path)
                if path.endswith((".json", ".yaml", ".yml", ".txt", ".py", "MLmodel", ".html", ".csv", ".jsonl")):
                    local = client.download_artifacts(run.info.run_id, path, tmp)
                    texts.append(Path(local).read_text(errors="replace"))
    for model in client.search_registered_models():
        texts += [model.name, model.description or "", *model.tags.keys(), *model.tags.values(), *model.aliases]
        for version in client.search_model_versions(f"name = '{model.name}'"):
            texts += [version.source or "", version.description or "", *version.tags.keys(), *version.tags.values()]
    return texts


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for info in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, info.path) if info.is_dir else [info.path]
    return out


def test_the_identifier_scan_finds_a_planted_identifier(synth_data) -> None:
    ids = identifiers(synth_data)
    pid, stem, timehash = sorted(ids["patient_id"])[3], sorted(ids["filestem"])[0], sorted(ids["timehash"])[0]
    assert leaks([f"patient {pid}", f"plots/{stem}.png", f"t={timehash}"], ids) != []
    assert len(leaks([f"patient {pid}", f"plots/{stem}.png", f"t={timehash}"], ids)) >= 3
    assert leaks(["lr 0.0007", f"lr 0.{pid}5", "run 4f2a0007b"], ids) == []


def test_no_patient_identifier_reaches_mlflow(shipped, shortcut_data) -> None:
    texts = mlflow_texts(shipped)
    assert sum(len(t) for t in texts) > 5000
    assert leaks(texts, identifiers(shortcut_data)) == []


# ----------------------------------------------------------------------------------- DICOM
def to_dicom(png: Path, out: Path, view: str) -> Path:
    """A DICOM (DX, 16-bit) of a synthetic radiograph, its header full of marker strings."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    for key, value in MARKERS.items():
        setattr(ds, key, value)
    ds.Modality, ds.ViewPosition, ds.PatientBirthDate = "DX", view, "20100101"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(out, enforce_file_format=True)
    return out


def files_with_markers(*folders: Path) -> list[str]:
    needles = [m.encode() for m in MARKERS.values()] + [m.split("^")[0].encode() for m in MARKERS.values()]
    hits = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                hits += [f"{path}: {n.decode()}" for n in needles if n in data or n.decode().encode("utf-16-le") in data]
    return hits


def test_dicom_headers_never_reach_the_cache_mlflow_or_predictions(shipped, synth_data, tmp_path) -> None:
    # A plain-CSV data set of DICOMs (pseudonymous ids in the CSV; the identifying ones only in headers).
    pngs = sorted(synth_data.glob("images_part*/*.png"))[:36]
    data = tmp_path / "dicoms"
    data.mkdir()
    stems = {p.stem: p for p in pngs}
    with open(synth_data / "dataset.csv", encoding="utf-8-sig", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["filestem"] in stems]
    lines = ["image_path,label,age,projection,patient_id"]
    for i, row in enumerate(rows):
        view = "AP" if row["projection"] == "1" else "LAT"
        to_dicom(stems[row["filestem"]], data / f"img{i:03d}.dcm", view)
        lines.append(f"img{i:03d}.dcm,{1 if row['fracture_visible'] == '1' else 0},{row['age']},"
                     f"{'AP' if view == 'AP' else 'Lat'},p{int(row['patient_id'])}")
    (data / "list.csv").write_text("\n".join(lines) + "\n")
    assert files_with_markers(data)  # the markers are there to be found

    train_dir = tmp_path / "run"
    proc = raypipe("train", "--data", str(data / "list.csv"), "--target", "fracture", "--run-dir", str(train_dir),
                   "--experiment", "dicom", "--epochs", "1", "--set", "image_size=32", "--set", "test_per_class=0",
                   "--set", "val_fraction=0.3", "--set", "batch_size=8")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list(train_dir.glob("cache/*/images.u8")) and list(train_dir.glob("mlartifacts/**/model.safetensors"))

    out = tmp_path / "predictions"
    proc = raypipe("predict", str(data / "img000.dcm"), "--age", "9", "--run-dir", str(shipped),
                   "--experiment", EXPERIMENT, "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list(out.glob("*.png")) and (out / "predictions.jsonl").is_file()
    assert files_with_markers(train_dir, out, shipped) == []
    assert all(m not in proc.stdout for m in MARKERS.values())


# ------------------------------------------------------------------------ pickled checkpoints
class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pretrained_checkpoint_with_pickled_code_is_refused(tmp_path) -> None:
    data = write_grazpedwri(tmp_path / "graz", n_patients=4, size=(48, 32))
    marker = tmp_path / "PWNED"
    evil = tmp_path / "resnet.pth"
    torch.save({"state_dict": {}, "payload": Evil(marker)}, evil)
    proc = raypipe("train", "--data", str(data), "--target", "fracture", "--run-dir", str(tmp_path / "run"),
                   "--set", f"pretrained={evil}", "--epochs", "1", "--set", "image_size=32",
                   "--set", "test_per_class=0", "--set", "val_fraction=0.5")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(evil) in proc.stderr
    assert not marker.exists()


# --------------------------------------------------------------------------- listening ports
def listening(pids: set[int]) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket the processes listen on, from /proc."""
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    owner[link[8:-1]] = pid
        except OSError:
            continue
    out = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] != "0A" or parts[9] not in owner:  # 0A = LISTEN
                continue
            hex_addr, hex_port = parts[1].split(":")
            raw = bytes.fromhex(hex_addr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            pid = owner[parts[9]]
            name = Path(f"/proc/{pid}/comm").read_text().strip() if Path(f"/proc/{pid}/comm").exists() else "?"
            out.append((str(ipaddress.ip_address(raw)), int(hex_port, 16), name))
    return out


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


DRIVER = """
import sys
import ray
from raypipe.ray_cluster import init_ray
init_ray()
ray.get(ray.remote(lambda: 1).remote())  # a worker process is up too
print("ready", flush=True)
sys.stdin.read()
ray.shutdown()
"""


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_local_ray_started_by_raypipe_listens_on_loopback_only() -> None:
    ray_tmp = tempfile.mkdtemp(prefix="rpsec-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env | {"RAY_TMPDIR": ray_tmp})
    tree: set[int] = set()
    try:
        assert driver.stdout.readline().strip() == "ready"
        sockets: list = []
        for _ in range(10):  # agents come up after ray.init returns: wait until the set settles
            time.sleep(1)
            tree = with_descendants({driver.pid})
            now = listening(tree)
            if now and len(now) == len(sockets):
                break
            sockets = now
        assert len(sockets) >= 3, sockets  # GCS, raylet, workers at least: the check saw the cluster
        exposed = sorted({f"{addr}:{port} ({name})" for addr, port, name in sockets if not is_loopback(addr)})
        assert exposed == [], f"reachable from other machines: {exposed}"
    finally:
        driver.stdin.close()
        try:
            driver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()
        for pid in tree - {driver.pid}:  # what of this cluster outlived it: by pid, and only if still ours
            try:
                if ray_tmp.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, 9)
            except (OSError, ProcessLookupError):
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
