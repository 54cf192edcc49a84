r"""Plot training curves (loss per iteration, validation metrics per epoch) from the runs' TensorBoard logs.

    python -m scripts.training_curves runs/cpu_corx runs/cpu_corx_nocs runs/cpu_transmorph \
        --out docs/training_curves.png

Each run folder holds the ``tensorboard`` folder written by train.json's TensorBoardStatsHandler (or is that folder).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .atomic import atomic_path

VALIDATION_TAGS = ("val_spect_lncc", "val_spect_ssim", "val_ct_l1", "val_nonpositive_jacobian_pct",
                   "val_field_error_mm", "val_kidney_field_error_mm")  # the last two: phantom truth (validate_truth)
PANELS_PER_ROW = 4


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of one run: tag -> [(step, value), ...] in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = Path(run_dir)
    log_dir = run / "tensorboard" if (run / "tensorboard").is_dir() else run
    if not any(log_dir.glob("events.out.tfevents.*")):
        raise FileNotFoundError(f"{log_dir}: no TensorBoard event files")
    series: dict[str, dict[int, float]] = {}
    for events in sorted(log_dir.glob("events.out.tfevents.*")):  # resumed runs write one file per part
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            series.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return {tag: sorted(points.items()) for tag, points in series.items()}


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start)."""
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def plot_runs(runs: list[Path], out: Path, smooth: int = 50) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Write one PNG: training loss (raw and smoothed) and each validation metric, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {run.name: read_scalars(run) for run in runs}
    rows = -(-(1 + len(VALIDATION_TAGS)) // PANELS_PER_ROW)
    fig, grid = plt.subplots(rows, PANELS_PER_ROW, figsize=(4.2 * PANELS_PER_ROW, 3.6 * rows), squeeze=False)
    axes = list(grid.ravel())
    for unused in axes[1 + len(VALIDATION_TAGS):]:
        unused.set_axis_off()
    axes = axes[:1 + len(VALIDATION_TAGS)]
    for name, series in data.items():
        if "train_loss" in series:
            steps, values = (np.array(v) for v in zip(*series["train_loss"], strict=True))
            line = axes[0].plot(steps, values, alpha=0.15)[0]
            axes[0].plot(steps, moving_average(values, smooth), color=line.get_color(), label=name)
        for ax, tag in zip(axes[1:], VALIDATION_TAGS, strict=True):
            if tag in series:
                epochs, values = zip(*series[tag], strict=True)
                ax.plot(epochs, values, marker="o", label=name)
    axes[0].set(title=f"training loss (mean of {smooth} iterations)", xlabel="iteration")
    for ax, tag in zip(axes[1:], VALIDATION_TAGS, strict=True):
        ax.set(title=tag, xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with a tensorboard/ folder)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--smooth", type=int, default=50, help="moving-average window for the loss")
    parser.add_argument("--summary", type=Path, help="also write the validation series as JSON here")
    args = parser.parse_args(argv)
    data = plot_runs(args.runs, args.out, args.smooth)
    if args.summary:
        summary = {name: {tag: series[tag] for tag in VALIDATION_TAGS if tag in series}
                   for name, series in data.items()}
        args.summary.write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
