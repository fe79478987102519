"""GPU check of the one training loop: fp32 vs bf16 autocast + channels_last. Prints one JSON object.

Runs only where CUDA exists (prints a skip message elsewhere). Synthesizes its own data set.
    python benchmarks/gpu_train.py --backbone convnextv2_atto --size 224 --patients 400
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from raypipe.config import TrainConfig
from raypipe.data.prepare import prepare
from raypipe.data.synth import synthesize
from raypipe.data.targets import parse_target
from raypipe.train import loop
from raypipe.train.job import make_job
from raypipe.train.session import LocalSession


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="convnextv2_atto")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--patients", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return
    tmp = Path(tempfile.mkdtemp())
    synthesize(tmp / "data", patients=args.patients, seed=1)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "backbone": args.backbone,
               "image_size": args.size, "batch_size": args.batch_size, "runs": []}
    for amp in (False, True):
        cfg = TrainConfig(backbone=args.backbone, image_size=args.size, epochs=args.epochs, patience=99,
                          batch_size=args.batch_size, use_gpu=True, amp=amp, augment=0.3, test_per_class=2,
                          loader_workers=4)
        prepared = prepare(tmp / "data", cfg, tmp / "run")
        job = make_job(prepared, parse_target("age", prepared.scheme), cfg)
        epochs: list[dict] = []
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        loop.run(job, LocalSession(tmp / f"out-{amp}", job.monitor, use_gpu=True,
                                   on_report=lambda m, c, epochs=epochs: epochs.append(m)))
        last = epochs[-1]
        results["runs"].append({
            "amp_bf16_channels_last": amp, "wall_s": round(time.perf_counter() - started, 2),
            "train_images": len(job.train_rows),
            "images_per_s_last_epoch": round(len(job.train_rows) / last["epoch_seconds"], 1),
            "peak_mem_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "train_loss": [round(e["train_loss"], 4) for e in epochs],
            "val_macro_f1_last": round(last["val_macro_f1"], 4)})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
