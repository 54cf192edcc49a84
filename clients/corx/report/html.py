"""report.html: one self-contained page (figures referenced as figures/*.png) from the pipeline summary."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

CAPTIONS = {
    "overlay": "Before/after registration to the reference (paper Figures 2-5): CT and SPECT of the time point "
               "(magenta) over the reference (green); grey/white where they agree. Right column: the registered "
               "SPECT fused on the registered CT. Cyan crosshair: the profile point.",
    "fields": "Displacement on the reference grid (coronal): |d| per axis as RGB, the deformed grid, and the "
              "Jacobian determinant (blue < 1 compression, red > 1 expansion, black contour: folding, <= 0).",
    "profiles": "Line profiles of the normalised activity through the point (paper Figure 6): reference (black), "
                "registered time points (solid) and before registration (dashed).",
    "tia_maps": "Voxel TIA, mono-exponential fit RMSE, eq.-6 rule and absorbed dose (paper Figure 7); with a phantom, "
                "the true imaged TIA and the difference.",
    "dvh": "Cumulative dose-volume histogram per VOI (the dose of dose.nii.gz, see 'dose mode'): % of the VOI "
           "volume receiving at least the dose; "
           "dashed: the 23 Gy kidney limit (V23Gy in the VOI table). Values in dvh.csv.",
}

VOI_COLUMNS = (("voi", "VOI"), ("volume_ml", "volume (mL)"), ("tia_voi_mbqh", "VOI TIA (MBq h)"),
               ("tia_voxel_sum_mbqh", "voxel sum (MBq h)"), ("percent_difference", "diff (%)"),
               ("voi_rule", "rule"), ("mean_voxel_rmse_bq_per_ml", "mean RMSE (Bq/mL)"),
               ("mean_dose_gy", "mean dose (Gy)"), ("mean_dose_dvk_gy", "mean DVK dose (Gy)"),
               ("mean_dose_led_gy", "mean LED dose (Gy)"), ("dmax_gy", "Dmax (Gy)"), ("d98_gy", "D98 (Gy)"),
               ("d50_gy", "D50 (Gy)"), ("d2_gy", "D2 (Gy)"), ("v23gy_pct", "V23Gy (%)"),
               ("t_eff_h", "T_eff (h)"), ("bed_voi_gy", "BED (Gy)"), ("eqd2_voi_gy", "EQD2 (Gy)"))
TRUTH_COLUMNS = (("voi", "VOI"), ("volume_ml", "volume (mL)"), ("true_tia_mbqh", "true TIA (MBq h)"),
                 ("imaged_true_tia_mbqh", "imaged truth (MBq h)"), ("tia_mbqh", "ours (MBq h)"),
                 ("error_vs_imaged_percent", "error vs imaged (%)"), ("error_vs_true_percent", "error vs true (%)"),
                 ("voxel_mae_percent", "voxel MAE (%)"),
                 ("unregistered_error_vs_imaged_percent", "no registration: error vs imaged (%)"),
                 ("unregistered_voxel_mae_percent", "no registration: voxel MAE (%)"))
REG_COLUMNS = (("id", "time point"), ("hours", "hours"), ("max_disp_mm", "max |d| (mm)"),
               ("mean_disp_mm", "mean |d| in body (mm)"), ("nonpositive_jacobian_percent", "J <= 0 (%)"),
               ("jacobian_min", "J min"), ("jacobian_max", "J max"), ("refine", "refinement loss"))

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1300px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
.warn { background: #fff0f0; border: 2px solid #d00; padding: 0.6em 1em; font-weight: bold; color: #a00; }
.note { background: #f4f8ff; border: 1px solid #9ab; padding: 0.5em 1em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #444; } code { background: #f4f4f4; padding: 0 3px; }
"""


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.4e}"
    return html.escape(str(value))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """An HTML table of the columns present in the rows."""
    cols = [(k, title) for k, title in columns if any(k in r for r in rows)]
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(k))}</td>" for k, _ in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pairs(items: Sequence[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in items) + \
        "</table>"


def _figure(rel: str) -> str:
    stem = rel.rsplit("/", 1)[-1].removesuffix(".png")
    caption = CAPTIONS.get(stem.split("_")[0] if stem.startswith("overlay") else stem, "")
    return (f'<figure><img src="{html.escape(rel)}" alt="{html.escape(stem)}">'
            f"<figcaption><b>{html.escape(stem)}</b>: {html.escape(caption)}</figcaption></figure>")


def render_report(summary: dict[str, Any], figures: Sequence[str]) -> str:
    """The report page for a pipeline ``summary`` (pipeline.json) and figure paths relative to the page."""
    s = summary
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>corx report {html.escape(s['patient_id'])}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>corx pipeline report: patient {html.escape(s['patient_id'])}</h1>"]
    parts += [f"<p class='warn'>WARNING: {html.escape(w)}</p>" for w in s.get("warnings", [])]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in s.get("notes", [])]
    tia = s.get("tia", {})
    parts.append("<h2>Summary</h2>" + _pairs([
        ("method", s["method"]), ("network", s.get("network", "")), ("reference time point", s["reference"]),
        ("time points (h)", ", ".join(f"{t['id']} ({t['hours']:g})" for t in s["timepoints"])),
        ("reference SPECT grid", s["grid"]["description"]),
        ("profile point (voxel)", f"{tuple(s['point']['voxel'])}: {s['point']['how']}"),
        ("injected activity (MBq)", s.get("injected_activity_mbq")),
        ("total TIA (MBq h)", tia.get("total_mbqh")),
        ("TIA / injected activity (h)", tia.get("total_over_injected_h")),
        ("max dose (Gy)", s.get("dose", {}).get("max_gy")),
        ("dose mode", {"dvk": "DVK: 177Lu kernel convolution, density-scaled", "led": "LED: local energy deposition"}
         .get(s.get("dose", {}).get("mode", ""), s.get("dose", {}).get("mode"))),
        ("run time (s)", s.get("total_s")), ("corx version", s.get("version")),
    ]))
    reg_rows = []
    for t in s["timepoints"]:
        row = {**t}
        ref = t.get("refine")
        row["refine"] = f"{ref['loss_before']:.4g} -> {ref['loss_after']:.4g} ({ref['steps']} steps)" if ref else ""
        reg_rows.append(row)
    parts.append("<h2>Registration</h2>" + table(reg_rows, REG_COLUMNS))
    parts.append("<h2>Figures</h2>" + "".join(_figure(f) for f in figures))
    if s.get("voi"):
        parts.append("<h2>VOI table</h2><p>VOI TIA from the VOI's mean time-activity curve vs the sum of the "
                     "voxel TIAs (paper Table 3); full table in <code>voi.csv</code>.</p>"
                     + table(s["voi"], VOI_COLUMNS))
    if s.get("truth"):
        parts.append("<h2>Error against the phantom's true TIA</h2><p>Imaged truth = the true TIA blurred by the "
                     "SPECT resolution, summed over the VOI; voxel MAE = mean absolute voxel difference to it, % of "
                     "its VOI mean. <code>truth_comparison.csv</code> has every column.</p>"
                     + table(s["truth"], TRUTH_COLUMNS))
    timings = [{"step": k, "seconds": v} for k, v in s.get("timings_s", {}).items()]
    parts.append("<h2>Run timings</h2>" + table(timings, (("step", "step"), ("seconds", "seconds"))))
    outputs = [{"file": k, "content": v} for k, v in s.get("outputs", {}).items()]
    parts.append("<h2>Output files</h2>" + table(outputs, (("file", "file"), ("content", "content"))))
    parts.append("</body></html>\n")
    return "\n".join(parts)
