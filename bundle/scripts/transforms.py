"""The few transforms MONAI lacks; everything else in the pipelines is a stock MONAI transform (see configs)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

SPECT_NORMALISATIONS = ("minmax", "log")


def normalize_spect(image: torch.Tensor, mode: str = "minmax", log_scale: float = 0.01) -> torch.Tensor:
    """Scale a SPECT volume to [0, 1].

    ``minmax`` is the paper's min-max normalisation. ``log`` first maps x -> log(1 + x / (log_scale * max)),
    which keeps the distribution outside a dominant hot spot (early, bladder-dominated scans) visible.
    """
    if mode not in SPECT_NORMALISATIONS:
        raise ValueError(f"unknown SPECT normalisation '{mode}' (choose from {SPECT_NORMALISATIONS})")
    x = torch.clamp(image.float(), min=0)
    if mode == "log":
        x = torch.log1p(x / (log_scale * x.max()).clamp_min(1e-12))
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo).clamp_min(1e-12)


class NormalizeSpectd(MapTransform):
    """Dictionary version of :func:`normalize_spect`, applied to each key independently (keeps metadata)."""

    def __init__(self, keys: KeysCollection, mode: str = "minmax", log_scale: float = 0.01,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in SPECT_NORMALISATIONS:
            raise ValueError(f"unknown SPECT normalisation '{mode}' (choose from {SPECT_NORMALISATIONS})")
        self.mode = mode
        self.log_scale = log_scale

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = normalize_spect(d[key], self.mode, self.log_scale)  # MetaTensor ops keep the affine
        return d


class WarpWithFieldd(MapTransform):
    """Warp each of ``keys`` (channel-first volumes on the field's grid) with the displacement field in
    ``field_key`` (3, D, H, W, voxels, pull-back), keeping each image's physical units and metadata."""

    def __init__(self, keys: KeysCollection, field_key: str = "pred", mode: str = "bilinear",
                 padding_mode: str = "border", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        from monai.networks.blocks import Warp

        self.field_key = field_key
        self.warp = Warp(mode=mode, padding_mode=padding_mode)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        ddf = torch.as_tensor(d[self.field_key]).float()
        for key in self.key_iterator(d):
            image = d[key]
            if tuple(image.shape[1:]) != tuple(ddf.shape[1:]):
                raise ValueError(f"'{key}' has spatial shape {tuple(image.shape[1:])}, the field "
                                 f"{tuple(ddf.shape[1:])}: resample it onto the field's grid first")
            warped = self.warp(torch.as_tensor(image).float()[None], ddf[None])[0]
            out = image.clone().float() if hasattr(image, "meta") else warped
            out.data = warped
            d[key] = out
        return d


class LoadTrueFieldd(MapTransform):
    """Add the phantom's truth for a (reference -> moving) pair as ``name``: (4, X, Y, Z) float32 = the true SPECT
    field (voxels, channels 0-2, docs/CONVENTIONS.md) and the reference labels (channel 3).

    ``keys`` are the datalist's truth paths ``(field, labels)``. The truth lies on the reference SPECT grid, so it
    is only usable where the preprocessed ``ref_key`` image lies on that very grid (the internal cohort: 128^3 at
    3.87 mm, RAS); anything else is refused with the file named, rather than compared on mismatched grids.
    """

    def __init__(self, keys: KeysCollection = ("field_spect", "labels_fixed"), ref_key: str = "fixed_spect",
                 name: str = "truth", atol_mm: float = 1e-3) -> None:
        super().__init__(keys)
        if len(self.keys) != 2:
            raise ValueError("LoadTrueFieldd needs two keys: the true field and the reference labels")
        self.ref_key, self.name, self.atol_mm = ref_key, name, atol_mm

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        import nibabel as nib
        import numpy as np

        d = dict(data)
        field_key, labels_key = self.keys
        missing = [k for k in self.keys if not d.get(k)]
        if missing:
            raise ValueError(f"{d.get(self.ref_key, '?')}: pair has no truth ({', '.join(map(str, missing))}); "
                             "true-field validation needs pairs whose fixed image is the reference time point")
        ref = d[self.ref_key]
        ref_affine = np.asarray(ref.meta["affine"], dtype=np.float64)
        ref_shape = tuple(ref.shape[1:])
        field_img, labels_img = nib.load(str(d[field_key])), nib.load(str(d[labels_key]))
        for path, img in ((d[field_key], field_img), (d[labels_key], labels_img)):
            if tuple(img.shape[:3]) != ref_shape or not np.allclose(img.affine, ref_affine, atol=self.atol_mm):
                raise ValueError(f"{path}: truth grid {tuple(img.shape[:3])} does not coincide with the network "
                                 f"grid {ref_shape} (true-field validation needs the internal cohort's grid)")
        field = np.asarray(field_img.dataobj, dtype=np.float32).reshape(*ref_shape, 3)
        labels = np.asarray(labels_img.dataobj, dtype=np.float32)
        truth = torch.from_numpy(np.concatenate([np.moveaxis(field, -1, 0), labels[None]]))
        d[self.name] = MetaTensor(truth, affine=ref.affine)  # same type as the images, for ConcatItemsd
        return d
