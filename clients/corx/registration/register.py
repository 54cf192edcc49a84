"""Register time points to the reference: preprocess (numpy), run CoRX-NET (any backend), warp (numpy).

``register_pair`` is the per-time-point call for the pipeline; ``register_manifest`` runs it for every time
point of a patient and writes the field, warped CT (HU) and warped SPECT (Bq/mL) on the network grid (the
reference SPECT resampled to the network spacing and size) with that grid's affine, plus a manifest of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CorxError
from ..geometry.warp import field_to_nifti, warp_image
from ..io.imageio import save_image, save_json
from ..io.manifest import Manifest, load_manifest
from .backends import Backend, TorchBackend
from .preprocess import PreparedPair, PreprocessConfig, preprocess_pair


@dataclass(frozen=True)
class Registration:
    """One registered time point, on the network grid."""

    field: np.ndarray  # (3, X, Y, Z) float32, voxels of the network grid, pull-back (docs/CONVENTIONS.md)
    warped_ct: np.ndarray  # (X, Y, Z) float32, HU
    warped_spect: np.ndarray  # (X, Y, Z) float32, Bq/mL
    affine: np.ndarray  # (4, 4) network grid affine


def check_backend_shape(backend: Backend, config: PreprocessConfig) -> None:
    """Refuse a backend whose fixed input size differs from what the preprocessing produces."""
    expected = (4, *config.spatial_size)
    if backend.input_shape and tuple(backend.input_shape) != expected:
        raise CorxError(f"the model expects pairs of shape {tuple(backend.input_shape)}, the preprocessing makes "
                        f"{expected}: use --spatial_size {backend.input_shape[1]} or serve a matching export")


def warp_prepared(prepared: PreparedPair, field: np.ndarray) -> Registration:
    """Warp the moving CT and SPECT (physical units) with ``field`` on the network grid."""
    field = np.asarray(field, dtype=np.float32)
    if field.shape != (3, *prepared.moving_spect_bqml.shape):
        raise CorxError(f"the backend returned a field of shape {field.shape}, expected "
                        f"{(3, *prepared.moving_spect_bqml.shape)}")
    if not np.isfinite(field).all():
        raise CorxError("the backend returned a field with NaN or infinite values")
    return Registration(field=field, warped_ct=warp_image(prepared.moving_ct_hu, field),
                        warped_spect=warp_image(prepared.moving_spect_bqml, field), affine=prepared.affine)


def register_pair(fixed_ct: object, moving_ct: object, fixed_spect: object, moving_spect: object,
                  backend: Backend | None = None, config: PreprocessConfig | None = None) -> Registration:
    """Register one moving SPECT/CT pair to the fixed (reference) pair.

    Images are NIfTI paths, :class:`corx.io.volume.Volume` or (data, affine). ``backend`` defaults to
    in-process PyTorch with the bundle's trained weights (bundle/models/model.pt), which needs no server.
    Returns the field and the warped CT (HU) and SPECT (Bq/mL) on the network grid, with its affine.
    """
    cfg = config or PreprocessConfig()
    backend = backend if backend is not None else TorchBackend()
    check_backend_shape(backend, cfg)
    prepared = preprocess_pair(fixed_ct, moving_ct, fixed_spect, moving_spect, cfg)
    return warp_prepared(prepared, backend.infer(prepared.image))


def _same_grid(path: Path, shape: tuple[int, ...], affine: np.ndarray) -> bool:
    import nibabel as nib

    img = nib.load(str(path))
    return tuple(img.shape[:3]) == tuple(shape) and np.allclose(img.affine, affine, atol=1e-3)


def register_manifest(manifest: str | os.PathLike | Manifest, out: str | os.PathLike, backend: Backend | None = None,
                      config: PreprocessConfig | None = None, overwrite: bool = False) -> Path:
    """Register every time point of a patient to its reference; write images, fields and ``patient.json``.

    Writes ``OUT/ct_<id>.nii.gz`` (int16 HU), ``OUT/spect_<id>.nii.gz`` (float32 Bq/mL) and
    ``OUT/field_<id>.nii.gz`` ((X, Y, Z, 3) voxels) on the network grid, and ``OUT/patient.json`` listing them
    (labels kept only when they lie on that grid). The reference time point gets a zero field. Returns the manifest.
    """
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    out = Path(out)
    target = out / "patient.json"
    if target.exists() and not overwrite:
        raise CorxError(f"{target}: already exists (use --overwrite to replace it)")
    cfg = config or PreprocessConfig()
    backend = backend if backend is not None else TorchBackend()
    check_backend_shape(backend, cfg)
    ref = man.reference_timepoint
    entries, affine, shape = [], None, None
    for tp in man.timepoints:
        prepared = preprocess_pair(ref.ct, tp.ct, ref.spect, tp.spect, cfg)
        if tp.id == ref.id:
            field = np.zeros((3, *prepared.moving_ct_hu.shape), np.float32)
        else:
            field = backend.infer(prepared.image)
        result = warp_prepared(prepared, field)
        affine, shape = result.affine, result.warped_ct.shape
        names = {k: f"{k}_{tp.id}.nii.gz" for k in ("ct", "spect", "field")}
        ct = np.clip(np.rint(result.warped_ct), -32768, 32767).astype(np.int16)
        save_image(ct, affine, out / names["ct"], overwrite=overwrite)
        save_image(result.warped_spect, affine, out / names["spect"], overwrite=overwrite, dtype=np.float32)
        save_image(field_to_nifti(result.field), affine, out / names["field"], overwrite=overwrite,
                   dtype=np.float32)
        entries.append({"id": tp.id, "hours": tp.hours, "ct": names["ct"], "spect": names["spect"],
                        "field": names["field"]})
        print(f"registered {tp.id} -> {ref.id}: max |u| = {np.abs(result.field).max():.3g} voxels")
    registered = {"patient_id": man.patient_id, "radionuclide": man.radionuclide,
                  "injected_activity_mbq": man.injected_activity_mbq, "reference": man.reference,
                  "timepoints": entries, "registered_on": "network grid (reference SPECT at the network spacing)"}
    if man.labels is not None and shape is not None and _same_grid(man.labels, shape, affine):
        registered["labels"] = os.path.relpath(man.labels, out)
    save_json(registered, target, overwrite=overwrite)
    return target
