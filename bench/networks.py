"""Training-step time and peak memory of the segmentation networks; prints JSON.

Step times are measured in one process with the networks interleaved round-robin (wall and CPU
seconds, medians); peak memory in a fresh subprocess per network, so that the peak resident memory
(``ru_maxrss``, CPU) or ``torch.cuda.max_memory_allocated`` (GPU) belongs to that network alone.
One step = forward,
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
    """Peak resident memory of this process in MiB.

    ``VmHWM`` from /proc is reset by ``execve``; ``ru_maxrss`` is not on Linux (a child started
    after a big parent step would report the parent's peak), so it is only the fallback.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _setup(case: str, size: int, batch: int, channels: int, device: str):
    """Model, and a closure running one training step of it."""
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
        if amp:
            torch.cuda.synchronize()

    return count_parameters(model), amp, step


def peak_memory(case: str, size: int, batch: int, channels: int, device: str) -> dict:
    """Peak memory of one training step after one warm-up step (run in a fresh process)."""
    import torch

    base = _rss_mib()
    _, amp, step = _setup(case, size, batch, channels, device)
    step()
    if amp:
        torch.cuda.reset_peak_memory_stats()
    step()
    if amp:
        return {"peak_mem_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                "peak_mem_kind": "torch.cuda.max_memory_allocated"}
    return {"peak_mem_mib": round(_rss_mib() - base, 1), "peak_mem_kind": "peak RSS (VmHWM) increase over model build + 2 steps"}


def time_steps(cases: list[str], size: int, batch: int, channels: int, device: str, warmup: int, steps: int) -> dict:
    """Median wall and CPU seconds per training step, the cases interleaved round-robin.

    Interleaving spreads any load from other processes over all networks alike; CPU time
    (``time.process_time``) is insensitive to waiting for a core, wall time is what a user sees.
    """
    setups = {case: _setup(case, size, batch, channels, device) for case in cases}
    wall: dict[str, list[float]] = {c: [] for c in cases}
    cpu: dict[str, list[float]] = {c: [] for c in cases}
    for i in range(warmup + steps):
        for case, (_, _, step) in setups.items():
            w0, c0 = time.perf_counter(), time.process_time()
            step()
            if i >= warmup:
                wall[case].append(time.perf_counter() - w0)
                cpu[case].append(time.process_time() - c0)
    return {
        case: {
            "step_s_median": round(statistics.median(wall[case]), 4),
            "step_cpu_s_median": round(statistics.median(cpu[case]), 4),
            "parameters": setups[case][0],
            "amp": setups[case][1],
        }
        for case in cases
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 warm-up step and 3 timed steps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--size", type=int, default=64, help="cubic patch size in voxels (divisible by 32)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=4, help="input channels")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="benchmark only these cases")
    parser.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warmup, steps = (1, 3) if args.quick else (2, 7)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    if args._one is not None:
        print(json.dumps(peak_memory(args._one, args.size, args.batch, args.channels, args.device)))
        return 0

    cases = args.only or list(CASES)
    results = time_steps(cases, args.size, args.batch, args.channels, args.device, warmup, steps)
    for case in cases:
        cmd = [sys.executable, __file__, "--_one", case, "--size", str(args.size), "--batch", str(args.batch),
               "--channels", str(args.channels), "--device", args.device]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["failed"]
            results[case]["peak_mem_error"] = tail[0]
        else:
            results[case].update(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{case}: {results[case]}", file=sys.stderr)

    ref = results.get("monai_attention_unet")
    if ref:
        for res in results.values():
            res["ratio_vs_monai_attention_unet"] = round(res["step_s_median"] / ref["step_s_median"], 3)
            res["cpu_ratio_vs_monai_attention_unet"] = round(res["step_cpu_s_median"] / ref["step_cpu_s_median"], 3)
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
