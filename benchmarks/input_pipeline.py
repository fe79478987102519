"""Input pipeline: images/s into the model, seed style vs raypipe's decode-once cache. Prints one JSON object.

    python benchmarks/input_pipeline.py [--quick] [--run-dir DIR] [--keep] [--sources 1000x600,2000x1000]

Three DataLoaders over the same synthetic 16-bit PNGs (raypipe's generator at full radiograph size), each
followed by the same augmentation (``raypipe.data.dataset.build_transforms``, strength 0.5) and the same
normalisation, measured at 224 and 384 px with 1 and 2 DataLoader workers:

  (a) seed      what the seed scripts did for every sample of every epoch: ``cv2.imread`` with default flags
                (the 16-bit PNG decoded, then cut to 8 bit, 3 channels), grey, ``cv2.resize`` to S x S
  (a2) decode   raypipe's own decode chain (16-bit read, robust window, text mask, letterbox) every epoch,
                i.e. raypipe without its cache: same pixels as (b), shows what the cache alone buys
  (b) cache     raypipe's ``CachedImageDataset`` over the uint8 memmap of ``data/cache.py``

(a) and (a2) hand normalised float32 samples out of a DataLoader built afresh each epoch (a plain PyTorch
loader, as the seeds used it: worker start-up counts every epoch). (b) runs as ``train/loop.py`` does: uint8
samples keyed ``(index, draw, epoch)``, one loader with persistent workers for all epochs, each batch
normalised by ``to_model_input`` in the consuming process (counted here; on a GPU it runs on the device).
Each figure is the best of ``--repeats`` epochs of a sample count sized to a few seconds. Target (issue 17):
(b) >= 10x (a) at 384 px. The PNGs were just written, so they come from the page cache: on real storage
(a) only gets slower.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, reserve_stdout, run_dir, say, synth  # noqa: E402

from raypipe.config import TrainConfig  # noqa: E402
from raypipe.data import images  # noqa: E402
from raypipe.data.dataset import CachedImageDataset, build_transforms, normalise, to_model_input  # noqa: E402
from raypipe.data.prepare import prepare  # noqa: E402
from raypipe.data.sampling import KeyedDraws  # noqa: E402
from raypipe.train.loop import train_data_loader  # noqa: E402

TARGET_RATIO = 10.0


class _Augmented(Dataset):
    """Per-sample augmentation seeded exactly as ``CachedImageDataset`` does it (same cost per sample)."""

    def __init__(self, paths: list[str], boxes: list[str], labels: np.ndarray, size: int, augment: float) -> None:
        self.paths, self.boxes, self.labels, self.size = paths, boxes, labels, size
        self.transform = build_transforms(augment, train=True)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.load(index)
        if self.transform is not None:
            key = (0, self.epoch, int(index))
            self.transform.set_random_state(np.random.default_rng(key), random.Random(hash(key)))
            img = self.transform(image=np.ascontiguousarray(img))["image"]
        return torch.from_numpy(normalise(img)), torch.tensor(self.labels[index], dtype=torch.int64)


class SeedStyleDataset(_Augmented):
    """The seeds: decode the full-size PNG every time it is drawn (8-bit BGR by default), grey, resize."""

    def load(self, index: int) -> np.ndarray:
        img = cv2.imread(self.paths[index])  # no IMREAD_UNCHANGED: 16 -> 8 bit, 3 channels (as the seeds did)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        return cv2.resize(img, (self.size, self.size))


class DecodeEachEpochDataset(_Augmented):
    """raypipe's decode chain (``images.prepare``) per draw: the cache's pixels, without the cache."""

    def load(self, index: int) -> np.ndarray:
        return images.prepare(self.paths[index], self.boxes[index], self.size, "fill")


class _EpochSampler(RandomSampler):
    """``samples`` random indices, a new draw per epoch (what ``KeyedDraws`` wraps in the loop)."""

    def __init__(self, ds: Dataset, samples: int) -> None:
        super().__init__(ds, num_samples=samples, generator=torch.Generator())

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(epoch)


def _fresh_loader_epochs(ds: Dataset, workers: int, samples: int, batch: int, repeats: int) -> list[float]:
    """Seed style: a new loader per epoch, float32 samples normalised in the workers."""
    rates = []
    for epoch in range(repeats):
        sampler = _EpochSampler(ds, samples)
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        n = sum(len(x) for x, _ in DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers))
        rates.append(n / (time.perf_counter() - started))
    return rates


def _loop_epochs(ds: Dataset, workers: int, samples: int, batch: int, repeats: int) -> list[float]:
    """raypipe's loop: one persistent-worker loader over keyed uint8 samples, normalised per batch."""
    sampler = KeyedDraws(_EpochSampler(ds, samples))
    loader = train_data_loader(ds, sampler, batch, num_workers=workers, persistent_workers=workers > 0)
    rates = []
    for epoch in range(repeats):
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        n = 0
        for x, _ in loader:
            n += len(to_model_input(x))
        rates.append(n / (time.perf_counter() - started))
    return rates


def _samples_for(ds: Dataset, workers: int, seconds: float, batch: int) -> int:
    """A sample count that takes about ``seconds`` with ``workers`` workers (from a few draws in-process)."""
    ds[0]  # warm-up: opens the memmap, builds the transform's state
    probe = min(len(ds), 16)
    started = time.perf_counter()
    for i in range(probe):
        ds[i]
    per_image = (time.perf_counter() - started) / probe
    n = int(seconds * max(1, workers) / max(per_image, 1e-5))
    return int(np.clip(n // batch * batch, 2 * batch, 64 * batch))


def augment_cost(cache, augment: float, draws: int = 200) -> dict[str, float]:
    """Milliseconds per image of the whole augmentation and of each transform alone (each at its own p, in
    a Compose of its own: ``compose_overhead`` is that of an empty one), on real cached images, in this
    process: what the cached path spends its time on."""
    transform = build_transforms(augment, train=True)
    if transform is None:
        return {}
    # Copies, not memmap views: otherwise the first transform timed also pays for paging the images in.
    imgs = [np.array(cache.get(i % len(cache)), copy=True) for i in range(draws)]
    out = {}
    alone = [(type(t).__name__, A.Compose([t])) for t in transform.transforms]
    for name, fn in [("all", transform), *alone, ("compose_overhead", A.Compose([]))]:
        fn.set_random_state(np.random.default_rng(0), random.Random(0))
        for img in imgs[:10]:  # warm-up: lazily built state (CLAHE's tiles, kernels) is not per-image cost
            fn(image=img)
        started = time.perf_counter()
        for img in imgs:
            fn(image=img)
        out[name] = round(1000 * (time.perf_counter() - started) / draws, 3)
    started = time.perf_counter()
    for img in imgs:
        normalise(img)
    out["normalise"] = round(1000 * (time.perf_counter() - started) / draws, 3)
    return out


def measure(ds: Dataset, workers: int, seconds: float, batch: int, repeats: int) -> dict:
    samples = _samples_for(ds, workers, seconds, batch)
    epochs = _loop_epochs if isinstance(ds, CachedImageDataset) else _fresh_loader_epochs
    rates = epochs(ds, workers, samples, batch, repeats)
    return {"images_per_s": round(max(rates), 1), "all": [round(r, 1) for r in rates], "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run in well under a minute")
    ap.add_argument("--run-dir", type=Path, default=None, help="default: a temporary directory, removed after")
    ap.add_argument("--keep", action="store_true", help="keep the temporary run directory")
    ap.add_argument("--sources", default=None, help="source PNG sizes HxW, comma-separated "
                    "(default 1000x600,2000x1000; --quick 1000x600)")
    ap.add_argument("--patients", type=int, default=None, help="synthetic patients per source (default 30; quick 12)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 384])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--augment", type=float, default=0.5)
    ap.add_argument("--seconds", type=float, default=None, help="target seconds per measured epoch (1.5; quick 0.6)")
    ap.add_argument("--repeats", type=int, default=2, help="epochs per figure; the best is reported")
    ap.add_argument("--consumer-threads", type=int, default=1, help="torch threads of the consuming process "
                    "(default 1: a trial with cpus_per_worker 1, as Ray sets OMP_NUM_THREADS to a worker's CPUs; "
                    "more threads spin against the loader workers on a small machine)")
    args = ap.parse_args()
    reserve_stdout()
    torch.set_num_threads(args.consumer_threads)
    sources = args.sources or ("1000x600" if args.quick else "1000x600,2000x1000")
    patients = args.patients or (12 if args.quick else 30)
    seconds = args.seconds or (0.6 if args.quick else 1.5)
    info = machine()
    cv2_threads = cv2.getNumThreads()
    results, builds, augment_ms = [], {}, {}
    started = time.perf_counter()
    with run_dir(args.run_dir, args.keep, "input") as root:
        for source in sources.split(","):
            height, width = (int(v) for v in source.lower().split("x"))
            data = root / f"data-{height}x{width}"
            synth(data, patients, seed=21, height=height, width=width)
            for size in args.sizes:
                prepared = prepare(data, TrainConfig(image_size=size, test_per_class=1), root)
                cache = prepared.cache
                index = json.loads((cache.directory / "index.json").read_text())
                builds[f"{source}@{size}"] = {"images": len(cache), "build_s": index["build_seconds"],
                                              "build_ms_per_image": round(1000 * index["build_seconds"] / len(cache), 2)}
                if size not in augment_ms:
                    augment_ms[size] = augment_cost(cache, args.augment)
                labels = prepared.manifest["label"].to_numpy(dtype=np.int64)
                paths = prepared.manifest["path"].astype(str).tolist()
                boxes = prepared.manifest["text_boxes"].fillna("").astype(str).tolist()
                datasets = {
                    "seed": SeedStyleDataset(paths, boxes, labels, size, args.augment),
                    "decode": DecodeEachEpochDataset(paths, boxes, labels, size, args.augment),
                    "cache": CachedImageDataset(cache, np.arange(len(cache)), labels, args.augment, train=True),
                }
                for workers in args.workers:
                    row = {"source": source, "size": size, "workers": workers, "images": len(cache)}
                    for name, ds in datasets.items():
                        row[name] = measure(ds, workers, seconds, args.batch_size, args.repeats)
                    row["ratio_cache_over_seed"] = round(row["cache"]["images_per_s"] / row["seed"]["images_per_s"], 2)
                    row["ratio_cache_over_decode"] = round(row["cache"]["images_per_s"] / row["decode"]["images_per_s"], 2)
                    say(f"{source} -> {size}px, {workers} worker(s): seed {row['seed']['images_per_s']}, decode "
                        f"{row['decode']['images_per_s']}, cache {row['cache']['images_per_s']} img/s "
                        f"(cache/seed {row['ratio_cache_over_seed']}x)")
                    results.append(row)
    at_384 = [r for r in results if r["size"] == 384]
    # Stable keys a script can read (issue 17): cache over seed-style decode at 384 px from 1000x600 sources
    ratios = {f"ratio_384_1000x600_w{r['workers']}": r["ratio_cache_over_seed"] for r in at_384
              if r["source"] == "1000x600" and r["workers"] in (1, 2)}
    emit({
        "ratio_384_1000x600_w1": ratios.get("ratio_384_1000x600_w1"),
        "ratio_384_1000x600_w2": ratios.get("ratio_384_1000x600_w2"),
        "benchmark": "input_pipeline", **info, "quick": args.quick, "batch_size": args.batch_size,
        "augment": args.augment, "cv2_threads": cv2_threads, "consumer_torch_threads": args.consumer_threads, "results": results, "cache_builds": builds,
        "augment_ms_per_image_in_process": augment_ms,
        "target": {"criterion": f"cache >= {TARGET_RATIO:g}x seed at 384 px",
                   "met_by_case": {f"{r['source']}@384,w{r['workers']}": r["ratio_cache_over_seed"] >= TARGET_RATIO
                                   for r in at_384},
                   "met": bool(at_384) and all(r["ratio_cache_over_seed"] >= TARGET_RATIO for r in at_384)},
        "wall_seconds": round(time.perf_counter() - started, 1),
    })


if __name__ == "__main__":
    main()
