"""Reading the pair datalist written by the phantom generator (or by hand for real data)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PATH_KEYS = ("fixed_ct", "moving_ct", "fixed_spect", "moving_spect", "field_spect", "field_ct",
             "labels_fixed", "labels_moving")
IMAGE_KEYS = ("fixed_ct", "moving_ct", "fixed_spect", "moving_spect")


def load_pairs(datalist: str | os.PathLike, split: str = "training", limit: int | None = None,
               exclude_hours: float | None = None, require_truth: bool = False) -> list[dict[str, Any]]:
    """Return the ordered pairs of ``split`` with absolute paths (relative ones are resolved to the datalist).

    ``limit`` keeps the first K pairs (quick runs); ``exclude_hours`` drops pairs that involve that time point;
    ``require_truth`` keeps only pairs with a true field (fixed = the reference time point of a phantom).
    """
    path = Path(datalist)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: datalist not found (generate a phantom cohort with `corx phantom` "
                                "or set dataset_dir)")
    content = json.loads(path.read_text())
    if split not in content:
        raise ValueError(f"{path}: no '{split}' list (has: {', '.join(content)})")
    pairs = []
    for i, item in enumerate(content[split]):
        missing = [k for k in IMAGE_KEYS if k not in item]
        if missing:
            raise ValueError(f"{path}: {split}[{i}] lacks {', '.join(missing)}")
        if exclude_hours is not None and exclude_hours in (item.get("fixed_hours"), item.get("moving_hours")):
            continue
        if require_truth and not (item.get("field_spect") and item.get("labels_fixed")):
            continue
        pair = dict(item)
        for key in PATH_KEYS:
            if pair.get(key):
                pair[key] = str((path.parent / pair[key]).resolve())
        pairs.append(pair)
    return pairs[:limit] if limit else pairs


def ensure_phantom_cohort(dataset_dir: str | os.PathLike, generate: bool = True, cohort: str = "internal",
                          protocol: str | None = "paper", seed: int = 0, downsample: int = 1,
                          patients: int = 4) -> Path:
    """Return ``dataset_dir/datalist.json``; generate a phantom cohort there first if it has none and
    ``generate`` is true (the bundle's default dataset). Never touches a folder that has a datalist."""
    dataset_dir = Path(dataset_dir)
    datalist = dataset_dir / "datalist.json"
    if datalist.is_file():
        return datalist
    if not generate:
        raise FileNotFoundError(f"{datalist}: datalist not found and phantom generation is off")
    from .phantom import generate_cohort

    print(f"generating the {cohort} phantom cohort (protocol={protocol}, seed={seed}) in {dataset_dir} ...")
    generate_cohort(dataset_dir, cohort=cohort, patients=patients, seed=seed, protocol=protocol,
                    downsample=downsample)
    return datalist
