"""Elastix B-spline registration (itk-elastix) on the CoRX network grid, in the corx field convention.

Paper section 2.4: a B-spline transform driven by the CT pair with the advanced Mattes mutual information, at most
1000 iterations per resolution, the resulting transform applied to the SPECT. Variant ``"ct"`` is that: plain AMMI
(``Registration = MultiResolutionRegistration``, ``Metric = AdvancedMattesMutualInformation``; the default
``bspline`` map of itk-elastix would add a bending-energy penalty). Variant ``"spect"`` is a stronger classical peer
the paper did not try: two image pairs (CT and SPECT) in one ``MultiMetricMultiResolutionRegistration``, AMMI on
each, weights ``ct_weight`` 1.0 and ``spect_weight`` 0.1 (the paper's lambda_SPECT for CoRX-NET's loss). The SPECT
term is kept small because SPECT intensities change between time points (kinetics, bladder): on a 64^3 phantom pair
equal weights gave a 34 mm mean body error (CT only: 10 mm), weight 0.1 gave 11 mm (7.5 mm in the body core).

Both register the same images CoRX-NET sees (the preprocessed, normalised channels on the network grid; mutual
information does not depend on the intensity scale), so fields and metrics compare on one grid.

Geometry (tested in tests/test_elastix.py on known translations and affines):

- numpy/nibabel arrays are (i, j, k) with a RAS affine A; ITK's numpy view of an image is (k, j, i) and its
  physical space is LPS. The array goes to ITK transposed (ITK index (x, y, z) = (i, j, k)), with spacing
  |A columns|, direction F R and origin F t, where R = A[:3, :3] / spacing, t = A[:3, 3], F = diag(-1, -1, 1).
- Elastix maps a fixed-image point x to the moving-image point T(x) = x + d(x) and resamples moving(T(x)): a
  pull-back, like ours. ``transformix_deformation_field`` gives d in mm, components (x, y, z) in LPS, on the fixed
  grid, numpy view (k, j, i, 3). In our convention u(p) = A3^-1 F d(p), channels (i, j, k), shape (3, i, j, k).
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from nibabel.affines import voxel_sizes

from ..errors import CorxError
from .preprocess import PreparedPair, PreprocessConfig, preprocess_pair
from .register import Registration, warp_prepared

VARIANTS = ("ct", "spect")
LPS_FLIP = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class ElastixSettings:
    """Elastix knobs; the defaults are the paper's setting (full-size runs)."""

    max_iterations: int = 1000  # per resolution (paper: 1000)
    grid_spacing_mm: float = 10.0  # final B-spline control point spacing (Elastix default)
    resolutions: int = 4  # pyramid levels (Elastix default)
    spatial_samples: int = 2048  # random samples per iteration (Elastix default)
    histogram_bins: int = 32  # AMMI bins (Elastix default)
    ct_weight: float = 1.0  # variant "spect": weight of the CT AMMI
    spect_weight: float = 0.1  # variant "spect": weight of the SPECT AMMI (see the module docstring)
    seed: int = 121212  # RandomSeed of the samplers (reproducible runs)
    threads: int = 0  # 0: ITK's default (all cores)

    def __post_init__(self) -> None:
        for name, kind in (("max_iterations", int), ("grid_spacing_mm", float), ("resolutions", int),
                           ("spatial_samples", int), ("histogram_bins", int), ("ct_weight", float),
                           ("spect_weight", float), ("seed", int), ("threads", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))  # 20 and 20.0: one setting, one cache key
        if self.max_iterations < 1 or self.resolutions < 1 or self.spatial_samples < 16:
            raise CorxError(f"invalid Elastix settings: {self}")
        if self.grid_spacing_mm <= 0 or self.ct_weight < 0 or self.spect_weight < 0:
            raise CorxError(f"invalid Elastix settings: {self}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parameter_map(settings: ElastixSettings, variant: str = "ct") -> dict[str, tuple[str, ...]]:
    """The Elastix parameter map of a variant as a plain dict (strings, as Elastix wants them)."""
    if variant not in VARIANTS:
        raise CorxError(f"unknown Elastix variant {variant!r} (choose from {', '.join(VARIANTS)})")
    n = settings.resolutions
    per_image = 2 if variant == "spect" else 1
    schedule = tuple(f"{2.0 ** ((n - 1 - i) / 2.0):.6f}" for i in range(n))  # default 2.83, 2, 1.41, 1 for n=4

    def rep(value: str) -> tuple[str, ...]:
        return (value,) * per_image

    pm: dict[str, tuple[str, ...]] = {
        "FixedInternalImagePixelType": ("float",), "MovingInternalImagePixelType": ("float",),
        "FixedImageDimension": ("3",), "MovingImageDimension": ("3",),
        "Transform": ("BSplineTransform",),
        "FinalGridSpacingInPhysicalUnits": (f"{settings.grid_spacing_mm:.6f}",),
        "GridSpacingSchedule": schedule,
        "HowToCombineTransforms": ("Compose",),
        "Optimizer": ("AdaptiveStochasticGradientDescent",),
        "AutomaticParameterEstimation": ("true",),
        "MaximumNumberOfIterations": (str(int(settings.max_iterations)),),
        "NumberOfResolutions": (str(n),),
        "FixedImagePyramid": rep("FixedSmoothingImagePyramid"),
        "MovingImagePyramid": rep("MovingSmoothingImagePyramid"),
        "Interpolator": rep("LinearInterpolator"),
        "ImageSampler": rep("RandomCoordinate"),
        "NumberOfSpatialSamples": (str(int(settings.spatial_samples)),),
        "NewSamplesEveryIteration": ("true",),
        "CheckNumberOfSamples": ("true",),
        "MaximumNumberOfSamplingAttempts": ("8",),
        "NumberOfHistogramBins": (str(int(settings.histogram_bins)),),
        "RandomSeed": (str(int(settings.seed)),),
        "ResampleInterpolator": ("FinalBSplineInterpolator",),
        "FinalBSplineInterpolationOrder": ("3",),
        "Resampler": ("DefaultResampler",),
        "DefaultPixelValue": ("0",),
        "WriteResultImage": ("false",),
        "WriteIterationInfo": ("false",),
        "ResultImageFormat": ("nii",),
    }
    if variant == "ct":
        pm["Registration"] = ("MultiResolutionRegistration",)
        pm["Metric"] = ("AdvancedMattesMutualInformation",)
    else:
        pm["Registration"] = ("MultiMetricMultiResolutionRegistration",)
        pm["Metric"] = ("AdvancedMattesMutualInformation", "AdvancedMattesMutualInformation")
        pm["Metric0Weight"] = (f"{settings.ct_weight:.6f}",)
        pm["Metric1Weight"] = (f"{settings.spect_weight:.6f}",)
    return pm


ITK_MISSING = "Elastix needs itk-elastix: pip install -e '.[baselines]'"


def require_itk() -> None:
    """A CorxError now, before any work, when itk-elastix is not installed (without importing it: slow)."""
    try:
        found = importlib.util.find_spec("itk") is not None
    except ValueError:  # sys.modules["itk"] is None: imports of it are blocked
        found = False
    if not found:
        raise CorxError(ITK_MISSING)


def _itk() -> Any:
    """The itk module (itk-elastix), or a CorxError saying how to install it."""
    try:
        import itk
    except ImportError as exc:
        raise CorxError(ITK_MISSING) from exc
    return itk


# ------------------------------------------------------------------------------------------------- geometry
def lps_geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spacing, direction, origin) in ITK's LPS space of a NIfTI (RAS) voxel -> world affine."""
    a = np.asarray(affine, dtype=np.float64)
    spacing = voxel_sizes(a)
    direction = LPS_FLIP @ (a[:3, :3] / spacing)
    origin = LPS_FLIP @ a[:3, 3]
    return spacing, direction, origin


def to_itk(data: np.ndarray, affine: np.ndarray) -> Any:
    """A float32 itk.Image of an (i, j, k) array on a RAS affine (ITK index (x, y, z) = (i, j, k))."""
    itk = _itk()
    spacing, direction, origin = lps_geometry(affine)
    img = itk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, dtype=np.float32).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))
    return img


def itk_field_to_voxels(field_kji: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Elastix displacement (numpy view (k, j, i, 3), LPS mm, (x, y, z)) -> corx field (3, i, j, k), voxels."""
    d = np.asarray(field_kji, dtype=np.float64)
    if d.ndim != 4 or d.shape[-1] != 3:
        raise CorxError(f"expected an ITK displacement field view (k, j, i, 3), got shape {d.shape}")
    d_ras = np.einsum("ab,kjib->aijk", LPS_FLIP, d)
    u = np.einsum("ab,b...->a...", np.linalg.inv(np.asarray(affine, dtype=np.float64)[:3, :3]), d_ras)
    return np.ascontiguousarray(u.astype(np.float32))


def voxels_to_itk_field(u: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`itk_field_to_voxels`: corx field (3, i, j, k) -> (k, j, i, 3) LPS mm."""
    d_ras = np.einsum("ab,b...->a...", np.asarray(affine, dtype=np.float64)[:3, :3], np.asarray(u, np.float64))
    return np.ascontiguousarray(np.einsum("ab,bijk->kjia", LPS_FLIP, d_ras))


def transform_to_voxels(transform_parameters: Any, moving_like: Any, affine: np.ndarray) -> np.ndarray:
    """Evaluate an Elastix transform parameter object on its fixed grid as a corx field (3, i, j, k)."""
    itk = _itk()
    field = itk.transformix_deformation_field(moving_like, transform_parameters)
    return itk_field_to_voxels(itk.array_view_from_image(field), affine)


# ----------------------------------------------------------------------------------------------- registration
def make_parameter_object(settings: ElastixSettings, variant: str) -> Any:
    """An itk.ParameterObject holding :func:`parameter_map`."""
    itk = _itk()
    po = itk.ParameterObject.New()
    pmap = po.GetDefaultParameterMap("bspline")
    for key in list(pmap.keys()):
        del pmap[key]
    for key, value in parameter_map(settings, variant).items():
        pmap[key] = value
    po.AddParameterMap(pmap)
    return po


def elastix_field_arrays(fixed: list[np.ndarray], moving: list[np.ndarray], affine: np.ndarray,
                         settings: ElastixSettings | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Register moving images to fixed ones (same grid ``affine``); one pair: AMMI, two pairs: multi-metric.

    Returns the corx field (3, i, j, k) in voxels and run information (seconds, number of transform parameters).
    """
    itk = _itk()
    settings = settings or ElastixSettings()
    if len(fixed) != len(moving) or len(fixed) not in (1, 2):
        raise CorxError("Elastix: give one or two (fixed, moving) image pairs")
    variant = "ct" if len(fixed) == 1 else "spect"
    fixed_itk = [to_itk(f, affine) for f in fixed]
    moving_itk = [to_itk(m, affine) for m in moving]
    t0 = time.perf_counter()
    reg = itk.ElastixRegistrationMethod.New(fixed_itk[0], moving_itk[0])
    for f, m in zip(fixed_itk[1:], moving_itk[1:], strict=True):
        reg.AddFixedImage(f)
        reg.AddMovingImage(m)
    reg.SetParameterObject(make_parameter_object(settings, variant))
    reg.SetLogToConsole(False)
    reg.SetLogToFile(False)
    if settings.threads:
        reg.SetNumberOfThreads(int(settings.threads))
    reg.UpdateLargestPossibleRegion()
    tpo = reg.GetTransformParameterObject()
    u = transform_to_voxels(tpo, moving_itk[0], affine)
    seconds = time.perf_counter() - t0
    n_params = int(tpo.GetParameterMap(0)["NumberOfParameters"][0])
    return u, {"seconds": seconds, "transform_parameters": n_params, "variant": variant}


def elastix_field(prepared: PreparedPair, variant: str = "ct",
                  settings: ElastixSettings | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Elastix field of a preprocessed pair (channels: fixed CT, moving CT, fixed SPECT, moving SPECT)."""
    if variant not in VARIANTS:
        raise CorxError(f"unknown Elastix variant {variant!r} (choose from {', '.join(VARIANTS)})")
    img = prepared.image
    fixed, moving = [img[0]], [img[1]]
    if variant == "spect":
        fixed.append(img[2])
        moving.append(img[3])
    return elastix_field_arrays(fixed, moving, prepared.affine, settings)


def elastix_register_pair(fixed_ct: object, moving_ct: object, fixed_spect: object, moving_spect: object,
                          config: PreprocessConfig | None = None, variant: str = "ct", max_iterations: int = 1000,
                          settings: ElastixSettings | None = None) -> Registration:
    """Register one moving SPECT/CT pair to the fixed pair with Elastix, on CoRX-NET's network grid.

    Inputs as for :func:`corx.registration.register.register_pair` (paths, Volumes or (data, affine)). ``variant``
    "ct": the paper's CT-driven B-spline (AMMI), the transform applied to the SPECT; "spect": CT + SPECT multi-metric.
    ``settings`` overrides everything but ``max_iterations`` (which wins when it differs from 1000).
    Returns the field (voxels of the network grid, pull-back), warped CT (HU), warped SPECT (Bq/mL), affine.
    """
    cfg = config or PreprocessConfig()
    settings = settings or ElastixSettings(max_iterations=int(max_iterations))
    if max_iterations != 1000 and settings.max_iterations != max_iterations:
        settings = ElastixSettings(**{**settings.as_dict(), "max_iterations": int(max_iterations)})
    prepared = preprocess_pair(fixed_ct, moving_ct, fixed_spect, moving_spect, cfg)
    field, _ = elastix_field(prepared, variant, settings)
    return warp_prepared(prepared, field)
