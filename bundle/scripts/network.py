"""CoRX-NET (two-stream Swin registration network with cross-stitch units) and its TransMorph baseline.

One configurable class, :class:`CoRXNet`, covers the three networks of the paper (Kim et al., Med Phys 2024,
section 2.2 and Table 2); :func:`build_network` picks the variant:

==============  =======  ===========  =============  ==========  ================  ==================
variant         streams  depths       heads          cross-st.   parameters        paper (Table 2)
==============  =======  ===========  =============  ==========  ================  ==================
``corx``        2        (2, 2, 2)    (4, 4, 8)      7 units     9,556,674         9,557,138
``corx_nocs``   2        (2, 2, 2)    (4, 4, 8)      none        9,556,646         9,557,110
``transmorph``  1        (2, 2, 4, 2) (4, 4, 8, 8)   none        20,800,563        20,800,563
==============  =======  ===========  =============  ==========  ================  ==================

(the CoRX counts are 464 short of the paper's, -0.0049 %: see "Fusion" below).

Input and output
    ``forward`` takes ONE tensor ``(B, 4, D, H, W)``: channels fixed CT, moving CT, fixed SPECT, moving
    SPECT. The CT stream sees channels 0-1, the SPECT stream channels 2-3; the one-stream TransMorph variant
    sees channels 0-1 only (the SPECT channels are ignored). It returns ONE displacement field
    ``(B, 3, D, H, W)`` in voxel units, channels in array-axis order (i, j, k), pull-back convention (MONAI ``Warp``:
    ``warped(p) = moving(p + u(p))``; docs/CONVENTIONS.md). The network does not warp: keep ``Warp``
    outside.

Each stream (TransMorph recipe, Chen et al. 2022, with MONAI blocks)
    ``PatchEmbed`` (Conv3d(2->C, k=4, s=4) + LayerNorm) -> Swin stages (MONAI ``BasicLayer`` with
    ``qkv_bias=False``, ``PatchMerging`` between stages, window 4^3), a LayerNorm on each stage output
    (taken before the merge, as TransMorph does) -> decoder blocks (trilinear x2, concatenate the skip, 2 x
    [Conv3d 3^3 no bias, InstanceNorm (no affine), LeakyReLU]) up to full resolution. The two last decoder
    blocks take convolutional skips: ``c1`` on ``AvgPool3d(3, 2, 1)`` of the input (2 -> C/2) and ``c2`` at
    full resolution (2 -> 16); both are TransMorph's ``Conv3dReLU`` (Conv3d 3^3 no bias, InstanceNorm,
    LeakyReLU), which have the same parameters as a bare Conv3d without bias.

Cross-stitch units (paper eq. 1)
    A learnable scalar 2x2 matrix ``[[a11, a12], [a21, a22]]`` mixing the CT and SPECT features, after every
    Swin stage (on the stage output, before its LayerNorm and the merge, so the mixed features feed both the
    skip and the next stage) and after every decoder double convolution: 3 + 4 = 7 units, 28 parameters for
    the 3-stage network. Initialised at ``a11 = a22 = 0.9``, ``a12 = a21 = 0.1`` (the "mostly own task"
    initialisation of Misra et al. 2016): near identity, so that each stream starts close to an independent
    TransMorph-like stream while gradients reach the off-diagonal terms from the first step.

Fusion (not reported in the paper)
    Each stream ends in TransMorph's registration head (Conv3d(16->3, 3^3), weights ~ N(0, 1e-5), bias 0)
    and the field is the mean of the two stream fields (``fusion="mean"``, default). This is the plain
    reading of "two identical streams, each closely resembling TransMorph", adds no parameters, keeps the
    field linear in both streams' last features (equivalent to one head over the concatenated features) and
    starts near identity (|u| ~ 1e-4 voxels). ``fusion="concat"`` instead puts one head on the concatenated
    2 x 16 features (3 parameters fewer). Neither reproduces the paper's count exactly: the paper has 464
    more parameters than this recipe and no natural fusion/head layer of exactly 464 parameters was found
    (fields mixed by a 6->3 3^3 convolution would overshoot by 22); the difference is 0.0049 %, within the
    0.1 % target.

Image size
    Any size works: with ``pad_input=True`` (default) ``forward`` pads each spatial axis at its far end up
    to a multiple of ``size_multiple`` (32; ``pad_mode`` "replicate" or "constant" zero) and crops the field
    back. This is part of the scripted graph (``torch.jit.script`` keeps it dynamic; ``torch.jit.trace`` and
    a traced ONNX export freeze it for the traced size). :func:`pad_to_multiple` / :func:`crop_to_shape`
    (alias ``crop``) are the same helpers for callers that pad outside (``pad_input=False``; sizes must then
    be multiples of ``min_multiple``, 16 for CoRX, 32 for TransMorph). Nothing in the weights depends on the
    image size (Swin windows shrink to the feature map where it is smaller than 4, as in MONAI).

Speed (2 CPU cores, batch 1, benchmarks/bench_forward.py): 128^3 CoRX forward 8.8 s eager fp32, 9.4 s
TorchScript, 3.4 s eager under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (check on trained weights before
relying on bf16), 6.0 s fp32 with ``use_flash_attention=True`` (but slower combined with bf16); 64^3: 0.65 s.

TorchScript / ONNX
    MONAI's ``SwinTransformerBlock``/``BasicLayer``/``PatchMerging`` forwards cannot be
    ``torch.jit.script``-ed (einops, numpy, checkpoint, ``super()``). The network therefore builds MONAI's
    ``PatchEmbed`` and ``BasicLayer(..., downsample=PatchMerging)`` for their parameters and sub-modules
    (``LayerNorm``, ``WindowAttention``, ``MLPBlock``, ``DropPath``, the merge's ``LayerNorm`` + ``Linear``)
    and drives them with a small scriptable forward of its own that reproduces MONAI's arithmetic (checked
    against ``BasicLayer.forward`` in tests/test_network.py) and also returns the pre-merge stage output
    TransMorph uses as skip. The whole network scripts and traces; ONNX export works through tracing
    (``torch.onnx.export(..., dynamo=False)``, opset 17), for the traced size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import PatchEmbed
from monai.networks.nets.swin_unetr import BasicLayer, PatchMerging, SwinTransformerBlock
from torch import Tensor, nn

from .scripted import output_integration_steps  # defined beside the TorchScript loader, which must not import MONAI

__all__ = [
    "PAPER_PARAMETERS",
    "VARIANTS",
    "CoRXNet",
    "CrossStitch",
    "FieldSmoothing",
    "build_network",
    "count_parameters",
    "crop",
    "crop_to_shape",
    "output_integration_steps",
    "pad_to_multiple",
    "trainable_parameters",
]

#: Largest number of scaling-and-squaring steps a network may ask for (2**12 = 4096 sub-steps).
MAX_INTEGRATION_STEPS = 12

#: Largest Gaussian width (voxels) :class:`FieldSmoothing` accepts.
MAX_SMOOTHING_SIGMA = 8.0

#: Parameter counts reported in the paper's Table 2.
PAPER_PARAMETERS: dict[str, int] = {"corx": 9_557_138, "corx_nocs": 9_557_110, "transmorph": 20_800_563}

#: Constructor arguments of the three networks of the paper.
VARIANTS: dict[str, dict[str, Any]] = {
    "corx": {"num_streams": 2, "cross_stitch": True, "depths": (2, 2, 2), "num_heads": (4, 4, 8)},
    "corx_nocs": {"num_streams": 2, "cross_stitch": False, "depths": (2, 2, 2), "num_heads": (4, 4, 8)},
    "transmorph": {
        "num_streams": 1,
        "cross_stitch": False,
        "depths": (2, 2, 4, 2),
        "num_heads": (4, 4, 8, 8),
    },
}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (all of them, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def trainable_parameters(model: nn.Module, only: str | None = None,
                         frozen: Sequence[str] = ()) -> list[nn.Parameter]:
    """The parameters an optimiser should get; every other parameter is frozen (``requires_grad`` off, so no
    gradient is computed for it).

    ``only`` = a submodule name (e.g. ``"affine_head"``): only that submodule trains. ``frozen`` = submodule
    names that do not train (e.g. ``["affine_head"]`` to train the dense part behind a fixed head). Neither:
    all parameters, all trainable.
    """
    children = [name for name, _ in model.named_children()]
    for name in ([only] if only is not None else []) + list(frozen):
        if name not in children:
            raise ValueError(f"trainable parameters: the network has no submodule {name!r} ({', '.join(children)})")
    chosen = []
    for name, param in model.named_parameters():
        keep = (only is None or name.startswith(only + ".")) and not any(name.startswith(f + ".") for f in frozen)
        param.requires_grad_(keep)
        if keep:
            chosen.append(param)
    if not chosen:
        raise ValueError(f"trainable parameters (only {only!r}, frozen {list(frozen)}): none left to train "
                         "(is the option that adds the submodule on?)")
    return chosen


def pad_to_multiple(x: Tensor, multiple: int = 32, mode: str = "replicate") -> tuple[Tensor, list[int]]:
    """Pad the 3 spatial axes of ``x`` (B, C, D, H, W) at their far end up to multiples of ``multiple``.

    Returns the padded tensor and the original spatial shape (for :func:`crop_to_shape`). ``mode`` is
    "replicate" or "constant" (zeros).
    """
    d, h, w = x.shape[2], x.shape[3], x.shape[4]
    pd = (multiple - d % multiple) % multiple
    ph = (multiple - h % multiple) % multiple
    pw = (multiple - w % multiple) % multiple
    if pd > 0 or ph > 0 or pw > 0:
        x = F.pad(x, [0, pw, 0, ph, 0, pd], mode=mode)
    return x, [d, h, w]


def crop_to_shape(x: Tensor, shape: list[int]) -> Tensor:
    """Crop the 3 spatial axes of ``x`` (B, C, D, H, W) to ``shape`` (undoes :func:`pad_to_multiple`)."""
    return x[:, :, : shape[0], : shape[1], : shape[2]]


#: alias of :func:`crop_to_shape`
crop = crop_to_shape


def _region_ids(n: int, window: int, shift: int, device: torch.device) -> Tensor:
    """Shifted-window region index (0, 1, 2) along one axis, as MONAI's ``compute_mask`` slices it."""
    idx = torch.arange(n, device=device)
    return (idx >= n - window).to(torch.long) + (idx >= n - shift).to(torch.long)


def _shift_mask(dims: list[int], window: list[int], shift: list[int], device: torch.device) -> Tensor:
    """Attention mask (num_windows, N, N) of the shifted windows: 0 within a region, -100 across regions."""
    d, h, w = dims[0], dims[1], dims[2]
    ids = (
        _region_ids(d, window[0], shift[0], device).view(d, 1, 1) * 9
        + _region_ids(h, window[1], shift[1], device).view(1, h, 1) * 3
        + _region_ids(w, window[2], shift[2], device).view(1, 1, w)
    )
    ids = ids.view(d // window[0], window[0], h // window[1], window[1], w // window[2], window[2])
    ids = ids.permute(0, 2, 4, 1, 3, 5).reshape(-1, window[0] * window[1] * window[2])
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    zeros = torch.zeros(diff.shape, dtype=torch.float32, device=device)
    return zeros.masked_fill(diff != 0, -100.0)


def _window_partition(x: Tensor, window: list[int]) -> Tensor:
    """(B, D, H, W, C) with D, H, W multiples of the window -> (B * num_windows, N, C)."""
    b, d, h, w, c = x.shape[0], x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    x = x.view(b, d // window[0], window[0], h // window[1], window[1], w // window[2], window[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window[0] * window[1] * window[2], c)


def _window_reverse(windows: Tensor, window: list[int], dims: list[int]) -> Tensor:
    """Inverse of :func:`_window_partition`; ``dims`` = [B, D, H, W]."""
    b, d, h, w = dims[0], dims[1], dims[2], dims[3]
    c = windows.shape[-1]
    x = windows.view(b, d // window[0], h // window[1], w // window[2], window[0], window[1], window[2], c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, c)


class _SwinBlock(nn.Module):
    """Scriptable forward over the sub-modules of one MONAI ``SwinTransformerBlock`` (same arithmetic)."""

    def __init__(self, block: SwinTransformerBlock) -> None:
        super().__init__()
        self.norm1 = block.norm1
        self.attn = block.attn
        self.drop_path = block.drop_path
        self.norm2 = block.norm2
        self.mlp = block.mlp
        self.shifted = any(int(s) > 0 for s in block.shift_size)

    def forward(self, x: Tensor, window: list[int], shift: list[int], mask: Tensor) -> Tensor:
        """``x`` (B, D, H, W, C); ``window``/``shift`` adapted to the map size; ``mask`` for the shift."""
        b, d, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        shortcut = x
        x = self.norm1(x)
        pd = (window[0] - d % window[0]) % window[0]
        ph = (window[1] - h % window[1]) % window[1]
        pw = (window[2] - w % window[2]) % window[2]
        padded = pd > 0 or ph > 0 or pw > 0
        if padded:
            x = F.pad(x, [0, 0, 0, pw, 0, ph, 0, pd])
        shifted = self.shifted and (shift[0] > 0 or shift[1] > 0 or shift[2] > 0)
        if shifted:
            x = torch.roll(x, shifts=[-shift[0], -shift[1], -shift[2]], dims=[1, 2, 3])
        else:
            # MONAI's WindowAttention types its mask as a Tensor: an all-zero mask is "no mask".
            n = window[0] * window[1] * window[2]
            mask = torch.zeros((1, n, n), dtype=torch.float32, device=x.device)
        windows = self.attn(_window_partition(x, window), mask)
        x = _window_reverse(windows, window, [b, d + pd, h + ph, w + pw])
        if shifted:
            x = torch.roll(x, shifts=[shift[0], shift[1], shift[2]], dims=[1, 2, 3])
        if padded:
            x = x[:, :d, :h, :w, :].contiguous()
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class _PatchMerging(nn.Module):
    """Scriptable forward of MONAI's ``PatchMerging`` (v0.9 order): (B, D, H, W, C) -> half size, 2C."""

    def __init__(self, merging: PatchMerging) -> None:
        super().__init__()
        self.norm = merging.norm
        self.reduction = merging.reduction

    def forward(self, x: Tensor) -> Tensor:
        """Concatenate the 8 neighbours, LayerNorm(8C), Linear(8C -> 2C)."""
        d, h, w = x.shape[1], x.shape[2], x.shape[3]
        if d % 2 == 1 or h % 2 == 1 or w % 2 == 1:
            x = F.pad(x, [0, 0, 0, w % 2, 0, h % 2, 0, d % 2])
        x = torch.cat(
            [
                x[:, 0::2, 0::2, 0::2, :],
                x[:, 1::2, 0::2, 0::2, :],
                x[:, 0::2, 1::2, 0::2, :],
                x[:, 0::2, 0::2, 1::2, :],
                x[:, 1::2, 1::2, 0::2, :],
                x[:, 1::2, 0::2, 1::2, :],
                x[:, 0::2, 1::2, 1::2, :],
                x[:, 1::2, 1::2, 1::2, :],
            ],
            -1,
        )
        return self.reduction(self.norm(x))


class _SwinStage(nn.Module):
    """The Swin blocks of one MONAI ``BasicLayer`` with a scriptable forward (the merge is kept apart)."""

    def __init__(self, layer: BasicLayer) -> None:
        super().__init__()
        self.window_size: list[int] = [int(v) for v in layer.window_size]
        self.blocks = nn.ModuleList([_SwinBlock(b) for b in layer.blocks])

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, H, W, C) -> same shape; windows adapted to the map size as in MONAI's ``BasicLayer``."""
        dims = [x.shape[1], x.shape[2], x.shape[3]]
        window: list[int] = []
        shift: list[int] = []
        padded: list[int] = []
        for i in range(3):
            if dims[i] <= self.window_size[i]:  # MONAI's get_window_size: the window shrinks to the map
                window.append(dims[i])
                shift.append(0)
            else:
                window.append(self.window_size[i])
                shift.append(self.window_size[i] // 2)
            padded.append((dims[i] + window[i] - 1) // window[i] * window[i])
        mask = _shift_mask(padded, window, shift, x.device)
        for blk in self.blocks:
            x = blk(x, window, shift, mask)
        return x


class CrossStitch(nn.Module):
    """Cross-stitch unit (paper eq. 1): ``[F_CT', F_SPECT'] = A [F_CT, F_SPECT]``, A learnable, 2x2."""

    def __init__(self, diagonal: float = 0.9, off_diagonal: float = 0.1) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor([[diagonal, off_diagonal], [off_diagonal, diagonal]]))

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        """Mix the two streams' feature maps (any identical shapes)."""
        a, b = xs[0], xs[1]
        return [self.alpha[0, 0] * a + self.alpha[0, 1] * b, self.alpha[1, 0] * a + self.alpha[1, 1] * b]


def _conv_in_lrelu(in_channels: int, out_channels: int) -> nn.Sequential:
    """TransMorph's ``Conv3dReLU``: Conv3d 3^3 (no bias), instance norm (no affine), LeakyReLU(0.01).

    The instance norm is written as ``GroupNorm(C, C, affine=False)``: the same statistics (one group per channel,
    eps 1e-5, no parameters), but with a channels-last kernel on CPU, where ``InstanceNorm3d`` copies a
    channels-last input back to contiguous (see :func:`to_channels_last`).
    """
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(out_channels, out_channels, affine=False),
        nn.LeakyReLU(inplace=True),
    )


class _DecoderBlock(nn.Module):
    """TransMorph decoder block: trilinear x2, concatenate the skip, double convolution."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_in_lrelu(in_channels + skip_channels, out_channels)
        self.conv2 = _conv_in_lrelu(out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """Up-sample ``x`` to the size of ``skip`` (x2), concatenate, convolve."""
        x = F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))


class _EncoderLevel(nn.Module):
    """One Swin stage per stream, the optional cross-stitch unit, the output LayerNorms and the merges."""

    def __init__(
        self,
        layers: list[BasicLayer],
        dim: int,
        cross_stitch: CrossStitch | None,
        norm_layer: type[nn.Module],
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList([_SwinStage(layer) for layer in layers])
        self.cross_stitch = nn.ModuleList([cross_stitch] if cross_stitch is not None else [])
        self.norms = nn.ModuleList([norm_layer(dim) for _ in layers])
        merges = [_PatchMerging(la.downsample) for la in layers if la.downsample is not None]
        self.merges = nn.ModuleList(merges)

    def forward(self, xs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Channels-last inputs -> (normalised channels-first stage outputs, channels-last merged maps)."""
        outs: list[Tensor] = []
        for s, stage in enumerate(self.stages):
            outs.append(stage(xs[s]))
        for cs in self.cross_stitch:
            outs = cs(outs)
        skips: list[Tensor] = []
        for s, norm in enumerate(self.norms):
            skips.append(norm(outs[s]).permute(0, 4, 1, 2, 3).contiguous())
        merged: list[Tensor] = []
        for s, merge in enumerate(self.merges):
            merged.append(merge(outs[s]))
        return skips, merged


class _DecoderLevel(nn.Module):
    """One decoder block for every stream and the optional cross-stitch unit."""

    def __init__(self, blocks: list[_DecoderBlock], cross_stitch: CrossStitch | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.cross_stitch = nn.ModuleList([cross_stitch] if cross_stitch is not None else [])

    def forward(self, xs: list[Tensor], skips: list[Tensor]) -> list[Tensor]:
        """Decode every stream one level up, then mix the streams."""
        ys: list[Tensor] = []
        for s, block in enumerate(self.blocks):
            ys.append(block(xs[s], skips[s]))
        for cs in self.cross_stitch:
            ys = cs(ys)
        return ys


#: The affine head's raw outputs are multiplied by this: a raw unit is 0.1 of the half field of view (6.4 voxels on
#: a 128 grid) for the translation and 0.1 for the matrix (about 6 degrees), so both move at similar rates under Adam.
AFFINE_OUTPUT_SCALE = 0.1
#: most passes an :class:`AffineHead` may iterate
MAX_AFFINE_PASSES = 4


def _centred_axis(shape: list[int], axis: int, device: torch.device, half_range: bool = False) -> Tensor:
    """Voxel coordinates along ``axis`` minus the grid centre, shaped to broadcast over (B, C, D, H, W); divided by
    the half extent (so in [-1, 1]) when ``half_range``."""
    n = shape[axis]
    view = [1, 1, 1, 1, 1]
    view[2 + axis] = n
    coords = torch.arange(n, device=device, dtype=torch.float32) - (n - 1) * 0.5
    if half_range and n > 1:
        coords = coords * (2.0 / (n - 1))
    return coords.view(view)


def _half_extents(shape: list[int], device: torch.device) -> Tensor:
    """(3,) half extents of the grid in voxels, ``(n - 1) / 2`` per axis (at least 1, so that ratios stay finite)."""
    return torch.tensor([max((n - 1) * 0.5, 1.0) for n in shape], device=device, dtype=torch.float32)


def affine_displacement(params: Tensor, shape: list[int]) -> Tensor:
    """(B, 12) affine parameters in half-extent units -> (B, 3, *shape) displacement in voxels.

    With ``n(x)`` the voxel coordinate scaled to [-1, 1] over the grid (centre 0) and ``h`` the half extents in
    voxels: ``u(x) = h * (M n(x) + t)``, ``M`` = first nine parameters (row-major, array-axis order), ``t`` = last
    three. In these units the same parameters mean the same motion of the field of view at any grid size."""
    b = params.shape[0]
    m = params[:, :9].float().reshape(b, 3, 3, 1, 1, 1)
    t = params[:, 9:].float().reshape(b, 3, 1, 1, 1)
    x = _centred_axis(shape, 0, params.device, half_range=True)
    y = _centred_axis(shape, 1, params.device, half_range=True)
    z = _centred_axis(shape, 2, params.device, half_range=True)
    half = _half_extents(shape, params.device).view(1, 3, 1, 1, 1)
    return (m[:, :, 0] * x + m[:, :, 1] * y + m[:, :, 2] * z + t) * half


def affine_linear_part(params: Tensor, shape: list[int]) -> Tensor:
    """(B, 12) parameters of :func:`affine_displacement` -> (B, 3, 3) matrix ``A`` in voxel units, so that the
    displacement of a shifted point is ``u(x + d) = u(x) + A d`` (``A_ij = M_ij h_i / h_j``)."""
    b = params.shape[0]
    half = _half_extents(shape, params.device)
    return params[:, :9].float().reshape(b, 3, 3) * half.view(1, 3, 1) / half.view(1, 1, 3)


def compose_affine_parameters(first: Tensor, second: Tensor) -> Tensor:
    """(B, 12) parameters of the affine ``first`` applied after ``second`` on the moving side: the moving image warped
    by ``first`` and then by ``second`` is the moving image warped by the result.

    In the normalised coordinates of :func:`affine_displacement` each is the map ``n -> (I + M) n + t``; the pull-back
    of the moving image through both is ``n -> (I + M1)((I + M2) n + t2) + t1``, exactly affine again."""
    b = first.shape[0]
    eye = torch.eye(3, device=first.device, dtype=torch.float32).unsqueeze(0)
    m1 = first[:, :9].float().reshape(b, 3, 3) + eye
    m2 = second[:, :9].float().reshape(b, 3, 3) + eye
    t1 = first[:, 9:].float().reshape(b, 3, 1)
    t2 = second[:, 9:].float().reshape(b, 3, 1)
    matrix = torch.bmm(m1, m2) - eye
    shift = torch.bmm(m1, t2) + t1
    return torch.cat([matrix.reshape(b, 9), shift.reshape(b, 3)], dim=1)


def moving_warped(x: Tensor, displacement: Tensor) -> Tensor:
    """The input (fixed and moving images interleaved: fixed CT, moving CT, fixed SPECT, moving SPECT) with its
    moving images (odd channels) warped by ``displacement``; the fixed images unchanged."""
    moved = warp_voxels(x[:, 1::2], displacement).to(x.dtype)
    channels: list[Tensor] = []
    for s in range(x.shape[1] // 2):
        channels.append(x[:, 2 * s : 2 * s + 1])
        channels.append(moved[:, s : s + 1])
    return torch.cat(channels, dim=1)


def warp_voxels(image: Tensor, displacement: Tensor) -> Tensor:
    """Sample ``image`` (B, C, D, H, W) at ``x + displacement(x)`` (B, 3, D, H, W; voxels, array-axis order):
    trilinear, zero outside the grid (the pull-back convention of the whole project). The same sampling as MONAI
    ``Warp("bilinear", "zeros")``, which the loss uses, but scriptable: the network must stay TorchScript."""
    shape = [image.shape[2], image.shape[3], image.shape[4]]
    normalised: list[Tensor] = []
    for axis in range(3):
        n = shape[axis]
        position = _centred_axis(shape, axis, image.device, half_range=True)[:, 0]
        scale = 2.0 / (n - 1) if n > 1 else 1.0
        normalised.append(position + displacement[:, axis].float() * scale)
    grid = torch.stack([normalised[2], normalised[1], normalised[0]], dim=-1)  # grid_sample wants (x=W, y=H, z=D)
    return F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class _StoredSettings(nn.Module):
    """A module whose run settings are buffers in its weights, so that a file runs as it was trained or chosen.
    ``LEGACY_SETTINGS`` gives each setting's value before it existed: weights saved earlier load with it (strict
    loaders too)."""

    LEGACY_SETTINGS: tuple[tuple[str, float], ...] = ()

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name, value in self.LEGACY_SETTINGS:
            state_dict.setdefault(prefix + name, torch.tensor(value, dtype=self.get_buffer(name).dtype))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class AffineHead(_StoredSettings):
    """Global affine displacement of the whole pair, from the four input images (an addition to the paper).

    The input ``(B, C, D, H, W)`` (fixed CT, moving CT, fixed SPECT, moving SPECT) is averaged down by ``pool``,
    then a small convolutional encoder (per stage: Conv3d stride 2 + InstanceNorm + LeakyReLU, Conv3d +
    InstanceNorm + LeakyReLU) sees fixed and moving images together. Its last features are reduced to their mean
    and their first spatial moments ``mean(f * n_a)`` (``n_a`` the coordinate along axis a in [-1, 1]): the mean
    says how far the pair is apart, the moments how that varies across the field of view (a rotation or a
    scaling, which the mean alone cannot tell). An MLP maps them to the 12 parameters of
    :func:`affine_displacement` (times :data:`AFFINE_OUTPUT_SCALE`); its last layer starts at zero, so a new head
    adds nothing until trained. It is a whole registration network on its own (``forward`` returns the field) and
    the global part of :class:`CoRXNet` with ``affine_head=True``.

    ``passes`` > 1 iterates the same weights: each further pass sees the moving images warped by the affine so far
    (on the pooled grid) and its correction is composed with it exactly (:func:`compose_affine_parameters`). The
    number is stored in the weights as the buffer ``passes``, so that a file always runs as it was trained; weights
    saved before the option load as one pass.
    """

    LEGACY_SETTINGS = (("passes", 1),)  # weights saved before the option were trained (and benchmarked) as one pass

    def __init__(self, in_channels: int = 4, channels: Sequence[int] = (16, 32, 64, 128), hidden: int = 128,
                 pool: int = 2, passes: int = 1) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            stages += [nn.Conv3d(c_in, c, 3, stride=2, padding=1), nn.InstanceNorm3d(c), nn.LeakyReLU(0.2),
                       nn.Conv3d(c, c, 3, padding=1), nn.InstanceNorm3d(c), nn.LeakyReLU(0.2)]
            c_in = c
        self.pool = int(pool)
        self.output_scale = AFFINE_OUTPUT_SCALE
        self.encoder = nn.Sequential(*stages)
        self.mlp = nn.Sequential(nn.Linear(4 * c_in, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 12))
        with torch.no_grad():
            self.mlp[2].weight.zero_()
            self.mlp[2].bias.zero_()
        if not 1 <= int(passes) <= MAX_AFFINE_PASSES:
            raise ValueError(f"AffineHead: passes must be in [1, {MAX_AFFINE_PASSES}], got {passes}")
        self.register_buffer("passes", torch.tensor(int(passes), dtype=torch.int64))

    def parameters_of(self, x: Tensor) -> Tensor:
        """(B, C, D, H, W) images -> (B, 12) affine parameters (see :func:`affine_displacement`)."""
        if self.pool > 1:
            x = F.avg_pool3d(x, self.pool, ceil_mode=True)
        params = self._single_pass(x)
        grid = [x.shape[2], x.shape[3], x.shape[4]]
        for _ in range(int(self.passes) - 1):
            aligned = moving_warped(x, affine_displacement(params, grid))
            params = compose_affine_parameters(params, self._single_pass(aligned))
        return params

    def _single_pass(self, x: Tensor) -> Tensor:
        """One prediction of the encoder and MLP on the (pooled) images: (B, 12) parameters."""
        f = self.encoder(x).float()
        if f.shape[2] * f.shape[3] * f.shape[4] < 2:
            raise ValueError("AffineHead: the input is too small for its encoder (64 voxels per axis with pool 2)")
        grid = [f.shape[2], f.shape[3], f.shape[4]]
        pooled = [f.mean(dim=(2, 3, 4))]
        for axis in range(3):
            pooled.append((f * _centred_axis(grid, axis, f.device, half_range=True)).mean(dim=(2, 3, 4)))
        return self.mlp(torch.cat(pooled, dim=1)).float() * self.output_scale

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, D, H, W) images -> (B, 3, D, H, W) float32 affine displacement in voxels."""
        return affine_displacement(self.parameters_of(x), [x.shape[2], x.shape[3], x.shape[4]])


class FieldSmoothing(_StoredSettings):
    """Gaussian smoothing of a ``(B, C, D, H, W)`` field, ``sigma`` voxels wide (0 = off; an addition to the paper).

    Separable: one 1-D convolution per axis (a banded matrix product), the kernel truncated at ``round(3 sigma)``
    voxels and normalised, the border replicated (``scipy.ndimage.gaussian_filter(..., mode="nearest",
    truncate=3)``). Without parameters; ``sigma`` is the buffer ``smoothing_sigma``, stored in the weights, so a
    file always runs with the width chosen for it; weights saved before the option load unsmoothed, as they were
    trained and benchmarked.
    """

    LEGACY_SETTINGS = (("smoothing_sigma", 0.0),)  # weights saved before the option ran unsmoothed

    def __init__(self, sigma: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= float(sigma) <= MAX_SMOOTHING_SIGMA:
            raise ValueError(f"FieldSmoothing: sigma must be in [0, {MAX_SMOOTHING_SIGMA}] voxels, got {sigma}")
        self.register_buffer("smoothing_sigma", torch.tensor(float(sigma), dtype=torch.float32))

    def forward(self, field: Tensor) -> Tensor:
        sigma = float(self.smoothing_sigma)
        if sigma <= 0.0:
            return field
        radius = int(3.0 * sigma + 0.5)
        offsets = torch.arange(-radius, radius + 1, device=field.device)
        kernel = torch.exp(-0.5 * (offsets.float() / sigma) ** 2)
        kernel = kernel / kernel.sum()
        out = field
        for dim in (2, 3, 4):
            out = torch.matmul(out.movedim(dim, 4), _replicated_band(kernel, offsets, out.shape[dim]).to(out.dtype))
            out = out.movedim(4, dim)  # positive axes: ONNX Transpose takes no negative ones
        return out


def _replicated_band(kernel: Tensor, offsets: Tensor, n: int) -> Tensor:
    """(n, n) matrix ``B`` with ``(x @ B)[i] = sum_k kernel[k] x[clamp(i + offsets[k], 0, n - 1)]``: a 1-D convolution
    with replicated borders as one matrix product (on a CPU ~10x faster than three 1-D ``conv3d`` passes)."""
    index = torch.arange(n, device=kernel.device)
    source = (index[:, None] + offsets[None, :]).clamp(0, n - 1)  # (n outputs, taps): the voxel each tap reads
    weights = (source[:, :, None] == index[None, None, :]).to(kernel.dtype) * kernel[None, :, None]
    return weights.sum(dim=1).t()  # [source voxel, output voxel]


def _registration_head(in_channels: int) -> nn.Conv3d:
    """Conv3d(in -> 3, 3^3) with weights ~ N(0, 1e-5) and zero bias: an untrained net is near identity."""
    head = nn.Conv3d(in_channels, 3, kernel_size=3, padding=1)
    with torch.no_grad():
        head.weight.normal_(0.0, 1e-5)
        head.bias.zero_()
    return head


class CoRXNet(nn.Module):
    """CoRX-NET / TransMorph registration network: ``(B, 4, D, H, W)`` images -> ``(B, 3, D, H, W)`` field.

    Args:
        num_streams: 2 = CT stream (channels 0-1) + SPECT stream (channels 2-3) (CoRX); 1 = CT pair only
            (TransMorph; channels 2-3 are ignored).
        cross_stitch: put a cross-stitch unit after every Swin stage and every decoder double convolution
            (needs ``num_streams=2``).
        embed_dim: channels of the first Swin stage (doubled at every stage).
        depths: Swin blocks per stage (the number of stages is ``len(depths)``).
        num_heads: attention heads per stage.
        window_size: Swin window (int or 3 ints).
        mlp_ratio: hidden size of the Swin MLPs relative to the channels.
        reg_head_channels: channels of the last decoder block and of the full-resolution skip ``c2``.
        drop_path_rate: stochastic depth, linearly increasing over all Swin blocks (0 = off).
        cross_stitch_init: (diagonal, off-diagonal) initial cross-stitch coefficients.
        fusion: "mean" = one registration head per stream, field = mean of the stream fields;
            "concat" = one head on the concatenated last features of all streams.
        pad_input: pad the input at the far end of each axis to a multiple of ``size_multiple`` in ``forward``
            and crop the field back (else sizes must already be multiples).
        size_multiple: padding multiple (a multiple of ``min_multiple`` = 4 * 2 ** (len(depths) - 1), the
            size granularity the network needs: 16 for CoRX, 32 for TransMorph).
        pad_mode: "replicate" or "constant" (zeros).
        use_flash_attention: MONAI's ``WindowAttention`` fast path (scaled_dot_product_attention) when
            autograd is off and the module is not scripted.
        in_channels: channels of the input tensor (>= 2 * num_streams).
        integration_steps: 0 = the output is the displacement field; N > 0 = the output is a stationary velocity
            field whose displacement is its scaling-and-squaring integral with N steps (diffeomorphic option,
            :class:`scripts.inferers.FieldInferer`). Stored in the weights as the buffer ``integration_steps``, so a
            checkpoint says how its output is read; the network itself never integrates (it stays a plain
            tensor-to-tensor model for TorchScript, ONNX, TensorRT and Triton).
        affine_head: register globally first (:class:`AffineHead`, its own small encoder on the input): the moving
            images are warped by its affine, the Swin encoder-decoder registers that aligned pair, and the two are
            composed exactly, ``u(x) = a(x) + (I + A) d(x)``, so the body's repositioning need not be built voxel
            by voxel (displacement output only). A checkpoint with ``affine_head.*`` weights is loaded with it on.
        affine_passes: passes of the affine head (:class:`AffineHead`); weights carry their own.
        dense_smoothing: Gaussian width (voxels) applied to the Swin encoder-decoder's field before it is composed
            with the affine (:class:`FieldSmoothing`; 0 = off); weights carry their own.
    """

    def __init__(
        self,
        num_streams: int = 2,
        cross_stitch: bool = True,
        embed_dim: int = 64,
        depths: Sequence[int] = (2, 2, 2),
        num_heads: Sequence[int] = (4, 4, 8),
        window_size: int | Sequence[int] = 4,
        mlp_ratio: float = 4.0,
        reg_head_channels: int = 16,
        drop_path_rate: float = 0.0,
        cross_stitch_init: Sequence[float] = (0.9, 0.1),
        fusion: str = "mean",
        pad_input: bool = True,
        size_multiple: int = 32,
        pad_mode: str = "replicate",
        use_flash_attention: bool = False,
        in_channels: int = 4,
        integration_steps: int = 0,
        affine_head: bool = False,
        affine_passes: int = 1,
        dense_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        depths, num_heads = [int(d) for d in depths], [int(h) for h in num_heads]
        window = [int(window_size)] * 3 if isinstance(window_size, int) else [int(w) for w in window_size]
        patch_size = 4  # the decoder's two convolutional skips bring /4 back to full resolution
        if num_streams not in (1, 2):
            raise ValueError(f"num_streams must be 1 or 2, got {num_streams}")
        if cross_stitch and num_streams != 2:
            raise ValueError("cross_stitch needs num_streams=2 (a CT and a SPECT stream)")
        if len(depths) < 1 or len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} must be non-empty, of equal length")
        if len(window) != 3 or min(window) < 1:
            raise ValueError(f"window_size must be a positive int or 3 of them, got {window_size}")
        if embed_dim % 2 or any(embed_dim * 2**i % h for i, h in enumerate(num_heads)):
            raise ValueError(f"embed_dim {embed_dim} must be even, its stage widths divisible by the heads")
        if fusion not in ("mean", "concat"):
            raise ValueError(f"fusion must be 'mean' or 'concat', got {fusion!r}")
        if pad_mode not in ("replicate", "constant"):
            raise ValueError(f"pad_mode must be 'replicate' or 'constant', got {pad_mode!r}")
        min_multiple = patch_size * 2 ** (len(depths) - 1)
        if size_multiple < 1 or size_multiple % min_multiple:
            raise ValueError(f"size_multiple must be a multiple of {min_multiple}, got {size_multiple}")
        if in_channels < 2 * num_streams:
            raise ValueError(f"in_channels must be >= {2 * num_streams} for {num_streams} stream(s)")
        if len(cross_stitch_init) != 2:
            raise ValueError("cross_stitch_init must be (diagonal, off_diagonal)")
        if not 0 <= int(integration_steps) <= MAX_INTEGRATION_STEPS:
            raise ValueError(f"integration_steps must be in [0, {MAX_INTEGRATION_STEPS}], got {integration_steps}")
        if affine_head and int(integration_steps):
            raise ValueError("affine_head adds a displacement: use it with integration_steps=0")

        self.num_streams = num_streams
        self.in_channels = in_channels
        self.pad_input = pad_input
        self.size_multiple = size_multiple
        self.min_multiple = min_multiple
        self.pad_mode = pad_mode
        self.fusion_concat = fusion == "concat"
        diag, off = float(cross_stitch_init[0]), float(cross_stitch_init[1])

        def unit() -> CrossStitch | None:
            return CrossStitch(diag, off) if cross_stitch else None

        # encoder: patch embedding + Swin stages (MONAI blocks), one set per stream
        self.patch_embed = nn.ModuleList(
            [PatchEmbed(patch_size, 2, embed_dim, nn.LayerNorm, spatial_dims=3) for _ in range(num_streams)]
        )
        dpr = [float(v) for v in torch.linspace(0, drop_path_rate, sum(depths))]
        dims = [embed_dim * 2**i for i in range(len(depths))]
        levels = []
        for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            last = i == len(depths) - 1
            layers = [
                BasicLayer(
                    dim=dims[i],
                    depth=depth,
                    num_heads=heads,
                    window_size=tuple(window),
                    drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    mlp_ratio=mlp_ratio,
                    qkv_bias=False,
                    norm_layer=nn.LayerNorm,
                    downsample=None if last else PatchMerging,
                    use_flash_attention=use_flash_attention,
                )
                for _ in range(num_streams)
            ]
            levels.append(_EncoderLevel(layers, dims[i], unit(), nn.LayerNorm))
        self.encoder = nn.ModuleList(levels)

        # convolutional skips from the input at 1/2 and full resolution
        self.avg_pool = nn.AvgPool3d(3, stride=2, padding=1)
        self.c1 = nn.ModuleList([_conv_in_lrelu(2, embed_dim // 2) for _ in range(num_streams)])
        self.c2 = nn.ModuleList([_conv_in_lrelu(2, reg_head_channels) for _ in range(num_streams)])

        # decoder: (in, skip, out) per level, from the deepest stage up to full resolution
        plan = [(dims[i + 1], dims[i], dims[i]) for i in reversed(range(len(depths) - 1))]
        plan.append((embed_dim, embed_dim // 2, embed_dim // 2))  # skip c1 (1/2 resolution)
        plan.append((embed_dim // 2, reg_head_channels, reg_head_channels))  # skip c2 (full resolution)
        self.decoder = nn.ModuleList(
            [_DecoderLevel([_DecoderBlock(i, s, o) for _ in range(num_streams)], unit()) for i, s, o in plan]
        )

        # Swin parts: TransMorph's initialisation (Linear ~ trunc normal 0.02, zero bias; LayerNorm 1, 0)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

        n_heads = 1 if self.fusion_concat else num_streams
        head_in = reg_head_channels * (num_streams if self.fusion_concat else 1)
        self.heads = nn.ModuleList([_registration_head(head_in) for _ in range(n_heads)])
        self.affine_head = nn.ModuleList([AffineHead(in_channels, passes=affine_passes)] if affine_head else [])
        self.dense_smoothing = FieldSmoothing(dense_smoothing)
        self.register_buffer("integration_steps", torch.tensor(int(integration_steps), dtype=torch.int64))
        #: number of cross-stitch units (0 without): len(depths) + len(depths) + 1 with them
        self.num_cross_stitch_units: int = sum(isinstance(m, CrossStitch) for m in self.modules())

    def forward(self, x: Tensor) -> Tensor:
        """(B, 4, D, H, W) fixed CT, moving CT, fixed SPECT, moving SPECT -> (B, 3, D, H, W) voxel field."""
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                "CoRXNet expects (B, C, D, H, W) with C = in_channels: fixed CT, moving CT, fixed SPECT, moving SPECT"
            )
        shape = [x.shape[2], x.shape[3], x.shape[4]]
        aligned = x
        affine_params: list[Tensor] = []
        affine_fields: list[Tensor] = []
        for head in self.affine_head:
            params = head.parameters_of(x)
            affine_params.append(params)
            affine_fields.append(affine_displacement(params, shape))
            aligned = moving_warped(x, affine_fields[-1])
        field = self.dense_smoothing(self._dense_field(aligned))
        for i in range(len(affine_params)):
            # the dense field registers the affinely aligned pair: x -> y = x + d(x) -> y + a(y), a(y) = a(x) + A d
            dense = field.float()
            linear = affine_linear_part(affine_params[i], shape)
            field = affine_fields[i] + dense + torch.einsum("bij,bjdhw->bidhw", linear, dense)
        return field

    def _dense_field(self, x: Tensor) -> Tensor:
        """The Swin encoder-decoder's field for the (possibly affinely aligned) input."""
        shape = [x.shape[2], x.shape[3], x.shape[4]]
        if self.pad_input:
            x, shape = pad_to_multiple(x, self.size_multiple, self.pad_mode)
        elif shape[0] % self.min_multiple or shape[1] % self.min_multiple or shape[2] % self.min_multiple:
            raise ValueError("with pad_input=False every spatial size must be a multiple of min_multiple")

        inputs: list[Tensor] = []
        for s in range(self.num_streams):
            inputs.append(x[:, 2 * s : 2 * s + 2])

        feats: list[Tensor] = []
        for s, embed in enumerate(self.patch_embed):
            feats.append(embed(inputs[s]).permute(0, 2, 3, 4, 1).contiguous())
        enc_skips: list[list[Tensor]] = []
        for level in self.encoder:
            skips, feats = level(feats)
            enc_skips.append(skips)

        half: list[Tensor] = []
        for s, c1 in enumerate(self.c1):
            half.append(c1(self.avg_pool(inputs[s])))
        full: list[Tensor] = []
        for s, c2 in enumerate(self.c2):
            full.append(c2(inputs[s]))
        dec_skips: list[list[Tensor]] = []
        for i in range(len(enc_skips) - 2, -1, -1):
            dec_skips.append(enc_skips[i])
        dec_skips.append(half)
        dec_skips.append(full)

        ys = enc_skips[-1]
        for j, level in enumerate(self.decoder):
            ys = level(ys, dec_skips[j])

        fields: list[Tensor] = []
        if self.fusion_concat:
            for head in self.heads:
                fields.append(head(torch.cat(ys, dim=1)))
        else:
            for s, head in enumerate(self.heads):
                fields.append(head(ys[s]))
        field = fields[0]
        for f in fields[1:]:
            field = field + f
        if len(fields) > 1:
            field = field * (1.0 / len(fields))
        if self.pad_input:
            field = crop_to_shape(field, shape)
        return field


def build_network(variant: str = "corx", **overrides: Any) -> CoRXNet:
    """Build one of the paper's networks ("corx", "corx_nocs", "transmorph"); ``overrides`` go to CoRXNet."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown network variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return CoRXNet(**{**VARIANTS[variant], **overrides})


def to_channels_last(model: nn.Module) -> nn.Module:
    """Put ``model``'s 5-D weights in channels-last (NDHWC) memory, in place; feed it channels-last inputs too.

    Same results; on CPU the oneDNN convolutions, the group norms and the trilinear up-sampling then run without
    layout copies (128^3 bf16 forward on one core under load: 13.0 s -> 10.1 s).
    """
    return model.to(memory_format=torch.channels_last_3d)
