"""Training-step time and peak memory of the segmentation networks; prints JSON.

Each network runs in its own subprocess so that the peak resident memory (``ru_maxrss``, CPU) or
``torch.cuda.max_memory_allocated`` (GPU) belongs to that network alone. One step = forward,
DiceFocal loss on the main logits, backward, Adam update; batch 2, 4 channels, 64^3 by default,
channels 16-32-64-128 / strides 2-2-2 for the U-Nets. On CUDA the step runs under AMP (bfloat16
autocast is not used: float16 + GradScaler as in the bundles).

Usage:
    python bench/networks.py [--quick] [--size 64] [--batch 2] [--device cpu|cuda] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

CASES: dict[str, dict] = {
    "attention_resunet": {"name": "attention_unet", "kwargs": {}},
    "monai_attention_unet": {"name": "monai_attention_unet", "kwargs": {}},
    "monai_unet": {"name": "unet", "kwargs": {}},
    "swinunetr_fs24": {"name": "swinunetr", "kwargs": {"feature_size": 24}},
    "swinunetr_fs48": {"name": "swinunetr", "kwargs": {"feature_size": 48}},
}


def _rss_mib() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(case: str, size: int, batch: int, channels: int, warmup: int, steps: int, device: str) -> dict:
    """Time ``steps`` training steps of one network after ``warmup`` steps (in this process)."""
    import torch
    from monai.losses import DiceFocalLoss

    from dfseg.networks import build, count_parameters

    torch.manual_seed(0)
    dev = torch.device(device)
    spec = CASES[case]
    model = build(spec["name"], channels, 1, spatial_dims=3, img_size=(size,) * 3, **spec["kwargs"]).to(dev)
    model.train()
    loss_fn = DiceFocalLoss(sigmoid=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, channels, size, size, size, device=dev)
    y = (torch.rand(batch, 1, size, size, size, device=dev) > 0.95).float()
    amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
            out = model(x)
            if isinstance(out, (list, tuple)):
                out = out[0]
            loss = loss_fn(out.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    base_rss = _rss_mib()
    if amp:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if amp:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if amp:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    result = {
        "step_s_median": round(statistics.median(times), 4),
        "step_s_min": round(min(times), 4),
        "parameters": count_parameters(model),
        "amp": amp,
    }
    if amp:
        result["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["peak_mem_kind"] = "torch.cuda.max_memory_allocated"
    else:
        result["peak_mem_mib"] = round(_rss_mib() - base_rss, 1)
        result["peak_mem_kind"] = "ru_maxrss increase over the steps"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 warm-up step and 3 timed steps")
    parser.add_argument("--size", type=int, default=64, help="cubic patch size in voxels (divisible by 32)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=4, help="input channels")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="benchmark only these cases")
    parser.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warmup, steps = (1, 3) if args.quick else (2, 7)

    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    if args._one is not None:
        res = run_one(args._one, args.size, args.batch, args.channels, warmup, steps, args.device)
        print(json.dumps(res))
        return 0

    import torch

    results: dict[str, dict] = {}
    for case in args.only or list(CASES):
        cmd = [sys.executable, __file__, "--_one", case, "--size", str(args.size), "--batch", str(args.batch),
               "--channels", str(args.channels), "--device", args.device] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["failed"]
            results[case] = {"error": tail[0]}
        else:
            results[case] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{case}: {results[case]}", file=sys.stderr)

    ref = results.get("monai_attention_unet", {}).get("step_s_median")
    for res in results.values():
        if ref and "step_s_median" in res:
            res["ratio_vs_monai_attention_unet"] = round(res["step_s_median"] / ref, 3)
    report = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "batch": args.batch,
        "in_channels": args.channels,
        "size": args.size,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "results": results,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
