"""The few transforms MONAI lacks; everything else in the pipelines is a stock MONAI transform (see configs)."""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

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


class FieldOfViewd(MapTransform):
    """Add, for each of ``keys``, a field-of-view mask ``key + suffix``: ones on the image's own grid, with its
    metadata, so that the resampling and padding applied to the image afterwards carry the mask along (zeros
    where the image was padded: outside its scanner's field of view)."""

    def __init__(self, keys: KeysCollection, suffix: str = "_fov", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.suffix = suffix

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            ones = torch.ones(image.shape, dtype=torch.float32)
            # a deep copy: the mask must not share its image's affine tensor (an in-place edit would move both)
            d[f"{key}{self.suffix}"] = MetaTensor(ones, meta=copy.deepcopy(image.meta)) \
                if isinstance(image, MetaTensor) else ones
        return d


class RandAxialTruncationd(MapTransform, Randomizable):
    """Shorten the axial field of view of whole scans: for each group of keys (one scan's CT, SPECT and their
    field-of-view masks), with probability ``prob``, zero ``a`` slices at the inferior end and ``b`` at the
    superior end of the last array axis (S after RAS orientation), ``a, b`` drawn uniformly from
    ``[0, max_slices]`` and shared by the group. Simulates acquisitions whose axial extent is shorter than the
    reference grid (zero-padded), as in the external protocol, without changing any geometry."""

    def __init__(self, groups: Sequence[Sequence[str]], max_slices: int, prob: float = 0.5) -> None:
        keys = [k for group in groups for k in group]
        super().__init__(keys, allow_missing_keys=False)
        if max_slices < 0 or not 0.0 <= prob <= 1.0:
            raise ValueError(f"need max_slices >= 0 and 0 <= prob <= 1, got {max_slices}, {prob}")
        self.groups = [tuple(g) for g in groups]
        self.max_slices, self.prob = int(max_slices), float(prob)
        self._cuts: list[tuple[int, int] | None] = []

    def randomize(self, data: object = None) -> None:
        self._cuts = [
            (int(self.R.randint(0, self.max_slices + 1)), int(self.R.randint(0, self.max_slices + 1)))
            if self.R.random_sample() < self.prob else None
            for _ in self.groups
        ]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        for group, cut in zip(self.groups, self._cuts, strict=True):
            if cut is None:
                continue
            inferior, superior = cut
            for key in group:
                image = d[key]
                n = image.shape[-1]
                if inferior + superior >= n:
                    raise ValueError(f"'{key}': cannot truncate {inferior} + {superior} of its {n} slices")
                out = image.clone()
                out[..., :inferior] = 0
                out[..., n - superior :] = 0
                d[key] = out
        return d
