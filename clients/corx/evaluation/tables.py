"""results.md: Table 2 (image metrics), the ground-truth table and the TIA table, with the paper's own figures."""

from __future__ import annotations

import math
from typing import Any

# Paper Table 2 (Kim et al., Med Phys 2024): mean (sd) per method and cohort.
PAPER_TABLE2: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "elastix": {
        "internal-val": {"ct_l1": (0.0130, 0.0130), "ct_ssim": (0.9188, 0.0128), "spect_ssim": (0.9593, 0.0138),
                         "spect_lncc": (0.6875, 0.0927), "nonpositive_jacobian_pct": (7.56, 0.9693)},
        "external": {"ct_l1": (0.0247, 0.0253), "ct_ssim": (0.9585, 0.0161), "spect_ssim": (0.9083, 0.0593),
                     "spect_lncc": (0.7372, 0.1578), "nonpositive_jacobian_pct": (5.75, 2.27)},
    },
    "transmorph": {
        "internal-val": {"ct_l1": (0.0096, 0.0008), "ct_ssim": (0.9128, 0.0159), "spect_ssim": (0.9521, 0.0134),
                         "spect_lncc": (0.5999, 0.1158), "nonpositive_jacobian_pct": (0.0348, 0.0239)},
        "external": {"ct_l1": (0.0241, 0.0050), "ct_ssim": (0.9519, 0.0172), "spect_ssim": (0.9219, 0.0603),
                     "spect_lncc": (0.6941, 0.1695), "nonpositive_jacobian_pct": (0.1903, 0.1662)},
    },
    "corx-nocs": {
        "internal-val": {"ct_l1": (0.0091, 0.0008), "ct_ssim": (0.9213, 0.0137), "spect_ssim": (0.9615, 0.0137),
                         "spect_lncc": (0.7511, 0.1004), "nonpositive_jacobian_pct": (0.0309, 0.0210)},
        "external": {"ct_l1": (0.0239, 0.0050), "ct_ssim": (0.9531, 0.0170), "spect_ssim": (0.9331, 0.0610),
                     "spect_lncc": (0.8363, 0.1682), "nonpositive_jacobian_pct": (0.1479, 0.122)},
    },
    "corx": {
        "internal-val": {"ct_l1": (0.0085, 0.0007), "ct_ssim": (0.9320, 0.0134), "spect_ssim": (0.9653, 0.0113),
                         "spect_lncc": (0.7765, 0.0943), "nonpositive_jacobian_pct": (0.0249, 0.0166)},
        "external": {"ct_l1": (0.0232, 0.0053), "ct_ssim": (0.9539, 0.0176), "spect_ssim": (0.9360, 0.0594),
                     "spect_lncc": (0.8568, 0.1590), "nonpositive_jacobian_pct": (0.1016, 0.0758)},
    },
}
PAPER_PARAMETERS = {"transmorph": 20_800_563, "corx-nocs": 9_557_110, "corx": 9_557_138}
PAPER_SECONDS = {"elastix": "~50", "corx": "< 6"}  # section 3.1, the authors' PC

# Paper Table 3 (external, 4 h fixed): kidneys / tumours, mean (sd). TIA in MBq h, error in %, "voxel-wise RMSE"
# as printed (kBq h).
PAPER_TABLE3: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "organ-based": {"kidneys": {"tia": (3.47e5, 1.49e5)}, "tumours": {"tia": (2.15e5, 3.22e5)}},
    "elastix": {"kidneys": {"tia": (4.07e5, 1.33e5), "err": (27.11, 39.68), "rmse": (3.63e5, 1.30e5)},
                "tumours": {"tia": (2.20e5, 3.29e5), "err": (-13.22, 23.56), "rmse": (1.76e5, 1.97e5)}},
    "transmorph": {"kidneys": {"tia": (3.64e5, 1.14e5), "err": (12.63, 28.16), "rmse": (4.60e5, 1.71e5)},
                   "tumours": {"tia": (1.34e5, 1.17e5), "err": (-30.27, 31.57), "rmse": (2.02e5, 2.28e5)}},
    "corx-nocs": {"kidneys": {"tia": (4.29e5, 1.30e5), "err": (35.90, 42.23), "rmse": (3.01e5, 1.01e5)},
                  "tumours": {"tia": (2.25e5, 3.39e5), "err": (-10.83, 36.61), "rmse": (1.23e5, 1.58e5)}},
    "corx": {"kidneys": {"tia": (4.35e5, 1.41e5), "err": (39.15, 47.46), "rmse": (2.66e5, 8.14e4)},
             "tumours": {"tia": (2.28e5, 3.59e5), "err": (-6.84, 64.22), "rmse": (1.18e5, 1.67e5)}},
}

TABLE2_COLUMNS = [("ct_l1", "CT L1", 4), ("ct_ssim", "CT SSIM", 4), ("spect_ssim", "SPECT SSIM", 4),
                  ("spect_lncc", "SPECT LNCC", 4), ("nonpositive_jacobian_pct", "% det J <= 0", 3)]
GT_COLUMNS = [("err_body_mean_mm", "err body mean", 2), ("err_body_p95_mm", "err body p95", 2),
              ("err_kidneys_mean_mm", "err kidneys mean", 2), ("err_kidneys_p95_mm", "err kidneys p95", 2),
              ("err_tumours_mean_mm", "err tumours mean", 2), ("err_tumours_p95_mm", "err tumours p95", 2),
              ("ct_err_body_mean_mm", "CT-field err body mean", 2), ("dice_organs", "Dice organs", 3),
              ("dice_kidneys", "Dice kidneys", 3), ("dice_tumours", "Dice tumours", 3),
              ("tumour_centroid_mm", "tumour centroid", 2), ("gt_coverage", "body on network grid", 3)]
TIA_COLUMNS = [("tia_mbqh", "TIA (MBq h)", "e"), ("true_mbqh", "true TIA (MBq h)", "e"),
               ("err_pct", "error (%)", 1), ("tia_rmse", "voxel TIA RMSE (MBq h/mL)", 4),
               ("fit_rmse_bqml", "fit RMSE (Bq/mL)", 0)]


def fmt(stat: dict[str, Any] | None, digits: int | str) -> str:
    """'mean ± sd' (or '-' when missing); digits 'e' gives 3 significant figures in scientific notation."""
    if not stat or stat.get("n", 0) == 0 or stat.get("mean") is None or not math.isfinite(stat["mean"]):
        return "-"
    mean, sd = float(stat["mean"]), float(stat.get("sd") or 0.0)
    if digits == "e":
        return f"{mean:.3g} ± {sd:.2g}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _paper(pair: tuple[float, float], digits: int) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def method_label(method: dict[str, Any]) -> str:
    status = method.get("status")
    return f"{method['name']} (untrained)" if status == "untrained" else method["name"]


def table2(cohort: str, block: dict[str, Any]) -> list[str]:
    """Table-2-shaped rows for one cohort: ours per method, then the paper's figures for that method."""
    head = ["method"] + [c[1] for c in TABLE2_COLUMNS] + ["# parameters", "s / pair"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in block["methods"]:
        stats = block["summary"][m["name"]]
        params = f"{m['parameters']:,}" if m.get("parameters") else "N/A"
        if (stats.get("transform_parameters") or {}).get("mean"):
            params += f" ({stats['transform_parameters']['mean']:,.0f} B-spline coefficients)"
        cells = [method_label(m)] + [fmt(stats.get(k), d) for k, _, d in TABLE2_COLUMNS]
        lines.append("| " + " | ".join([*cells, params, fmt(stats.get("seconds"), 1)]) + " |")
        paper = PAPER_TABLE2.get(m["name"], {}).get(cohort)
        if paper:
            cells = [f"*{m['name']}, paper*"] + [_paper(paper[k], d) for k, _, d in TABLE2_COLUMNS]
            p_params = f"{PAPER_PARAMETERS[m['name']]:,}" if m["name"] in PAPER_PARAMETERS else "N/A"
            lines.append("| " + " | ".join([*cells, p_params, PAPER_SECONDS.get(m["name"], "-")]) + " |")
    return lines


def gt_table(block: dict[str, Any]) -> list[str]:
    head = ["method"] + [c[1] for c in GT_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in block["methods"]:
        stats = block["summary"][m["name"]]
        lines.append("| " + " | ".join([method_label(m)] + [fmt(stats.get(k), d) for k, _, d in GT_COLUMNS]) + " |")
    return lines


def tia_table(block: dict[str, Any]) -> list[str]:
    head = ["method", "VOIs"] + [c[1] for c in TIA_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in block["methods"]:
        for kind in ("kidneys", "tumours"):
            stats = block["tia_summary"].get(m["name"], {}).get(kind)
            if not stats:
                continue
            cells = [method_label(m), f"{kind} (n={stats['tia_mbqh']['n']})"]
            lines.append("| " + " | ".join(cells + [fmt(stats.get(k), d) for k, _, d in TIA_COLUMNS]) + " |")
    return lines


def paper_table3() -> list[str]:
    lines = ["| paper, external | VOIs | TIA (MBq h) | average error (%) | voxel-wise RMSE (kBq h, as printed) |",
             "|---|---|---|---|---|"]
    for name, kinds in PAPER_TABLE3.items():
        for kind, vals in kinds.items():
            tia = f"{vals['tia'][0]:.3g} ± {vals['tia'][1]:.3g}"
            err = f"{vals['err'][0]:.2f} ± {vals['err'][1]:.2f}" if "err" in vals else "-"
            rmse = f"{vals['rmse'][0]:.3g} ± {vals['rmse'][1]:.3g}" if "rmse" in vals else "-"
            lines.append(f"| {name} | {kind} | {tia} | {err} | {rmse} |")
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """The whole results.md."""
    run = results["run"]
    out = ["# corx benchmark", "",
           f"Run {run['started']} on {run['cores']} CPU cores (load average at start {run['load_start']}, at end "
           f"{run['load_end']}; the machine is shared). Seed {run['seed']}; Elastix: "
           f"{', '.join(f'{k}={v}' for k, v in run['elastix'].items())}.", "",
           "Table 2 metrics: every selected ordered pair (mean ± sd over pairs). Ground truth and TIA: pairs whose "
           "fixed image is the reference time point (4 h), the only ones with true fields. 'untrained': the "
           "network's weights file is missing, so it ran with freshly initialised weights (reported, not hidden). "
           "'s / pair': the method's own work on a preprocessed pair (network forward or Elastix), on this machine.",
           ""]
    for cohort, block in results["cohorts"].items():
        sel = block["selection"]
        out += [f"## {cohort}: {sel['pairs']} pairs ({sel['reference_pairs']} with the reference as fixed) of "
                f"{sel['available_pairs']}; network grid {block['grid']['size']} at {block['grid']['spacing_mm']} mm"
                f" (downsample {block['grid']['downsample']})", ""]
        out += ["### Table 2 (image metrics on the normalised pair)", "", *table2(cohort, block), ""]
        out += [f"### Ground truth (mm unless stated; {sel['reference_pairs']} reference pairs)", "",
                *gt_table(block), ""]
        pats = block.get("tia_patients") or []
        if pats:
            out += [f"### TIA against the true TIA (patients {', '.join(pats)}; kidneys = one VOI per patient, "
                    "tumours = one VOI each)", "", *tia_table(block), ""]
        else:
            out += ["### TIA", "", "No patient had all its reference pairs in the selection (raise --limit).", ""]
        if cohort == "external":
            out += ["Paper Table 3 (external cohort, for reference; their 'organ-based' TIA is the VOI-curve TIA of "
                    "the real patients, not a ground truth):", "", *paper_table3(), ""]
    return "\n".join(out) + "\n"
