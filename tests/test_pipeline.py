"""`corx pipeline`: geometry on the reference SPECT grid, ITK field, outputs, atomicity, inputs untouched, CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from corx.errors import CorxError
from corx.geometry.displacement import voxel_field, warp_to_reference, world_displacement
from corx.geometry.resample import resample_to_grid
from corx.geometry.warp import load_field
from corx.pipeline.run import MANAGED, run_pipeline
from corx.pipeline.staging import COMPLETE
from corx.registration.methods import GridField
from corx.registration.preprocess import PreprocessConfig

CLI = Path(sys.executable).parent / "corx"


# --------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def internal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Internal-cohort phantom (RAS, 64^3 SPECT at 7.74 mm), 3 time points."""
    from corx_bundle.scripts.phantom import generate_patient

    return generate_patient(tmp_path_factory.mktemp("internal"), "internal", 0, 7, downsample=2)


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """External-cohort phantom: LAS SPECT grid 51x51x50 at 9.86 mm (matrix != 128), 4 time points."""
    from corx_bundle.scripts.phantom import generate_patient

    return generate_patient(tmp_path_factory.mktemp("external"), "external", 0, 7, downsample=2)


def _manifest(patient: Path) -> dict:
    return json.loads((patient / "patient.json").read_text())


def _moving_ids(patient: Path) -> list[str]:
    man = _manifest(patient)
    return [t["id"] for t in man["timepoints"] if t["id"] != man["reference"]]


def _ref_spect(patient: Path) -> nib.Nifti1Image:
    man = _manifest(patient)
    return nib.load(str(patient / f"spect_{man['reference']}.nii.gz"))


class QueueMethod:
    """A registration method returning prepared fields in time-point order (tests only)."""

    def __init__(self, name: str, fields: list[GridField]) -> None:
        self.name, self.fields = name, list(fields)

    def register(self, pair: object) -> GridField:
        return self.fields.pop(0)


def truth_method(patient: Path) -> QueueMethod:
    """The phantom's true SPECT fields (reference grid, voxels): registration by the ground truth."""
    fields = []
    for tid in _moving_ids(patient):
        u, affine = load_field(patient / "truth" / f"field_spect_{tid}.nii.gz")
        fields.append(GridField(u, affine))
    return QueueMethod("truth", fields)


def _network_like_grid(ref: nib.Nifti1Image, spacing: float = 6.0) -> tuple[tuple[int, int, int], np.ndarray]:
    """A RAS grid at another spacing covering the reference box (as the network grid does)."""
    lo = np.min([ref.affine[:3, :3] @ c + ref.affine[:3, 3] for c in np.array(np.meshgrid(
        *[(0, n - 1) for n in ref.shape])).reshape(3, -1).T], axis=0)
    hi = np.max([ref.affine[:3, :3] @ c + ref.affine[:3, 3] for c in np.array(np.meshgrid(
        *[(0, n - 1) for n in ref.shape])).reshape(3, -1).T], axis=0)
    shape = tuple(int(np.ceil((h - lo_) / spacing)) + 1 for lo_, h in zip(lo, hi, strict=True))
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = lo
    return shape, affine  # type: ignore[return-value]


def _checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------- geometry (unit)
def test_known_world_shift_from_another_grid_lands_on_the_reference_grid() -> None:
    """A constant shift given on a RAS 'network' grid, applied on a LAS anisotropic reference grid."""
    ref_shape = (20, 22, 18)
    ref_aff = np.array([[-5.0, 0, 0, 50], [0, 4.0, 0, -40], [0, 0, 6.0, -50], [0, 0, 0, 1]])  # LAS
    net_shape, net_aff = (30, 30, 30), np.diag([4.0, 4.0, 4.0, 1.0])
    net_aff[:3, 3] = -60
    d0 = np.array([3.0, -2.5, 4.0])  # RAS mm
    u_net = np.broadcast_to((np.linalg.inv(net_aff[:3, :3]) @ d0)[:, None, None, None], (3, *net_shape))
    disp = world_displacement(u_net, net_aff, ref_shape, ref_aff)
    np.testing.assert_allclose(disp, np.broadcast_to(d0[:, None, None, None], disp.shape), atol=1e-5)
    u_ref = voxel_field(disp, ref_aff)
    np.testing.assert_allclose(u_ref[:, 3, 4, 5], [3.0 / -5.0, -2.5 / 4.0, 4.0 / 6.0], atol=1e-6)

    # moving image on its own (RAS, finer) grid: a smooth world function, sampled once at x + d
    mov_aff = np.diag([2.0, 2.0, 3.0, 1.0])
    mov_aff[:3, 3] = [-70, -60, -70]
    idx = np.indices((70, 60, 50)).reshape(3, -1)
    world = mov_aff[:3, :3] @ idx + mov_aff[:3, 3:4]

    def f(x: np.ndarray) -> np.ndarray:
        return 100.0 + 3.0 * x[0] - 2.0 * x[1] + 1.5 * x[2]  # linear: trilinear interpolation is exact

    moving = f(world).reshape(70, 60, 50).astype(np.float32)
    out = warp_to_reference(moving, mov_aff, ref_shape, ref_aff, disp)
    q = np.indices(ref_shape).reshape(3, -1)
    expected = f(ref_aff[:3, :3] @ q + ref_aff[:3, 3:4] + d0[:, None]).reshape(ref_shape)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-2)


def test_displacement_is_interpolated_between_grids() -> None:
    """A field varying linearly in world space keeps its world values on another grid."""
    net_aff = np.diag([4.0, 4.0, 4.0, 1.0])
    idx = np.indices((16, 16, 16)).astype(np.float64)
    world_x = net_aff[0, 0] * idx[0]
    d_world = np.stack([0.1 * world_x, np.zeros_like(world_x), 0.05 * world_x])  # mm
    u_net = np.einsum("ij,j...->i...", np.linalg.inv(net_aff[:3, :3]), d_world)
    ref_aff = np.array([[0, 0, 5.0, 2], [-5.0, 0, 0, 50], [0, 5.0, 0, 3], [0, 0, 0, 1]])  # permuted axes
    disp = world_displacement(u_net, net_aff, (8, 8, 8), ref_aff)
    q = np.indices((8, 8, 8)).reshape(3, -1)
    x = (ref_aff[:3, :3] @ q + ref_aff[:3, 3:4])[0].reshape(8, 8, 8)
    np.testing.assert_allclose(disp[0], 0.1 * x, atol=1e-4)
    np.testing.assert_allclose(disp[2], 0.05 * x, atol=1e-4)


# ------------------------------------------------------------------------------------- whole pipeline runs
@pytest.fixture(scope="module")
def shifted_external(external: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The external (LAS) patient registered with a known constant shift given on a RAS network-like grid."""
    ref = _ref_spect(external)
    shape, affine = _network_like_grid(ref)
    d0 = np.array([6.0, -4.0, 9.0])
    u = np.broadcast_to((np.linalg.inv(affine[:3, :3]) @ d0)[:, None, None, None], (3, *shape)).astype(np.float32)
    method = QueueMethod("shift", [GridField(u.copy(), affine) for _ in _moving_ids(external)])
    out = tmp_path_factory.mktemp("shifted") / "out"
    run_pipeline(external / "patient.json", out, method=method, progress=False, quiet=True)
    return out, d0


def test_every_output_lies_on_the_reference_spect_grid(shifted_external: tuple[Path, np.ndarray],
                                                       external: Path) -> None:
    out, _ = shifted_external
    ref = _ref_spect(external)
    images = sorted(out.rglob("*.nii.gz"))
    ids = [t["id"] for t in _manifest(external)["timepoints"]]
    expected = {"tia.nii.gz", "tia_rmse.nii.gz", "tia_sd.nii.gz", "tia_rule.nii.gz", "dose.nii.gz", "dose_led.nii.gz",
                "bed.nii.gz", "tia_model.nii.gz", "tia_multimodel.nii.gz", "registered/labels_ref.nii.gz"}
    for tid in ids:
        expected |= {f"registered/ct_{tid}.nii.gz", f"registered/spect_{tid}.nii.gz", f"fields/field_{tid}.nii.gz",
                     f"fields/field_itk_{tid}.nii.gz", f"fields/jacobian_{tid}.nii.gz"}
    assert {str(p.relative_to(out)) for p in images} == expected
    for path in images:
        img = nib.load(str(path))
        assert img.shape[:3] == ref.shape, path
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4, err_msg=str(path))
        if path.name.startswith("field_itk"):
            assert img.shape == (*ref.shape, 1, 3) and img.header.get_intent()[0] == "displacement vector"
        elif path.name.startswith("field_"):
            assert img.shape == (*ref.shape, 3)
    for name in ("voi.csv", "report.html", "pipeline.json", "truth_comparison.csv", "registered/patient.json",
                 "figures/fields.png", "figures/profiles.png", "figures/tia_maps.png", "dvh.csv", "figures/dvh.png",
                 COMPLETE):
        assert (out / name).is_file(), name
    assert 'src="figures/dvh.png"' in (out / "report.html").read_text()
    assert not list(out.glob(".partial-*"))


def test_dicom_outputs_share_one_study_and_frame_of_reference(shifted_external: tuple[Path, np.ndarray],
                                                               external: Path) -> None:
    """RT Dose, SEG and RT Structure Set (written in the side process) carry the same study, frame of reference
    and patient, and the summary lists them."""
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    out, _ = shifted_external
    names = ["dose.dcm", "voi_seg.dcm", "voi_rtstruct.dcm"]
    found = set()
    for name in names:
        ds = pydicom.dcmread(out / name)
        frame = (ds.FrameOfReferenceUID if "FrameOfReferenceUID" in ds
                 else ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID)
        found.add((ds.StudyInstanceUID, frame, ds.PatientID))
    assert len(found) == 1, found
    study, frame, patient = found.pop()
    assert study and frame and study != frame  # NIfTI input: new UIDs, made once for the three files
    assert patient == _manifest(external)["patient_id"]
    summary = json.loads((out / "tia_summary.json").read_text())["dicom"]
    assert summary["files"] == names and summary["note"] is None
    assert not summary["frame_of_reference_from_reference_ct"]


def test_known_shift_samples_the_original_images_once(shifted_external: tuple[Path, np.ndarray],
                                                       external: Path) -> None:
    out, d0 = shifted_external
    ref = _ref_spect(external)
    for tid in _moving_ids(external):
        moving = nib.load(str(external / f"spect_{tid}.nii.gz"))
        # independent path: resampling of the moving SPECT with its affine translated by -d0
        shifted_affine = moving.affine.copy()
        shifted_affine[:3, 3] -= d0
        expected = resample_to_grid(np.asarray(moving.dataobj, np.float32), shifted_affine, ref.shape, ref.affine)
        got = np.asarray(nib.load(str(out / "registered" / f"spect_{tid}.nii.gz")).dataobj)
        inner = (slice(2, -2),) * 3
        np.testing.assert_allclose(got[inner], expected[inner], rtol=1e-4, atol=1e-3 * float(expected.max()))
        # voxel field: reference-grid voxels (LAS: the first axis points to -x)
        u = np.asarray(nib.load(str(out / "fields" / f"field_{tid}.nii.gz")).dataobj)
        spacing = np.sqrt((ref.affine[:3, :3] ** 2).sum(axis=0))
        np.testing.assert_allclose(u[10, 10, 10], d0 * np.sign(np.diag(ref.affine)[:3]) / spacing, atol=1e-4)
        jac = np.asarray(nib.load(str(out / "fields" / f"jacobian_{tid}.nii.gz")).dataobj)
        np.testing.assert_allclose(jac, 1.0, atol=1e-5)
    ref_id = _manifest(external)["reference"]
    np.testing.assert_array_equal(np.asarray(nib.load(str(out / "registered" / f"spect_{ref_id}.nii.gz")).dataobj),
                                  np.asarray(ref.dataobj, np.float32))


def test_itk_reads_the_displacement_field_and_reproduces_the_warp(external: Path, tmp_path: Path) -> None:
    """Non-uniform (true) fields on the LAS grid: ITK's WarpImageFilter on the original SPECT = our image."""
    itk = pytest.importorskip("itk")
    out = tmp_path / "out"
    run_pipeline(external / "patient.json", out, method=truth_method(external), progress=False, quiet=True)
    tid = _moving_ids(external)[-1]
    ours = np.asarray(nib.load(str(out / "registered" / f"spect_{tid}.nii.gz")).dataobj, np.float32)
    field = itk.imread(str(out / "fields" / f"field_itk_{tid}.nii.gz"))
    assert field.GetNumberOfComponentsPerPixel() == 3
    disp = np.asarray(nib.load(str(out / "fields" / f"field_itk_{tid}.nii.gz")).dataobj)[:, :, :, 0, :]
    lps = itk.array_from_image(field).transpose(2, 1, 0, 3)  # ITK arrays are (z, y, x, c)
    np.testing.assert_allclose(lps, disp * np.array([-1.0, -1.0, 1.0], np.float32), atol=1e-5)
    assert np.abs(disp).max() > 1.0  # a real, non-trivial deformation

    image_type = itk.Image[itk.F, 3]
    moving = itk.imread(str(external / f"spect_{tid}.nii.gz"), itk.F)
    reference = itk.imread(str(external / f"spect_{_manifest(external)['reference']}.nii.gz"), itk.F)
    field_type = itk.Image[itk.Vector[itk.F, 3], 3]
    warp = itk.WarpImageFilter[image_type, image_type, field_type].New(Input=moving, DisplacementField=field)
    warp.SetOutputParametersFromImage(reference)
    warp.SetEdgePaddingValue(0.0)
    warp.Update()
    by_itk = itk.array_from_image(warp.GetOutput()).transpose(2, 1, 0)
    inner = (slice(3, -3),) * 3
    np.testing.assert_allclose(by_itk[inner], ours[inner], rtol=0, atol=1e-4 * float(ours.max()))

    # and the same through a DisplacementFieldTransform + ResampleImageFilter
    field_d = itk.image_from_array(itk.array_from_image(field).astype(np.float64), is_vector=True)
    field_d.CopyInformation(field)
    transform = itk.DisplacementFieldTransform[itk.D, 3].New()
    transform.SetDisplacementField(field_d)
    resampled = itk.resample_image_filter(moving, transform=transform, use_reference_image=True,
                                          reference_image=reference, default_pixel_value=0.0)
    np.testing.assert_allclose(itk.array_from_image(resampled).transpose(2, 1, 0)[inner], ours[inner], rtol=0,
                               atol=1e-4 * float(ours.max()))


def test_true_fields_improve_the_tia_against_the_phantom_truth(internal: Path, tmp_path: Path) -> None:
    """End to end: registering with the phantom's true fields brings the voxel TIA closer to the truth."""
    res = run_pipeline(internal / "patient.json", tmp_path / "out", method=truth_method(internal), progress=False,
                       quiet=True)
    rows = {r["voi"]: r for r in res.summary["truth"]}
    for voi in ("kidneys", "liver", "tumour_1"):
        assert rows[voi]["voxel_mae_percent"] < 0.8 * rows[voi]["unregistered_voxel_mae_percent"], rows[voi]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Error against the phantom" in html and "tumour_1" in html
    assert res.summary["point"]["how"].startswith("hottest tumour")


def test_unregistered_tia_is_fitted_only_inside_the_truth_vois(internal: Path) -> None:
    """The comparison's no-registration TIA is fitted only where the VOIs read it, with the whole map's values."""
    from corx.dosimetry.tia import compute_tia
    from corx.io.inputs import read_volume
    from corx.pipeline.truth import tia_inside, truth_voi_mask

    man = _manifest(internal)
    frames = [read_volume(internal / t["spect"], "spect").data.astype(np.float32) for t in man["timepoints"]]
    hours = [t["hours"] for t in man["timepoints"]]
    labels = np.asarray(nib.load(str(internal / "truth" / "labels_ref.nii.gz")).dataobj)
    inside = truth_voi_mask(internal / "truth", labels)
    assert 0.05 < inside.mean() < 0.6 and not inside[labels == 0].any()
    whole = compute_tia(np.stack(frames), hours, 0.46).tia_mbqh_per_ml
    part = tia_inside(frames, hours, 0.46, inside)
    np.testing.assert_array_equal(part[inside], whole[inside])
    assert not part[~inside].any() and part[inside].any()
    assert not tia_inside(frames, hours, 0.46, np.zeros_like(inside)).any()


def test_outputs_are_the_same_with_and_without_the_side_process(internal: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The TIA outputs (maps, tables, DICOM) are written by a side process on 2+ CPUs, in this one otherwise."""
    runs = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("CORX_THREADS", "2")
        monkeypatch.setenv("CORX_SIDE_PROCESS", flag)
        out = tmp_path / f"side{flag}"
        res = run_pipeline(internal / "patient.json", out, method="identity", progress=False, quiet=True)
        assert (res.side_peak_rss_mib is not None) == (flag == "1")
        assert res.summary["truth"]  # without motion, the registered and the unregistered TIA are one fit
        for row in res.summary["truth"]:
            assert row["unregistered_tia_mbqh"] == pytest.approx(row["tia_mbqh"], rel=1e-6), row["voi"]
        runs[flag] = out
    complete = {flag: json.loads((out / COMPLETE).read_text()) for flag, out in runs.items()}
    names = sorted(f["path"] for f in complete["1"]["files"])
    assert names == sorted(f["path"] for f in complete["0"]["files"])
    assert {"tia.nii.gz", "dose.nii.gz", "voi.csv", "tia_summary.json"} <= set(names)
    for name in ("tia.nii.gz", "dose.nii.gz", "tia_rule.nii.gz"):
        a, b = (nib.load(str(out / name)) for out in runs.values())
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        np.testing.assert_array_equal(a.affine, b.affine)
    assert (runs["1"] / "voi.csv").read_text() == (runs["0"] / "voi.csv").read_text()


def test_identity_outputs_equal_corx_tia_on_the_registered_manifest(internal: Path, tmp_path: Path) -> None:
    from corx.dosimetry.command import run_tia

    out = tmp_path / "out"
    run_pipeline(internal / "patient.json", out, method="identity", progress=False, quiet=True)
    again = run_tia(out / "registered" / "patient.json", tmp_path / "tia", quiet=True)
    ours = np.asarray(nib.load(str(out / "tia.nii.gz")).dataobj)
    np.testing.assert_allclose(ours, again.tia.tia_mbqh_per_ml, rtol=1e-6)
    complete = json.loads((out / COMPLETE).read_text())
    listed = {f["path"]: f["sha256"] for f in complete["files"]}
    assert "report.html" in listed and "tia.nii.gz" in listed
    for rel, digest in listed.items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest, rel


def test_small_network_in_process_with_refinement(internal: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from corx.registration.backends import TorchBackend

    backend = TorchBackend(random_init=True, embed_dim=12)
    cfg = PreprocessConfig(spatial_size=(32, 32, 32), pixdim=(15.48, 15.48, 15.48))
    res = run_pipeline(internal / "patient.json", tmp_path / "out", method="corx", backend=backend, config=cfg,
                       random_init=True, refine=3, progress=False, quiet=True)
    assert any("untrained network" in w for w in res.summary["warnings"])
    assert "untrained network: the registration is near identity" in (tmp_path / "out" / "report.html").read_text()
    moving = [t for t in res.summary["timepoints"] if t["id"] != res.summary["reference"]]
    for t in moving:
        assert t["refine"]["steps"] == 3 and t["refine"]["loss_after"] <= t["refine"]["loss_before"]
    ref = _ref_spect(internal)
    field = nib.load(str(tmp_path / "out" / "fields" / f"field_{moving[0]['id']}.nii.gz"))
    assert field.shape == (*ref.shape, 3)
    # the network's share of the run is measured (the benchmark's floor)
    assert 0.0 < res.summary["network_forward_s"] < res.summary["total_s"]


def test_coarsened_refinement_lowers_the_loss_and_keeps_the_full_grid() -> None:
    pytest.importorskip("torch")
    from scipy import ndimage

    from corx.registration.refine import refine_field

    rng = np.random.default_rng(3)
    fixed = [ndimage.gaussian_filter(rng.random((24, 24, 24)), 2.0).astype(np.float32) for _ in range(2)]
    fixed = [(f - f.min()) / (f.max() - f.min()) for f in fixed]
    moving = [np.roll(f, 2, axis=0) for f in fixed]  # a 2-voxel shift to recover
    image = np.stack([fixed[0], moving[0], fixed[1], moving[1]])
    zero = np.zeros((3, 24, 24, 24), np.float32)
    full = refine_field(image, zero, 8, coarsen=1)
    coarse = refine_field(image, zero, 8, coarsen=2)
    for r in (full, coarse):
        assert r.field.shape == zero.shape and r.loss_after < r.loss_before
    # the correction moves the grid the right way (towards +2 voxels along axis 0) on both grids
    assert coarse.field[0].mean() > 0.2 and full.field[0].mean() > 0.2
    with pytest.raises(CorxError, match="coarsen"):
        refine_field(image, zero, 2, coarsen=0)


def test_refinement_leaves_signal_free_regions_where_they_are() -> None:
    """Steps follow the gradient's size: control points that only see flat, near-constant images stay put
    (a sign-like optimiser such as Adam moves them by about lr every step: the drift that raised the error)."""
    pytest.importorskip("torch")
    from scipy import ndimage

    from corx.registration.refine import DEFAULT_LR, refine_field

    rng = np.random.default_rng(5)
    n, edge = 40, 12  # images carry structure in x < 12 only; control planes every ~7.8 voxels
    images = []
    for _ in range(2):
        f = ndimage.gaussian_filter(rng.random((n, n, n)), 2.0).astype(np.float32)
        f = (f - f.min()) / (f.max() - f.min())
        f[edge:] = 0.5 + 1e-3 * rng.standard_normal((n - edge, n, n)).astype(np.float32)
        images += [f, np.roll(f, 2, axis=0)]
    image = np.stack(images)  # fixed CT, moving CT, fixed SPECT, moving SPECT
    result = refine_field(image, np.zeros((3, n, n, n), np.float32), 8, coarsen=1)  # LNCC window: 9 voxels
    assert result.loss_after < result.loss_before
    assert result.field[0, :edge].mean() > DEFAULT_LR  # the structured part is moved towards the shift
    # x >= 24 depends only on control planes over the flat part: they stay within a few hundredths of a voxel
    assert np.abs(result.field[:, 24:]).max() < 0.05


def test_the_command_line_refines_on_the_coarsened_pair_by_default() -> None:
    import inspect

    from corx.cli import Commands
    from corx.registration.refine import DEFAULT_COARSEN

    default = inspect.signature(Commands.pipeline).parameters["refine_coarsen"].default
    assert default == DEFAULT_COARSEN == 2


def test_a_network_made_in_the_background_reports_its_error_when_used() -> None:
    from corx.registration.backends import BackgroundBackend

    def broken() -> object:
        raise CorxError("weights.pt: not a checkpoint")

    backend = BackgroundBackend(broken)  # type: ignore[arg-type]
    assert backend.input_shape == ()
    with pytest.raises(CorxError, match=r"weights\.pt: not a checkpoint"):
        backend.infer(np.zeros((4, 8, 8, 8), np.float32))
    backend.close()  # nothing to close, no error

    class Doubling:
        input_shape = ()
        closed = False

        def infer(self, pair: np.ndarray) -> np.ndarray:
            return pair[:3] * 2

        def close(self) -> None:
            Doubling.closed = True

    made = BackgroundBackend(Doubling)  # type: ignore[arg-type]
    np.testing.assert_array_equal(made.infer(np.ones((4, 2, 2, 2), np.float32)), np.full((3, 2, 2, 2), 2.0))
    made.close()
    assert Doubling.closed


# ------------------------------------------------------------------------------------- nothing lost, errors
def test_inputs_are_never_modified(internal: Path, tmp_path: Path) -> None:
    before = _checksums(internal)
    run_pipeline(internal / "patient.json", tmp_path / "out", method="identity", progress=False, quiet=True)
    run_pipeline(internal / "patient.json", tmp_path / "out", method="identity", progress=False, quiet=True,
                 overwrite=True)
    assert _checksums(internal) == before


def test_refuses_a_non_empty_output_folder_and_overwrite_keeps_foreign_files(internal: Path,
                                                                             tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CorxError, match=r"not empty.*--overwrite"):
        run_pipeline(internal / "patient.json", out, method="identity", progress=False, quiet=True)
    run_pipeline(internal / "patient.json", out, method="identity", progress=False, quiet=True, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / COMPLETE).is_file()


def test_refuses_to_write_over_its_inputs(internal: Path, tmp_path: Path) -> None:
    import shutil

    patient = tmp_path / "p"
    shutil.copytree(internal, patient)
    (patient / "registered").mkdir()
    man = _manifest(patient)
    man["timepoints"][1]["spect"] = "registered/" + man["timepoints"][1]["spect"]
    shutil.copy(patient / f"spect_{man['timepoints'][1]['id']}.nii.gz", patient / man["timepoints"][1]["spect"])
    (patient / "patient.json").write_text(json.dumps(man))
    with pytest.raises(CorxError, match="lies where the pipeline writes"):
        run_pipeline(patient / "patient.json", patient, method="identity", overwrite=True, progress=False,
                     quiet=True)


@pytest.mark.parametrize("error", [ValueError, RuntimeError])
def test_a_failure_mid_run_publishes_nothing_and_names_step_and_file(internal: Path, tmp_path: Path,
                                                                     error: type[Exception]) -> None:
    """Bad input (ValueError) becomes a one-line CorxError naming step and file; a bug (RuntimeError) keeps its
    type and traceback, with a note naming the step. Either way nothing is published."""
    out = tmp_path / "out"
    run_pipeline(internal / "patient.json", out, method="identity", progress=False, quiet=True)
    earlier = _checksums(out)

    class Broken:
        name = "broken"
        calls = 0

        def register(self, *args: object) -> GridField:
            Broken.calls += 1
            if Broken.calls == 2:
                raise error("simulated failure")
            ref = _ref_spect(internal)
            return GridField(np.zeros((3, *ref.shape), np.float32), ref.affine)

    last = _moving_ids(internal)[1]
    with pytest.raises(CorxError if error is ValueError else error) as info:
        run_pipeline(internal / "patient.json", out, method=Broken(), overwrite=True, progress=False, quiet=True)
    if error is ValueError:
        message = str(info.value)
        assert f"step 'register {last}' failed" in message and f"spect_{last}.nii.gz" in message
        assert "simulated failure" in message and "no results were published" in message
    else:
        assert not isinstance(info.value, CorxError) and str(info.value) == "simulated failure"
        notes = getattr(info.value, "__notes__", [f"in step 'register {last}'"])
        assert any(f"in step 'register {last}'" in note for note in notes)
    assert _checksums(out) == earlier  # the earlier complete results are untouched
    assert not list(out.glob(".partial-*"))


def test_a_bad_truth_map_fails_the_truth_step_and_publishes_nothing(internal: Path, tmp_path: Path) -> None:
    """The truth's inputs are made on a worker thread during the TIA step; their error still names the truth
    comparison step and the truth folder."""
    import shutil

    patient = tmp_path / "patient"
    shutil.copytree(internal, patient)
    (patient / "truth" / "tia_imaged.nii.gz").write_bytes(b"not a NIfTI file")
    out = tmp_path / "out"
    with pytest.raises(CorxError) as info:
        run_pipeline(patient / "patient.json", out, method="identity", progress=False, quiet=True)
    message = str(info.value)
    assert "step 'truth comparison' failed" in message and str(patient / "truth") in message
    assert "no results were published" in message
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(("writer", "fails_on", "message"), [
    ("save_json", "patient.json", r"writing .*registered/patient.json failed: OSError: disk full"),
    # NIfTI images are written on worker threads: their failure still names the file
    ("save_image", "jacobian", r"writing .*fields/jacobian_\w+\.nii\.gz failed: OSError: disk full"),
])
def test_a_failed_write_publishes_nothing(internal: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          writer: str, fails_on: str, message: str) -> None:
    import corx.pipeline.staging as staging

    real = getattr(staging, writer)

    def broken_save(*args: object, **kwargs: object) -> object:
        if any(fails_on in str(a) for a in args):
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(staging, writer, broken_save)
    fresh = tmp_path / "fresh"
    with pytest.raises(CorxError, match=message):
        run_pipeline(internal / "patient.json", fresh, method="identity", progress=False, quiet=True)
    assert not (fresh / COMPLETE).exists() and not [p for p in fresh.iterdir()]


def test_option_errors_are_clear(internal: Path, tmp_path: Path) -> None:
    run = lambda **kw: run_pipeline(internal / "patient.json", tmp_path / "o", progress=False, quiet=True, **kw)  # noqa: E731
    with pytest.raises(CorxError, match=r"--refine .* cannot be used with --server"):
        run(server="127.0.0.1:1", refine=5)
    with pytest.raises(CorxError, match="unknown --method"):
        run(method="ants")
    with pytest.raises(CorxError, match="--server applies to --method corx"):
        run(method="identity", server="127.0.0.1:1")
    with pytest.raises(CorxError, match=r"--point .* not a voxel"):
        run(method="identity", point="1000,1,1")
    with pytest.raises(CorxError, match="--refine_coarsen must be an integer"):
        run(refine=2, refine_coarsen=0)
    with pytest.raises(CorxError, match="unknown --precision"):
        run(precision="fp16")
    with pytest.raises(CorxError, match="--precision applies to in-process CoRX-NET only"):
        run(method="identity", precision="bf16")
    assert not (tmp_path / "o" / COMPLETE).exists()


def test_elastix_methods_route_through_corx_registration_elastix(internal: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """--method elastix / elastix-spect call corx.registration.elastix.elastix_field (stubbed: fast)."""
    import corx.registration.methods as methods

    calls: list[str] = []

    def fake(prepared, variant="ct", settings=None):
        calls.append(variant)
        u = np.zeros((3, *prepared.moving_spect_bqml.shape), np.float32)
        u[2] = 1.0  # one network voxel along +z
        return u, {"seconds": 0.0}

    monkeypatch.setattr(methods, "elastix_field", fake)
    for method, variant in (("elastix", "ct"), ("elastix-spect", "spect")):
        res = run_pipeline(internal / "patient.json", tmp_path / method, method=method, progress=False, quiet=True)
        assert calls[-1] == variant and res.summary["method"] == method
        moving = [t for t in res.summary["timepoints"] if t["id"] != res.summary["reference"]]
        spacing_z = float(PreprocessConfig().pixdim[2])
        assert all(t["max_disp_mm"] == pytest.approx(spacing_z, abs=1e-3) for t in moving)


def test_elastix_missing_gives_a_clear_error(internal: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "itk", None)  # import fails
    with pytest.raises(CorxError, match=r"Elastix needs itk-elastix"):
        run_pipeline(internal / "patient.json", tmp_path / "o", method="elastix", progress=False, quiet=True)
    assert not (tmp_path / "o").exists()


def test_managed_names_cover_every_top_level_output(shifted_external: tuple[Path, np.ndarray]) -> None:
    out, _ = shifted_external
    top = {p.name for p in out.iterdir()} - {COMPLETE}
    assert top <= set(MANAGED)


# --------------------------------------------------------------------------------------------- CLI, package
def test_cli_pipeline_identity_and_refusal(internal: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    proc = subprocess.run([str(CLI), "pipeline", str(internal / "patient.json"), "--out", str(out), "--method",
                           "identity", "--point", "30,30,40"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "report:" in proc.stdout and (out / "report.html").is_file()
    assert json.loads((out / "pipeline.json").read_text())["point"]["voxel"] == [30, 30, 40]
    again = subprocess.run([str(CLI), "pipeline", str(internal / "patient.json"), "--out", str(out), "--method",
                            "identity"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "error:" in again.stderr and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr


def test_pipeline_modules_do_not_import_torch() -> None:
    code = ("import importlib, pkgutil, sys, corx\n"
            "layers = ('pipeline', 'report', 'registration', 'dosimetry', 'geometry', 'io')\n"
            "pkgs = [importlib.import_module(f'corx.{p}') for p in layers]\n"
            "mods = [m.name for p in pkgs for m in pkgutil.iter_modules(p.__path__, p.__name__ + '.')]\n"
            "[importlib.import_module(m) for m in mods]\n"
            "import corx.demo, corx.cli\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.') or m == 'monai')\n"
            "print(len(mods), bad)\nsys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert int(proc.stdout.split()[0]) >= 35


def test_hot_spot_prefers_tumours_and_skips_the_bladder(internal: Path) -> None:
    from corx.report.hotspot import hot_spot

    ref = _ref_spect(internal)
    spect = np.asarray(ref.dataobj, np.float32)
    labels = np.asarray(nib.load(str(internal / "truth" / "labels_ref.nii.gz")).dataobj)
    point, how = hot_spot(spect, ref.affine, labels)
    assert labels[point] >= 11 and "tumour" in how
    point, _ = hot_spot(spect, ref.affine, None)
    assert labels[point] != 8  # not the bladder


def test_small_negative_spect_voxels_become_zero_with_a_warning(internal: Path, tmp_path: Path) -> None:
    """A conjugate-gradient-like undershoot in a moving SPECT does not refuse the patient: it is set to 0, the
    warning (count and minimum) is in pipeline.json, and the input file is untouched."""
    import shutil

    patient = tmp_path / "p"
    shutil.copytree(internal, patient)
    moving = _moving_ids(patient)[0]
    path = patient / f"spect_{moving}.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).astype(np.float32)
    data[:2, :2, :2] = -0.02 * data.max()  # a corner of the field of view, 8 voxels
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    before = path.read_bytes()
    res = run_pipeline(patient / "patient.json", tmp_path / "out", method="identity", progress=False, quiet=True)
    assert any(f"spect_{moving}.nii.gz: 8 negative voxels" in w for w in res.summary["warnings"])
    registered = np.asarray(nib.load(str(tmp_path / "out" / "registered" / f"spect_{moving}.nii.gz")).dataobj)
    assert registered.min() >= 0
    assert path.read_bytes() == before


def test_a_single_time_point_patient_runs_without_registration(internal: Path, tmp_path: Path) -> None:
    """One time point: nothing to register; Hänscheid's TIA, with the phantom truth compared only on its own frame."""
    from corx.dosimetry.tia import (
    TiaRule,
)

    raw = _manifest(internal)
    for tp_index, expect_truth in ((0, True), (-1, False)):
        tp = raw["timepoints"][tp_index]
        one = dict(raw, timepoints=[tp], reference=tp["id"],
                   labels=f"truth/labels_{tp['id']}.nii.gz" if tp_index else raw["labels"])
        manifest = internal / f"patient_only_{tp['id']}.json"
        manifest.write_text(json.dumps(one))
        out = tmp_path / tp["id"]
        res = run_pipeline(manifest, out, method="identity", progress=False, quiet=True)
        spect = nib.load(str(internal / tp["spect"]))
        tia = nib.load(str(out / "tia.nii.gz"))
        np.testing.assert_allclose(tia.affine, spect.affine)
        a = np.maximum(np.asarray(spect.dataobj, np.float64), 0)
        np.testing.assert_allclose(np.asarray(tia.dataobj), a * 2 * tp["hours"] / np.log(2) * 1e-6, rtol=1e-4,
                                   atol=1e-9)
        assert set(np.unique(np.asarray(nib.load(str(out / "tia_rule.nii.gz")).dataobj))) <= {TiaRule.BACKGROUND,
                                                                                               TiaRule.HANSCHEID}
        assert bool(res.summary["truth"]) is expect_truth
        assert [t["id"] for t in res.summary["timepoints"]] == [tp["id"]]
        assert (out / "report.html").is_file() and (out / "dose.nii.gz").is_file()


def test_steps_follow_their_plan() -> None:
    """Steps counts its own plan; a step that is not the next planned one is a bug, not a silent miscount."""
    from corx.pipeline.steps import Steps

    steps = Steps(["read", "write"], progress=False)
    assert steps.total == 2 and steps.remaining == ("read", "write")
    with steps.step("read"):
        sum(i * i for i in range(200_000))  # CPU work: counted as this step's CPU time
    with pytest.raises(RuntimeError, match="not the next planned step"), steps.step("publish"):
        pass
    with steps.step("write"):
        pass
    assert steps.remaining == () and set(steps.timings) == set(steps.cpu_timings) == {"read", "write"}
    assert steps.cpu_timings["read"] > 0.0 and steps.cpu_timings["read"] <= steps.timings["read"] * 2 + 0.05
    with pytest.raises(ValueError, match="unique"):
        Steps(["a", "a"], progress=False)


def test_step_plan_of_a_run(internal: Path) -> None:
    """The plan: reference, then register [refine] resample per moving time point, then the fixed tail."""
    from corx.io.manifest import load_manifest
    from corx.pipeline.run import step_plan

    m = load_manifest(internal / "patient.json")
    moving = [tp.id for tp in m.timepoints if tp.id != m.reference]
    plan = step_plan(m, refine=2)
    assert plan[:2] == ["read reference", f"resample {m.reference}"]
    assert plan[2:5] == [f"register {moving[0]}", f"refine {moving[0]}", f"resample {moving[0]}"]
    assert len(plan) == 2 + 3 * len(moving) + 2 + ("truth comparison" in plan) + 3
    assert len(step_plan(m, refine=0)) == len(plan) - len(moving)
