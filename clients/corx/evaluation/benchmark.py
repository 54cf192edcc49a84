"""``corx benchmark``: every method on the same pairs; results.json and results.md (Table 2, ground truth, TIA).

Per pair: preprocess once (the bundle's numpy chain, network grid), then per method: the field (from the cache or
computed and stored), the bundle's image metrics, the folding percentage and, for reference pairs, the ground-truth
measures; then per patient whose reference pairs are all selected, the TIA columns. See
:mod:`corx.evaluation.cohort` for the pairs, :mod:`corx.evaluation.cache` for the cache.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorxError
from ..io.imageio import atomic_path, save_json
from ..registration.elastix import ElastixSettings
from ..registration.methods import PairInput
from ..registration.preprocess import PreparedPair, PreprocessConfig, preprocess_pair
from .cache import ResultCache, file_digest, make_key
from .cohort import Pair, cohort_name, network_geometry, prepare_cohort
from .ground_truth import ground_truth_metrics, load_pair_truth
from .methods import Method, make_methods
from .metrics import folding_percent, image_metrics
from .tables import render_markdown
from .tia_eval import load_series, series_tia

METRICS_VERSION = 2  # 2: Dice from interpolated indicators
Log = Callable[[str], None]


def _config_dict(config: PreprocessConfig) -> dict[str, Any]:
    return {"spatial_size": list(config.spatial_size), "pixdim": list(config.pixdim),
            "ct_window_hu": list(config.ct_window_hu), "spect_normalization": config.spect_normalization}


def field_key(method: Method, pair: Pair, config: PreprocessConfig) -> str:
    """Cache key of one method's field on one pair (method settings, preprocessing, input bytes)."""
    inputs = [file_digest(p) for p in (pair.fixed_ct, pair.moving_ct, pair.fixed_spect, pair.moving_spect)]
    return make_key("field", method.name, method.settings(), _config_dict(config), inputs)


def _stat(values: list[float]) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


class PairEvaluator:
    """Fields and metric records of every method on one pair, through the cache."""

    def __init__(self, cache: ResultCache, config: PreprocessConfig, log: Log) -> None:
        self.cache, self.config, self.log = cache, config, log

    def run(self, pair: Pair, methods: Sequence[Method], tag: str) -> list[dict[str, Any]]:
        prepared: PreparedPair | None = None
        truth = None
        records = []
        for method in methods:
            key = field_key(method, pair, self.config)
            mkey = f"metrics-v{METRICS_VERSION}"
            record = self.cache.load_json(method.name, key, mkey)
            if record is not None:
                self.log(f"{tag} {pair.name} {method.name}: cached ({record.get('seconds', 0):.1f} s when run)")
                records.append(record)
                continue
            if prepared is None:
                prepared = preprocess_pair(pair.fixed_ct, pair.moving_ct, pair.fixed_spect, pair.moving_spect,
                                           self.config)
            stored = self.cache.load_field(method.name, key)
            if stored is None:
                try:
                    inputs = PairInput.from_prepared(prepared, truth_field=pair.truth_field)
                    gf = method.register(inputs)
                    field, info = inputs.on_network_grid(gf), gf.info
                except (CorxError, RuntimeError, ValueError) as exc:
                    self.log(f"{tag} {pair.name} {method.name}: FAILED ({exc})")
                    records.append(self._base(method, pair, key) | {"error": str(exc)})
                    continue
                field = self.cache.save_field(method.name, key, field, info)
                self.log(f"{tag} {pair.name} {method.name}: {info.get('seconds', 0.0):.1f} s")
            else:
                field, info = stored
            record = self._base(method, pair, key) | {k: v for k, v in info.items() if k != "variant"}
            record.update(image_metrics(field, prepared.image))
            record["nonpositive_jacobian_pct"] = folding_percent(field)
            if pair.reference:
                if truth is None:
                    truth = load_pair_truth(pair.patient_dir, pair.fixed_id, pair.moving_id, pair.moving_spect)
                record.update(ground_truth_metrics(field, prepared.affine, truth))
            self.cache.save_json(method.name, key, mkey, record)
            records.append(record)
        return records

    @staticmethod
    def _base(method: Method, pair: Pair, key: str) -> dict[str, Any]:
        return {"method": method.name, "pair": pair.name, "patient_id": pair.patient_id, "fixed_id": pair.fixed_id,
                "moving_id": pair.moving_id, "reference": pair.reference, "key": key}


def evaluate_tia(selected: list[Pair], all_pairs: list[Pair], methods: Sequence[Method], config: PreprocessConfig,
                 cache: ResultCache, records: list[dict[str, Any]], log: Log) -> tuple[list[dict[str, Any]], list[str]]:
    """TIA rows per method, patient and VOI, for patients whose reference pairs are all in ``selected``."""
    ok = {(r["method"], r["pair"]): r["key"] for r in records if "error" not in r}
    rows: list[dict[str, Any]] = []
    patients: list[str] = []
    for pid in sorted({p.patient_id for p in selected if p.reference}):
        needed = sorted((p for p in all_pairs if p.reference and p.patient_id == pid), key=lambda p: p.moving_hours)
        chosen = {p.name for p in selected if p.reference and p.patient_id == pid}
        folder = needed[0].patient_dir
        if chosen != {p.name for p in needed} or not (folder / "truth" / "tia_imaged.nii.gz").is_file():
            continue
        ids = [needed[0].fixed_id, *(p.moving_id for p in needed)]
        series = None
        for method in methods:
            keys = [ok.get((method.name, p.name)) for p in needed]
            stored = [cache.load_field(method.name, k) for k in keys if k is not None]
            if len(stored) != len(needed) or any(s is None for s in stored):
                continue
            if series is None:
                series = load_series(folder, config, ids)
                patients.append(pid)
            fields = {p.moving_id: s[0] for p, s in zip(needed, stored, strict=True) if s is not None}
            t0 = time.perf_counter()
            rows += [{"method": method.name, **row} for row in series_tia(series, fields)]
            log(f"TIA {pid} {method.name}: {time.perf_counter() - t0:.1f} s")
    return rows, patients


def summarise(records: list[dict[str, Any]], methods: Sequence[Method]) -> dict[str, dict[str, Any]]:
    """mean/sd/n per method and metric (image metrics over all pairs, ground truth over reference pairs)."""
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        rows = [r for r in records if r["method"] == m.name and "error" not in r]
        keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))
                       and not isinstance(v, bool)})
        out[m.name] = {k: _stat([r.get(k) for r in rows if k in r]) for k in keys}
        out[m.name]["failed_pairs"] = sum(1 for r in records if r["method"] == m.name and "error" in r)
    return out


def summarise_tia(rows: list[dict[str, Any]], methods: Sequence[Method]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        for kind in ("kidneys", "tumours"):
            sel = [r for r in rows if r["method"] == m.name and r["kind"] == kind]
            if sel:
                out.setdefault(m.name, {})[kind] = {k: _stat([r[k] for r in sel]) for k in
                                                    ("tia_mbqh", "true_mbqh", "err_pct", "tia_rmse", "fit_rmse_bqml")}
    return out


def run_benchmark(cohorts: str | Sequence[str], methods: Sequence[str] | Sequence[Method], out: str | os.PathLike,
                  data: str | os.PathLike | None = None, limit: int | None = None, seed: int = 0,
                  downsample: int | None = None, elastix: ElastixSettings | None = None,
                  threads: int | None = None, log: Log = print) -> dict[str, Any]:
    """Run the benchmark and write OUT/results.json and OUT/results.md; returns the results dict.

    ``data``: the cohort folder (one cohort only); default OUT/data/<internal|external>[-ds<D>]. ``methods``: names
    (see :data:`corx.evaluation.methods.METHOD_NAMES`) or Method objects.
    """
    cohorts = [cohorts] if isinstance(cohorts, str) else list(cohorts)
    if data is not None and len(cohorts) > 1:
        raise CorxError("--data names one cohort folder: run one cohort at a time with it")
    if limit is not None and int(limit) < 1:
        raise CorxError(f"--limit must be a positive number of pairs, got {limit}")
    elastix = elastix or ElastixSettings()
    objs: list[Method] = [m if not isinstance(m, str) else make_methods([m], elastix, seed, threads)[0]
                          for m in methods]
    if not objs:
        raise CorxError("no methods given")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = ResultCache(out / "cache")
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_start = [round(x, 2) for x in os.getloadavg()]
    results: dict[str, Any] = {"cohorts": {}}
    for cohort in cohorts:
        name = cohort_name(cohort)
        folder = Path(data) if data is not None else out / "data" / (
            name if downsample in (None, 1) else f"{name}-ds{int(downsample)}")
        pairs, ds = prepare_cohort(cohort, folder, seed=seed, downsample=downsample, limit=limit,
                                   log=log)
        selected = pairs[: int(limit)] if limit else pairs
        size, spacing = network_geometry(ds)
        config = PreprocessConfig(spatial_size=size, pixdim=spacing)
        evaluator = PairEvaluator(cache, config, log)
        records: list[dict[str, Any]] = []
        for i, pair in enumerate(selected, 1):
            records += evaluator.run(pair, objs, f"[{cohort} {i}/{len(selected)}]")
        tia_rows, tia_patients = evaluate_tia(selected, pairs, objs, config, cache, records, log)
        results["cohorts"][cohort] = {
            "data": str(folder.resolve()),
            "grid": {"size": size[0], "spacing_mm": spacing[0], "downsample": ds},
            "selection": {"pairs": len(selected), "reference_pairs": sum(p.reference for p in selected),
                          "available_pairs": len(pairs), "limit": limit},
            "methods": [{"name": m.name, "status": m.status, "parameters": m.parameters(),
                         "settings": m.settings()} for m in objs],
            "summary": summarise(records, objs),
            "tia_summary": summarise_tia(tia_rows, objs),
            "tia_patients": tia_patients,
            "records": records,
            "tia_rows": tia_rows,
        }
    results["run"] = {"started": started, "cores": os.cpu_count(), "load_start": load_start,
                      "load_end": [round(x, 2) for x in os.getloadavg()], "seed": seed,
                      "elastix": elastix.as_dict(), "metrics_version": METRICS_VERSION}
    save_json(_finite(results), out / "results.json", overwrite=True)
    with atomic_path(out / "results.md", overwrite=True) as tmp:
        tmp.write_text(render_markdown(results))
    log(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return results


def _finite(obj: Any) -> Any:
    """NaN/inf -> None, so that results.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    """'a,b' or ('a', 'b') (python-fire turns 'a,b' into a tuple) -> ['a', 'b']."""
    items = methods.split(",") if isinstance(methods, str) else [str(m) for m in methods]
    return [m.strip() for m in items if m.strip()]
