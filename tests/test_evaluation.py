"""corx.evaluation: metrics with known answers, ground truth, cache, cohort selection, the benchmark end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from corx.evaluation import cache as C
from corx.evaluation import ground_truth as G
from corx.evaluation.cohort import network_geometry, order_pairs, pairs_from_datalist, planned_datalist
from corx.geometry.displacement import resample_field
from corx.geometry.resample import same_grid
from corx.registration.preprocess import PreprocessConfig, preprocess_pair

pytestmark = pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning")


def texture(shape: tuple[int, ...] = (20, 20, 20), seed: int = 0, sigma: float = 1.5) -> np.ndarray:
    img = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    return (0.1 + 0.8 * (img - img.min()) / (img.max() - img.min())).astype(np.float32)


def pair_of(fixed_ct: np.ndarray, moving_ct: np.ndarray, fixed_spect: np.ndarray,
            moving_spect: np.ndarray) -> np.ndarray:
    return np.stack([fixed_ct, moving_ct, fixed_spect, moving_spect]).astype(np.float32)


def test_evaluation_imports_neither_torch_nor_itk() -> None:
    code = ("import importlib, pkgutil, sys, corx.evaluation as ev\n"
            "[importlib.import_module(m.name) for m in pkgutil.iter_modules(ev.__path__, 'corx.evaluation.')]\n"
            "import corx.cli\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'itk', 'monai'))\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- image metrics (the bundle evaluator's definitions) --------------------------------------------------------
def test_image_metrics_known_answers() -> None:
    from corx.evaluation.metrics import image_metrics

    a, s = texture(seed=1), texture(seed=2)
    zero = np.zeros((3, *a.shape), np.float32)
    same = image_metrics(zero, pair_of(a, a, s, s))
    assert same["ct_l1"] == pytest.approx(0.0, abs=1e-7) and same["ct_mse"] == pytest.approx(0.0, abs=1e-9)
    assert same["ct_ssim"] == pytest.approx(1.0, abs=1e-4) and same["spect_ssim"] == pytest.approx(1.0, abs=1e-4)
    assert same["spect_lncc"] == pytest.approx(1.0, abs=1e-3)
    offset = image_metrics(zero, pair_of(a, a + 0.1, s, 2.0 * s + 0.05))
    assert offset["ct_l1"] == pytest.approx(0.1, abs=1e-5)
    assert offset["ct_mse"] == pytest.approx(0.01, abs=1e-5)
    assert offset["spect_lncc"] == pytest.approx(1.0, abs=1e-3)  # local NCC ignores gain and offset


def test_image_metrics_symmetric_and_field_sensitive() -> None:
    from corx.evaluation.metrics import image_metrics

    a, b, s, t = texture(seed=1), texture(seed=3), texture(seed=2), texture(seed=4)
    zero = np.zeros((3, *a.shape), np.float32)
    fwd = image_metrics(zero, pair_of(a, b, s, t))
    bwd = image_metrics(zero, pair_of(b, a, t, s))
    for key in fwd:  # documented: every image measure is symmetric in the two images it compares
        assert fwd[key] == pytest.approx(bwd[key], rel=1e-4, abs=1e-6), key
    shift = np.array([2.0, -1.0, 0.0])
    moving = ndimage.shift(a, shift, order=1, mode="nearest")  # moving(p + shift) = a(p)
    u = np.broadcast_to(shift[:, None, None, None], (3, *a.shape)).astype(np.float32)
    wrong = image_metrics(zero, pair_of(a, moving, s, s))["ct_l1"]
    right = image_metrics(u, pair_of(a, moving, s, s))["ct_l1"]
    assert right < 0.2 * wrong


def test_folding_percent() -> None:
    from corx.evaluation.metrics import folding_percent, parameter_count

    shape = (8, 8, 8)
    assert folding_percent(np.zeros((3, *shape))) == 0.0
    fold = np.zeros((3, *shape))
    fold[0] = -2.0 * np.indices(shape)[0]  # det J = 1 - 2 = -1 everywhere
    assert folding_percent(fold) == 100.0
    half = fold * (np.indices(shape)[2] < 4)
    assert 40.0 <= folding_percent(half) <= 60.0
    assert parameter_count("identity") is None and parameter_count("elastix") is None


# ---- ground truth -------------------------------------------------------------------------------------------------
def test_resample_field_same_grid_is_identity() -> None:
    u = np.random.default_rng(0).normal(size=(3, 6, 7, 8)).astype(np.float32)
    aff = np.diag([2.0, 3.0, 4.0, 1.0])
    out, inside = resample_field(u, aff, (6, 7, 8), aff)
    np.testing.assert_array_equal(out, u)
    assert inside.all()


def test_resample_field_converts_voxels_through_world() -> None:
    """A linear world displacement is kept exactly by trilinear resampling, whatever the two grids."""
    src = np.eye(4)
    src[:3, :3] = np.array([[-4.0, 0, 0], [0, 0, 3.0], [0, 5.0, 0]])  # LAS-like, permuted
    src[:3, 3] = [60.0, -30.0, -40.0]
    dst = np.diag([3.0, 3.0, 3.0, 1.0])
    dst[:3, 3] = [-20.0, -20.0, 5.0]
    shape_src, shape_dst = (30, 24, 20), (12, 14, 10)

    def world_disp(points: np.ndarray) -> np.ndarray:  # d(x) = G x + b, mm
        g = np.array([[0.02, 0.01, 0.0], [0.0, -0.01, 0.03], [0.01, 0.0, 0.02]])
        return np.einsum("ab,b...->a...", g, points) + np.array([5.0, -3.0, 2.0])[:, None, None, None]

    def world(shape: tuple[int, ...], aff: np.ndarray) -> np.ndarray:
        idx = np.indices(shape, dtype=np.float64)
        return np.einsum("ab,b...->a...", aff[:3, :3], idx) + aff[:3, 3, None, None, None]

    u_src = np.linalg.solve(src[:3, :3], world_disp(world(shape_src, src)).reshape(3, -1)).reshape(3, *shape_src)
    u_dst, inside = resample_field(u_src, src, shape_dst, dst)
    expected = np.linalg.solve(dst[:3, :3], world_disp(world(shape_dst, dst)).reshape(3, -1)).reshape(3, *shape_dst)
    assert inside.all()
    np.testing.assert_allclose(u_dst, expected, atol=1e-3)


def test_error_stats_dice_and_centroid_known_answers() -> None:
    aff = np.diag([2.0, 3.0, 4.0, 1.0])
    shape = (20, 20, 20)
    truth = np.random.default_rng(0).normal(size=(3, *shape))
    pred = truth.copy()
    pred[0] += 1.0  # one voxel along i = 2 mm everywhere
    region = {"all": np.ones(shape, bool)}
    stats = G.error_stats(pred, truth, aff, region)
    assert stats["err_all_mean_mm"] == pytest.approx(2.0) and stats["err_all_p95_mm"] == pytest.approx(2.0)
    assert G.error_stats(truth, truth, aff, region)["err_all_mean_mm"] == 0.0

    a = np.zeros(shape, np.uint8)
    a[2:12, 5:10, 5:10] = 4
    b = np.zeros(shape, np.uint8)
    b[7:17, 5:10, 5:10] = 4
    zero, everywhere = np.zeros((3, *shape), np.float32), np.ones(shape, bool)
    assert G.label_dice(a, a, zero, everywhere)["dice_organs"] == 1.0
    assert G.label_dice(b, a, zero, everywhere)["dice_organs"] == pytest.approx(0.5)
    back = np.zeros((3, *shape), np.float32)
    back[0] = 5.0  # warped(p) = b(p + 5 along i) = a(p)
    assert G.label_dice(b, a, back, everywhere)["dice_organs"] == pytest.approx(1.0)

    labels = np.zeros(shape, np.uint8)
    labels[8:12, 8:12, 8:12] = 11
    blob = ndimage.gaussian_filter((labels == 11).astype(np.float32), 1.0)
    moved = ndimage.shift(blob, (0.0, 1.0, 0.0), order=1)  # 1 voxel along j = 3 mm
    assert G.tumour_centroid_errors(blob, blob, labels, aff) == [pytest.approx(0.0, abs=1e-9)]
    assert G.tumour_centroid_errors(moved, blob, labels, aff, dilate_mm=8.0)[0] == pytest.approx(3.0, abs=0.6)


def test_true_ct_pair_field() -> None:
    shape = (6, 6, 6)
    rng = np.random.default_rng(0)
    mov = rng.normal(scale=0.5, size=(3, *shape)).astype(np.float32)
    np.testing.assert_allclose(G.true_ct_pair_field(np.zeros_like(mov), mov), mov, atol=1e-6)
    c = np.broadcast_to(np.array([1.0, -0.5, 0.25])[:, None, None, None], (3, *shape)).astype(np.float32)
    d = np.broadcast_to(np.array([2.0, 0.5, -0.75])[:, None, None, None], (3, *shape)).astype(np.float32)
    np.testing.assert_allclose(G.true_ct_pair_field(c, d), d - c, atol=1e-6)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One internal patient (3 time points, downsample 2) as a validation cohort folder."""
    from corx_bundle.scripts.phantom import build_datalist, generate_patient
    from corx_bundle.scripts.phantom.datalist import PatientPlan

    root = tmp_path_factory.mktemp("cohort") / "internal"
    folder = generate_patient(root, "internal", index=0, seed=3, downsample=2, n_timepoints=3)
    tps = tuple(tp["id"] for tp in json.loads((folder / "patient.json").read_text())["timepoints"])
    datalist = build_datalist("internal", [PatientPlan(0, "P001", tps, "validation")])
    (root / "datalist.json").write_text(json.dumps(datalist))
    return root


def test_internal_network_grid_is_the_reference_grid(cohort: Path) -> None:
    d = cohort / "P001"
    size, spacing = network_geometry(2)
    prepared = preprocess_pair(d / "ct_4h.nii.gz", d / "ct_4h.nii.gz", d / "spect_4h.nii.gz", d / "spect_4h.nii.gz",
                               PreprocessConfig(spatial_size=size, pixdim=spacing))
    import nibabel as nib

    ref = nib.load(str(d / "spect_4h.nii.gz"))
    assert same_grid(prepared.moving_ct_hu.shape, prepared.affine, ref.shape, ref.affine)
    u = np.random.default_rng(0).normal(size=(3, *ref.shape)).astype(np.float32)
    out, inside = resample_field(u, prepared.affine, ref.shape, ref.affine)
    np.testing.assert_array_equal(out, u)
    assert inside.all()


# ---- cache and cohort -------------------------------------------------------------------------------------------
def test_cache_round_trip_and_keys(tmp_path: Path) -> None:
    cache = C.ResultCache(tmp_path)
    u = np.random.default_rng(0).normal(scale=5.0, size=(3, 5, 5, 5)).astype(np.float32)
    stored = cache.save_field("m", "k1", u, {"seconds": 1.5})
    field, info = cache.load_field("m", "k1")
    np.testing.assert_array_equal(field, stored)
    assert np.abs(field - u).max() <= 0.5e-3 + 1e-6 and info == {"seconds": 1.5}
    big = u * 10.0  # beyond the int16 range: stored as float32
    cache.save_field("m", "k2", big, {})
    np.testing.assert_array_equal(cache.load_field("m", "k2")[0], big)
    assert cache.load_field("m", "absent") is None and cache.load_json("m", "k1", "metrics") is None
    cache.save_json("m", "k1", "metrics", {"a": float("nan"), "b": 1})
    assert cache.load_json("m", "k1", "metrics")["b"] == 1
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]  # no temporary files left
    assert C.make_key("a", {"x": 1}) == C.make_key("a", {"x": 1}) != C.make_key("a", {"x": 2})


def test_cohort_selection_paper_protocol() -> None:
    for cohort, n_pairs, n_ref in (("internal-val", 30, 9), ("external", 84, 28)):
        entries = planned_datalist(cohort, seed=0)
        pairs = pairs_from_datalist(entries, Path("/nowhere"), "4h")
        assert len(pairs) == n_pairs and sum(p.reference for p in pairs) == n_ref
        assert all(p.reference for p in pairs[:n_ref])  # reference pairs first
        assert pairs == order_pairs(list(reversed(pairs)))
        assert all(p.fixed_id != "0.5h" and p.moving_id != "0.5h" for p in pairs)


# ---- the benchmark end to end -------------------------------------------------------------------------------------
GT_LOWER = ["err_body_mean_mm", "err_body_p95_mm", "err_kidneys_mean_mm", "err_kidneys_p95_mm",
            "err_tumours_mean_mm", "err_tumours_p95_mm", "tumour_centroid_mm"]
GT_HIGHER = ["dice_organs", "dice_kidneys", "dice_tumours"]


def test_benchmark_sanity_cache_and_resume(cohort: Path, tmp_path: Path) -> None:
    from corx.evaluation.benchmark import run_benchmark
    from corx.registration.elastix import ElastixSettings

    fast = ElastixSettings(max_iterations=100, resolutions=2, grid_spacing_mm=30.0)
    methods = ["identity", "oracle", "elastix"]
    lines: list[str] = []
    run = {"data": cohort, "elastix": fast, "limit": 3, "log": lines.append}
    res = run_benchmark("internal-val", methods, tmp_path / "out", **run)
    block = res["cohorts"]["internal-val"]
    assert block["selection"] == {"pairs": 3, "reference_pairs": 2, "available_pairs": 6, "limit": 3}
    recs = {(r["method"], r["pair"]): r for r in block["records"]}
    ref_pairs = sorted({r["pair"] for r in block["records"] if r["reference"]})
    assert len(ref_pairs) == 2
    for pair in ref_pairs:
        ident, oracle, elx = recs[("identity", pair)], recs[("oracle", pair)], recs[("elastix", pair)]
        for key in GT_LOWER:  # identity is worst on every ground-truth measure
            assert oracle[key] < ident[key], (pair, key)
        for key in GT_HIGHER:
            assert oracle[key] > ident[key], (pair, key)
        assert oracle["err_body_mean_mm"] < 0.05 and oracle["dice_organs"] > 0.85
        assert elx["ct_l1"] < ident["ct_l1"] and elx["ct_mse"] < ident["ct_mse"]  # Elastix aligns the CT
        assert ident["nonpositive_jacobian_pct"] == 0.0 and ident["gt_coverage"] == 1.0
    non_ref = [r for r in block["records"] if not r["reference"]]
    assert len(non_ref) == 3 and all("error" in r for r in non_ref if r["method"] == "oracle")  # no truth there
    assert all("err_body_mean_mm" not in r for r in non_ref) and "ct_l1" in recs[("elastix", non_ref[0]["pair"])]
    assert block["summary"]["oracle"]["failed_pairs"] == 1
    assert block["tia_patients"] == ["P001"]
    tia = block["tia_summary"]
    assert tia["oracle"]["kidneys"]["tia_rmse"]["mean"] < tia["identity"]["kidneys"]["tia_rmse"]["mean"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "0.6875" in md and "| elastix |" in md and "Ground truth" in md and "TIA" in md
    assert json.loads((tmp_path / "out" / "results.json").read_text())["cohorts"]["internal-val"]["records"]

    # rerun: everything from the cache, same numbers
    lines.clear()
    t0 = time.perf_counter()
    again = run_benchmark("internal-val", methods, tmp_path / "out", **run)
    assert time.perf_counter() - t0 < 60
    assert all("cached" in line or "oracle: FAILED" in line for line in lines if "[internal-val" in line)
    assert again["cohorts"]["internal-val"]["summary"] == block["summary"]

    # resume: drop one Elastix result; only that pair is registered again
    key = recs[("elastix", ref_pairs[0])]["key"]
    for p in (tmp_path / "out" / "cache" / "elastix").glob(f"{key}.*"):
        p.unlink()
    lines.clear()
    run_benchmark("internal-val", methods, tmp_path / "out", **run)
    ran = [line for line in lines if line.startswith("[internal-val") and "elastix:" in line and "cached" not in line]
    assert len(ran) == 1 and ref_pairs[0] in ran[0]


def test_cli_benchmark_generates_only_what_it_needs(tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "corx"
    out = tmp_path / "bench"
    proc = subprocess.run([str(cli), "benchmark", str(out), "--cohort", "external", "--methods", "identity",
                           "--limit", "1", "--downsample", "4"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (out / "data" / "external-ds4" / "P001" / "patient.json").is_file()
    assert not (out / "data" / "external-ds4" / "P002").exists()
    md = (out / "results.md").read_text()
    assert "## external: 1 pairs (1 with the reference as fixed) of 84" in md
    bad = subprocess.run([str(cli), "benchmark", str(out), "--methods", "identity,nope"], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "unknown method 'nope'" in bad.stderr


def test_missing_weights_are_reported_untrained(tmp_path: Path) -> None:
    from corx.evaluation.methods import bundle_network, make_methods
    from corx.evaluation.tables import method_label

    net = bundle_network("corx", weights=tmp_path / "absent.pt", seed=3)
    assert net.status == "untrained" and net.settings()["weights"] == "untrained(seed=3)"
    assert method_label({"name": net.name, "status": net.status}) == "corx (untrained)"
    (tmp_path / "model.pt").write_bytes(b"weights")
    trained = bundle_network("corx", weights=tmp_path / "model.pt")
    assert trained.status == "trained" and trained.settings()["weights"] != net.settings()["weights"]
    names = [m.name for m in make_methods(["identity", "elastix", "elastix-spect", "transmorph", "corx-nocs",
                                           "corx"])]
    assert names == ["identity", "elastix", "elastix-spect", "transmorph", "corx-nocs", "corx"]


def test_elastix_cache_key_ignores_what_does_not_change_the_result() -> None:
    from corx.evaluation.methods import ElastixMethod
    from corx.registration.elastix import ElastixSettings

    a, b = ElastixSettings(spect_weight=0.1, threads=1), ElastixSettings(spect_weight=1.0, threads=2)
    assert ElastixMethod("ct", a).settings() == ElastixMethod("ct", b).settings()
    assert ElastixMethod("spect", a).settings() != ElastixMethod("spect", b).settings()
    assert ElastixMethod("ct", a).settings() != ElastixMethod("ct", ElastixSettings(max_iterations=10)).settings()
