"""CPU forward time and peak memory of CoRX-NET (eager fp32, TorchScript, eager bf16 autocast).

Usage::

    python benchmarks/bench_forward.py                       # corx, 64^3 and 128^3, 3 modes
    python benchmarks/bench_forward.py --sizes 64 --runs 5 --threads 2 --out bench.json
    python benchmarks/bench_forward.py --modes eager eager_sdpa --variant transmorph

Time: median wall time of ``--runs`` forward passes (batch 1, random input, ``torch.inference_mode`` for the
eager modes, ``torch.no_grad`` for TorchScript) after ``--warmup`` passes (TorchScript's profiling executor
needs two warm-up calls before it settles).

Memory: every (mode, size) runs in a fresh Python process. ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is the
process's resident-set high-water mark; it is read once the model and the input exist (and the model is
scripted) and again after the timed passes. The difference is the extra peak RSS the forward pass needs
(activations, workspaces, allocator caches) on top of what was already resident. ``tracemalloc`` does not see
torch's C++ allocations, hence this method. Also reported: the baseline RSS (``/proc/self/statm``) and the
parameter memory.

Modes: ``eager`` (fp32), ``script`` (``torch.jit.script``, fp32), ``bf16`` (eager under
``torch.autocast("cpu", dtype=torch.bfloat16)``; the field comes out in bf16) and ``eager_sdpa`` (fp32 with
MONAI's scaled_dot_product_attention path, ``use_flash_attention=True``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("eager", "script", "bf16", "eager_sdpa")


def _rss_mib() -> float:
    """Current resident set size in MiB (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def worker(mode: str, size: int, runs: int, warmup: int, variant: str, threads: int | None) -> dict:
    """Time and measure one (mode, size) in this process; returns a result dict."""
    import torch

    from corx_bundle.scripts.network import build_network, count_parameters

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_network(variant, use_flash_attention=(mode == "eager_sdpa")).eval()
    x = torch.rand(1, 4, size, size, size)
    if mode == "script":
        model = torch.jit.script(net)
        grad_ctx = torch.no_grad
    else:
        model = net
        grad_ctx = torch.inference_mode

    def once() -> float:
        t0 = time.perf_counter()
        with grad_ctx():
            if mode == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    u = model(x)
            else:
                u = model(x)
        elapsed = time.perf_counter() - t0
        if tuple(u.shape) != (1, 3, size, size, size):
            raise RuntimeError(f"unexpected output shape {tuple(u.shape)}")
        return elapsed

    base_rss, base_peak = _rss_mib(), _maxrss_mib()
    warm = [once() for _ in range(warmup)]
    times = [once() for _ in range(runs)]
    return {
        "variant": variant,
        "mode": mode,
        "size": size,
        "threads": torch.get_num_threads(),
        "parameters": count_parameters(net),
        "param_mib": round(sum(p.numel() * p.element_size() for p in net.parameters()) / 2**20, 1),
        "warmup_s": [round(t, 3) for t in warm],
        "times_s": [round(t, 3) for t in times],
        "median_s": round(statistics.median(times), 3),
        "baseline_rss_mib": round(base_rss, 1),
        "peak_rss_delta_mib": round(_maxrss_mib() - base_peak, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run every (mode, size) in a subprocess and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="corx", choices=["corx", "corx_nocs", "transmorph"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--modes", nargs="+", default=["eager", "script", "bf16"], choices=MODES)
    ap.add_argument("--runs", type=int, default=3, help="timed forward passes (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed passes first")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        mode, size = args.worker[0], int(args.worker[1])
        print(json.dumps(worker(mode, size, args.runs, args.warmup, args.variant, args.threads)))
        return 0

    results = []
    print(f"# {args.variant}, batch 1, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'size':>5} {'mode':>10} {'median s':>9} {'runs s':>24} {'peak RSS +MiB':>14} {'base RSS MiB':>13}")
    for size in args.sizes:
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--worker", mode, str(size), "--variant", args.variant]
            cmd += ["--runs", str(args.runs), "--warmup", str(args.warmup)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(f"{size:>5} {mode:>10} FAILED: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(r)
            runs = " ".join(f"{t:.2f}" for t in r["times_s"])
            print(
                f"{size:>5} {mode:>10} {r['median_s']:>9.2f} {runs:>24} {r['peak_rss_delta_mib']:>14.0f} "
                f"{r['baseline_rss_mib']:>13.0f}",
                flush=True,
            )
    if results:
        print(
            f"# parameters {results[0]['parameters']:,} ({results[0]['param_mib']} MiB fp32), "
            f"torch threads {results[0]['threads']}"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
