"""GPU checks for a lent CUDA machine: loop == vmap meta-gradients on the GPU, and seconds per meta-step
against learn2learn and higher (same process, same network, same batch).

Usage (on a machine with a CUDA GPU; ``.peers`` holds ``higher`` and learn2learn's pure-Python ``MAML``
sources, written by ``benchmarks/fetch_peers.py``)::

    PYTHONPATH=src:.peers python benchmarks/gpu_check.py --meta-batches 16,32 \
        --out benchmarks/results/gpu_check.json

The Omniglot time-to-accuracy run on the GPU is ``omniglot_time_to_accuracy.py --device cuda`` (README).
Prints tables and writes one JSON file (rewritten after each stage). ``--device cpu`` is a dry run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_meta_step import make_batch, run_variant  # noqa: E402

from attnmeta.learners.maml import MAML  # noqa: E402
from attnmeta.nn.backbones import build_backbone  # noqa: E402

SPEED_VARIANTS = ["learn2learn", "higher", "torch-loop", "attnmeta-loop-2nd", "attnmeta-vmap-2nd",
                  "attnmeta-vmap-1st", "attnmeta-bf16-vmap-2nd"]


def meta_gradients(strategy: str, first_order: bool, dtype: torch.dtype, hidden: int, device: str,
                   meta_batch: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_backbone("conv4", in_shape=(1, 28, 28), out_features=5, hidden=hidden)
    learner = MAML(model, "classification", ways=5, inner_lr=0.4, inner_steps=2, first_order=first_order,
                   strategy=strategy).to(device=device, dtype=dtype)
    batch = make_batch(meta_batch, device).to(device, dtype=dtype)
    learner.meta_loss(batch).loss.backward()
    return {n: p.grad.detach().clone() for n, p in learner.named_parameters() if p.grad is not None}


def check_gradients(device: str) -> list[dict]:
    """Max |loop - vmap| over all meta-gradient entries, relative to max |loop| (2 inner steps), with
    TensorFloat-32 convolutions and matrix products off (exact fp32) and on (PyTorch's cuDNN default)."""
    rows = []
    defaults = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    for dtype, hidden, tf32 in ((torch.float64, 16, False), (torch.float32, 64, False),
                                (torch.float32, 64, True)):
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        for first_order in (False, True):
            loop = meta_gradients("loop", first_order, dtype, hidden, device)
            vmap = meta_gradients("vmap", first_order, dtype, hidden, device)
            diff = max((loop[n] - vmap[n]).abs().max().item() for n in loop)
            scale = max(loop[n].abs().max().item() for n in loop)
            rows.append({"dtype": str(dtype), "tf32": tf32, "first_order": first_order, "max_abs_diff": diff,
                         "max_abs_grad": scale, "relative": diff / scale})
            print(f"loop vs vmap {str(dtype):14s} tf32={tf32!s:5s} first_order={first_order!s:5s}: "
                  f"max |diff| {diff:.2e} (relative {diff / scale:.2e})", flush=True)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = defaults
    return rows


def speed(device: str, meta_batches: list[int], steps: int, variants: list[str]) -> list[dict]:
    rows = []
    for meta_batch in meta_batches:
        block = []
        for variant in variants:
            try:
                row = run_variant(variant, steps, meta_batch, device)
            except ImportError as error:
                row = {"variant": variant, "skipped": f"not importable: {error}"}
            row["meta_batch"] = meta_batch
            block.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.startswith("all_")}), flush=True)
        timed = [r for r in block if "seconds_per_step" in r]
        base = next((r for r in timed if r["variant"] == "learn2learn"), timed[0] if timed else None)
        print(f"\nmeta-batch {meta_batch}: wall seconds per meta-step (median of {steps}), ratio to "
              f"{base['variant'] if base else '-'}")
        print(f"{'variant':26s} {'ms/step':>9s} {'speedup':>8s} {'GFLOP':>7s} {'GFLOP/s':>8s} "
              f"{'peak MiB':>9s} grad gap vs attnmeta-ref-loop-2nd (max rel, cosine)")
        for r in block:
            if "skipped" in r:
                print(f"{r['variant']:26s} skipped: {r['skipped']}")
                continue
            r["speedup_vs_baseline"] = base["seconds_per_step"] / r["seconds_per_step"]
            r["baseline"] = base["variant"]
            gap = r.get("grad_gap_vs_attnmeta_ref_loop_2nd")
            gap_text = "" if gap is None else f"{gap['max_rel']:.1e}, {gap['cosine']:.5f}"
            print(f"{r['variant']:26s} {1000 * r['seconds_per_step']:9.1f} {r['speedup_vs_baseline']:8.2f} "
                  f"{r['gflop_per_step']:7.1f} {r['gflop_per_s']:8.0f} {r['peak_mib']:9.0f} {gap_text}",
                  flush=True)
        rows += block
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meta-batches", default="16,32")
    parser.add_argument("--steps", type=int, default=10, help="timed meta-steps per variant (median)")
    parser.add_argument("--variants", nargs="+", default=SPEED_VARIANTS)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run of the script")
    parser.add_argument("--skip-speed", action="store_true", help="only the gradient check")
    parser.add_argument("--out", default="benchmarks/results/gpu_check.json")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA GPU (or --device cpu for a dry run)")
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    report: dict = {"device": name, "torch": torch.__version__, "started": time.strftime("%F %T")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report["gradients"] = check_gradients(args.device)
    out.write_text(json.dumps(report, indent=1))
    if args.skip_speed:
        return
    report["speed"] = speed(args.device, [int(m) for m in args.meta_batches.split(",")], args.steps,
                            args.variants)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
