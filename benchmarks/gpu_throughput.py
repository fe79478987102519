"""GPU training throughput of real backbones at 384 px: fp32 (seed style) vs bf16 AMP + channels_last
(+ torch.compile). Prints one JSON object; without CUDA it prints {"skipped": "..."} and exits 0.

    python benchmarks/gpu_throughput.py [--models convnextv2_tiny,swin_tiny_patch4_window7_224]
                                        [--batch-sizes 16,32,64] [--image-size 384] [--no-compile]

Self-contained: random-init timm models (``pretrained=False``, nothing is downloaded) built by raypipe's own
``build_model`` (1-channel stem, the MLP head, ``img_size`` passed through, which Swin needs at 384 px), random
input on the GPU, and raypipe's training step (AdamW, focal loss, grad clipping at 1.0). Data loading is not
timed: this is the model's side of the pipeline (``input_pipeline.py`` measures the other side).

Variants, each at every batch size:
  fp32          the seed scripts: fp32, NCHW, eager (PyTorch's TF32 defaults: matmul off, cuDNN convolutions on)
  bf16_cl       bf16 autocast + channels_last (what ``train/loop.py`` does on CUDA with ``amp: true``)
  bf16_cl_compile   the same with ``torch.compile(model)`` (compile time reported apart, not in images/s)

Per run: train images/s (``--steps`` timed steps after ``--warmup`` steps), peak allocated and reserved memory,
achieved TFLOP/s from ``torch.utils.flop_counter.FlopCounterMode`` (forward FLOPs per image x 3 for forward +
backward) and its fraction of the card's dense bf16 peak (table below, keyed by the CUDA device name;
``--peak-tflops`` overrides). An out-of-memory batch size is reported as such and the sweep goes on.
``--device cpu`` runs the same code on a tiny model for a smoke test (not a figure).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, reserve_stdout  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from NVIDIA's data sheets. First match wins.
PEAK_BF16_TFLOPS: list[tuple[str, float, str]] = [
    ("H200 NVL", 835.0, "H200 NVL"),
    ("H200", 989.4, "H200 SXM"),
    ("H100 NVL", 835.0, "H100 NVL"),
    ("H100 PCIe", 756.0, "H100 PCIe"),
    ("H100", 989.4, "H100 SXM (e.g. 'NVIDIA H100 80GB HBM3')"),
    ("GH200", 989.4, "GH200"),
    ("A100", 312.0, "A100"),
    ("L40S", 362.1, "L40S"),
    ("L4", 121.0, "L4"),
]
VARIANTS = ("fp32", "bf16_cl", "bf16_cl_compile")


def peak_for(name: str) -> tuple[float | None, str | None]:
    for key, tflops, label in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return tflops, label
    return None, None


def build(backbone: str, size: int, device: torch.device) -> torch.nn.Module:
    from raypipe.config import TrainConfig
    from raypipe.models.backbones import build_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no pretrained weights": intended, nothing may be downloaded
        return build_model(TrainConfig(backbone=backbone, image_size=size), n_classes=2).to(device)


def forward_flops_per_image(backbone: str, size: int, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = build(backbone, size, device).train()
    x = torch.randn(2, 1, size, size, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    del model
    return counter.get_total_flops() / 2


def run_one(backbone: str, size: int, batch: int, variant: str, device: torch.device, warmup: int,
            steps: int) -> dict[str, Any]:
    from raypipe.config import TrainConfig
    from raypipe.models.losses import build_loss

    cuda = device.type == "cuda"
    amp = variant != "fp32"
    model = build(backbone, size, device).train()
    if amp:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_loss(TrainConfig(loss="focal"), 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    compile_s = None
    step_model = model
    if variant.endswith("compile"):
        torch._dynamo.reset()  # a fresh compile per (model, batch size); no cache-size limit across the sweep
        step_model = torch.compile(model)
    x = torch.randn(batch, 1, size, size, device=device)
    if amp:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = criterion(step_model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step()  # the first step compiles (compile variant) and allocates
    sync()
    if variant.endswith("compile"):
        compile_s = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - t0
    out = {"images_per_s": batch * steps / seconds, "step_ms": 1000 * seconds / steps}
    if cuda:
        out["peak_alloc_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    if compile_s is not None:
        out["compile_s"] = compile_s
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="convnextv2_tiny,swin_tiny_patch4_window7_224")
    ap.add_argument("--batch-sizes", default="16,32,64")
    ap.add_argument("--image-size", type=int, default=384)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of this card, if not in the table")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test of this script (tiny model)")
    args = ap.parse_args()
    reserve_stdout()
    info = machine()
    if args.device == "cuda" and not torch.cuda.is_available():
        emit({"benchmark": "gpu_throughput", **info, "skipped": "no CUDA device (torch.cuda.is_available() is False)"})
        return
    device = torch.device(args.device)
    models = [m for m in args.models.split(",") if m]
    sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    variants = [v for v in args.variants.split(",") if v and not (args.no_compile and v.endswith("compile"))]
    if device.type == "cpu":  # smoke test: the code paths, not a figure
        models, sizes, args.image_size, args.warmup, args.steps = ["test_convnext"], sizes[:2], 64, 2, 3
        variants = [v for v in variants if not v.endswith("compile")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke test)"
    peak, peak_label = (args.peak_tflops, "--peak-tflops") if args.peak_tflops else peak_for(name)
    # PyTorch's defaults are kept (the seeds changed none): fp32 matmuls in full fp32, cuDNN convolutions in TF32.
    tf32 = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    started = time.perf_counter()
    flops: dict[str, float] = {}
    results: list[dict[str, Any]] = []
    for backbone in models:
        flops[backbone] = forward_flops_per_image(backbone, args.image_size, device)
        for variant in variants:
            for batch in sizes:
                row: dict[str, Any] = {"model": backbone, "variant": variant, "batch_size": batch}
                try:
                    row |= run_one(backbone, args.image_size, batch, variant, device, args.warmup, args.steps)
                except torch.cuda.OutOfMemoryError:
                    row["error"] = "out of memory"
                except Exception as exc:  # e.g. torch.compile without a working toolchain: reported, sweep goes on
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                if "images_per_s" in row:
                    achieved = 3 * flops[backbone] * row["images_per_s"] / 1e12
                    row["achieved_tflops"] = achieved
                    row["fraction_of_bf16_peak"] = achieved / peak if peak else None
                results.append({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
                print(f"{backbone} {variant} bs{batch}: {row.get('images_per_s', row.get('error'))}", file=sys.stderr)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    best: dict[str, Any] = {}
    for backbone in models:
        per_variant = {}
        for variant in variants:
            ok = [r for r in results if r["model"] == backbone and r["variant"] == variant and "images_per_s" in r]
            if ok:
                top = max(ok, key=lambda r: r["images_per_s"])
                per_variant[variant] = {k: top.get(k) for k in ("batch_size", "images_per_s", "peak_alloc_mib",
                                                                  "achieved_tflops", "fraction_of_bf16_peak")}
        fp32 = per_variant.get("fp32", {}).get("images_per_s")
        for variant, top in per_variant.items():
            if fp32 and variant != "fp32":
                top["speedup_vs_fp32"] = round(top["images_per_s"] / fp32, 2)
        compiled, eager = per_variant.get("bf16_cl_compile"), per_variant.get("bf16_cl")
        if compiled and eager:
            per_variant["compile_helps"] = compiled["images_per_s"] > 1.03 * eager["images_per_s"]
        best[backbone] = per_variant
    emit({
        "benchmark": "gpu_throughput", **info, "device": name, "peak_bf16_tflops": peak, "peak_source": peak_label,
        "cuda_version": torch.version.cuda, "tf32_allowed": tf32, "image_size": args.image_size, "steps": args.steps, "warmup": args.warmup,
        "forward_gflops_per_image": {k: round(v / 1e9, 3) for k, v in flops.items()},
        "best_per_variant": best, "results": results, "wall_seconds": round(time.perf_counter() - started, 1),
        **({"note": "cpu smoke test of the script, not a figure"} if device.type == "cpu" else {}),
    })


if __name__ == "__main__":
    main()
