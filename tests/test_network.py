"""CoRX-NET / TransMorph network: parameter counts of the paper, shapes, near-identity init, cross-stitch
units, TorchScript/ONNX export and equivalence of the Swin stages with MONAI's ``BasicLayer``."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from corx_bundle.scripts.network import (
    PAPER_PARAMETERS,
    CoRXNet,
    CrossStitch,
    _PatchMerging,
    _SwinStage,
    build_network,
    count_parameters,
    crop_to_shape,
    pad_to_multiple,
)

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
# counts this implementation achieves (the paper's Table 2 has 9,557,138 / 9,557,110 / 20,800,563)
EXPECTED = {"corx": 9_556_674, "corx_nocs": 9_556_646, "transmorph": 20_800_563}


def _images(size: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, 4, *size), generator=g)


@pytest.fixture(scope="module")
def corx() -> CoRXNet:
    torch.manual_seed(0)
    return build_network("corx").eval()


@pytest.fixture(scope="module")
def corx_out64(corx: CoRXNet) -> tuple[torch.Tensor, torch.Tensor]:
    x = _images((64, 64, 64))
    with torch.no_grad():
        return x, corx(x)


@pytest.mark.parametrize("variant", ["corx", "corx_nocs", "transmorph"])
def test_parameter_counts(variant: str) -> None:
    n = count_parameters(build_network(variant))
    assert n == EXPECTED[variant]
    assert abs(n - PAPER_PARAMETERS[variant]) / PAPER_PARAMETERS[variant] < 1e-3


def test_cross_stitch_adds_exactly_28_parameters() -> None:
    with_cs, without = build_network("corx"), build_network("corx_nocs")
    assert count_parameters(with_cs) - count_parameters(without) == 28
    assert PAPER_PARAMETERS["corx"] - PAPER_PARAMETERS["corx_nocs"] == 28


def test_cross_stitch_units_present_or_absent() -> None:
    with_cs = build_network("corx")
    units = [m for m in with_cs.modules() if isinstance(m, CrossStitch)]
    assert len(units) == with_cs.num_cross_stitch_units == 7  # 3 after Swin stages + 4 after double convs
    names = [n for n, _ in with_cs.named_parameters() if "cross_stitch" in n]
    assert len(names) == 7 and sum(with_cs.get_parameter(n).numel() for n in names) == 28
    for u in units:  # near-identity initialisation
        assert torch.equal(u.alpha.detach(), torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    for variant in ("corx_nocs", "transmorph"):
        net = build_network(variant)
        assert net.num_cross_stitch_units == 0
        assert not any("cross_stitch" in n for n, _ in net.named_parameters())


def test_concat_fusion_option() -> None:
    net = build_network("corx", fusion="concat").eval()
    assert count_parameters(net) == EXPECTED["corx"] - 3  # one 32->3 head instead of two 16->3 heads
    with torch.no_grad():
        assert net(_images((32, 32, 32))).shape == (1, 3, 32, 32, 32)


def test_forward_shape_64_and_near_identity(corx_out64: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, u = corx_out64
    assert u.shape == (1, 3, 64, 64, 64) and u.dtype == torch.float32
    assert torch.isfinite(u).all()
    assert u.abs().max() < 1e-2  # voxels: head weights ~ N(0, 1e-5)
    assert u.abs().max() > 0  # but not a constant zero


def test_forward_shape_96(corx: CoRXNet) -> None:
    with torch.no_grad():
        u = corx(_images((96, 96, 96)))
    assert u.shape == (1, 3, 96, 96, 96)
    assert u.abs().max() < 1e-2


def test_forward_pads_sizes_not_multiple_of_32(corx: CoRXNet) -> None:
    x = _images((40, 36, 50))
    with torch.no_grad():
        u = corx(x)
        # same as padding outside with the public helpers (replicate) and cropping back
        padded, shape = pad_to_multiple(x, 32, "replicate")
        assert padded.shape[2:] == (64, 64, 64) and shape == [40, 36, 50]
        corx.pad_input = False
        try:
            ref = crop_to_shape(corx(padded), shape)
        finally:
            corx.pad_input = True
    assert u.shape == (1, 3, 40, 36, 50)
    torch.testing.assert_close(u, ref, rtol=0, atol=0)


def test_pad_helpers() -> None:
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(1, 2, 3, 5, 7)
    padded, shape = pad_to_multiple(x, 4, "constant")
    assert padded.shape == (1, 2, 4, 8, 8) and shape == [3, 5, 7]
    assert padded[:, :, 3:].abs().sum() == 0
    assert torch.equal(crop_to_shape(padded, shape), x)
    same, _ = pad_to_multiple(padded, 4)
    assert same is padded


def test_transmorph_shape_and_ignores_spect() -> None:
    torch.manual_seed(0)
    net = build_network("transmorph").eval()
    x = _images((64, 64, 64))
    y = x.clone()
    y[:, 2:] = torch.rand_like(y[:, 2:]) * 100.0  # different SPECT channels
    with torch.no_grad():
        a, b = net(x), net(y)
    assert a.shape == (1, 3, 64, 64, 64)
    assert torch.equal(a, b)
    assert a.abs().max() < 1e-2


def test_corx_uses_spect() -> None:
    torch.manual_seed(0)
    net = build_network("corx").eval()
    x = _images((32, 32, 32))
    y = x.clone()
    y[:, 2:] = torch.rand_like(y[:, 2:])
    with torch.no_grad():
        assert not torch.equal(net(x), net(y))


def test_torchscript_script_matches_eager(corx: CoRXNet, corx_out64: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, u = corx_out64
    scripted = torch.jit.script(corx)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), u, rtol=0, atol=1e-5)
        # scripting keeps sizes dynamic, padding included
        small = _images((40, 32, 48), seed=1)
        torch.testing.assert_close(scripted(small), corx(small), rtol=0, atol=1e-5)


def test_torchscript_trace_matches_eager() -> None:
    torch.manual_seed(0)
    net = build_network("corx").eval()
    x = _images((32, 32, 32))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings: shapes are frozen, as documented
        traced = torch.jit.trace(net, x)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), net(x), rtol=0, atol=1e-5)


@pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx/onnxruntime not installed",
)
def test_onnx_export_matches_eager(tmp_path: Path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    net = build_network("corx").eval()
    x = _images((32, 32, 32))
    path = tmp_path / "corx.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (x,), str(path), opset_version=17, dynamo=False, input_names=["image"], output_names=["pred"]
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = net(x)
    torch.testing.assert_close(torch.from_numpy(out), ref, rtol=0, atol=1e-5)


def test_gradient_reaches_cross_stitch() -> None:
    torch.manual_seed(0)
    net = build_network("corx").train()
    u = net(_images((32, 32, 32)))
    (u * torch.randn_like(u)).sum().backward()
    units = [m for m in net.modules() if isinstance(m, CrossStitch)]
    assert len(units) == 7
    for unit in units:
        assert unit.alpha.grad is not None
        assert torch.isfinite(unit.alpha.grad).all() and unit.alpha.grad.abs().min() > 0


@pytest.mark.parametrize("size", [(8, 8, 8), (6, 6, 6), (2, 2, 2), (12, 4, 6), (5, 7, 9)])
def test_swin_stage_matches_monai_basic_layer(size: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """The scriptable stage + merge reproduce MONAI's BasicLayer.forward (shifted windows, shrunk windows,
    window padding, odd-size merge)."""
    import monai.networks.nets.swin_unetr as swin

    # BasicLayer.forward only uses einops for these two permutations; einops is optional in MONAI
    perms = {"b c d h w -> b d h w c": (0, 2, 3, 4, 1), "b d h w c -> b c d h w": (0, 4, 1, 2, 3)}
    monkeypatch.setattr(swin, "rearrange", lambda t, pattern: t.permute(*perms[pattern]))
    torch.manual_seed(0)
    layer = swin.BasicLayer(32, 2, 4, (4, 4, 4), [0.0, 0.0], qkv_bias=False, downsample=swin.PatchMerging)
    layer.eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
        x = torch.randn(2, 32, *size)
        ref = layer(x)
        out = _PatchMerging(layer.downsample)(_SwinStage(layer)(x.permute(0, 2, 3, 4, 1))).permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_bundle_config_instantiates_class(monkeypatch: pytest.MonkeyPatch) -> None:
    from monai.bundle import ConfigParser

    monkeypatch.syspath_prepend(str(BUNDLE))  # MONAI runs bundle/scripts as the top-level package `scripts`
    parser = ConfigParser(
        {
            "net": {
                "_target_": "scripts.network.CoRXNet",
                "num_streams": 2,
                "cross_stitch": False,
                "depths": [2, 2, 2],
                "num_heads": [4, 4, 8],
            },
            "factory": {"_target_": "scripts.network.build_network", "variant": "transmorph"},
        }
    )
    assert count_parameters(parser.get_parsed_content("net")) == EXPECTED["corx_nocs"]
    assert count_parameters(parser.get_parsed_content("factory")) == EXPECTED["transmorph"]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="variant"):
        build_network("voxelmorph")
    with pytest.raises(ValueError, match="cross_stitch"):
        CoRXNet(num_streams=1, cross_stitch=True)
    with pytest.raises(ValueError, match="size_multiple"):
        CoRXNet(size_multiple=24)
    with pytest.raises(ValueError, match="fusion"):
        CoRXNet(fusion="max")
    net = build_network("corx_nocs").eval()
    with pytest.raises(ValueError, match="in_channels"):
        net(torch.zeros(1, 2, 32, 32, 32))
    net.pad_input = False
    with pytest.raises(ValueError, match="multiple"):
        net(torch.zeros(1, 4, 32, 32, 40))


def test_group_norm_is_the_instance_norm_of_transmorph() -> None:
    from corx_bundle.scripts.network import _conv_in_lrelu

    block = _conv_in_lrelu(4, 6)
    norm = block[1]
    x = torch.randn(2, 6, 9, 10, 11) * 3 + 1
    assert torch.allclose(norm(x), torch.nn.InstanceNorm3d(6)(x), atol=1e-5)
    assert sum(p.numel() for p in norm.parameters()) == 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_channels_last_backend_gives_the_same_field(precision: str) -> None:
    from corx.registration.backends import TorchBackend, bf16_refusal

    if precision == "bf16" and (refusal := bf16_refusal("cpu")):
        pytest.skip(refusal)
    pair = torch.rand(4, 32, 32, 64, generator=torch.Generator().manual_seed(3)).numpy()
    fields = [TorchBackend(random_init=True, embed_dim=12, precision=precision, channels_last=cl).infer(pair)
              for cl in (False, True)]
    assert fields[1].flags["C_CONTIGUOUS"] and fields[1].shape == (3, 32, 32, 64)
    scale = float(np.abs(fields[0]).max())
    tol = 1e-5 * scale if precision == "fp32" else 2e-2 * scale
    assert float(np.abs(fields[1] - fields[0]).max()) <= tol


def test_bf16_is_refused_where_the_cpu_would_emulate_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """An AVX2-only CPU emulates bf16 (~130x slower than fp32): asking for it is an error naming fp32."""
    import corx.registration.backends as backends
    import corx_bundle.scripts.inferers as inferers
    from corx.errors import CorxError

    monkeypatch.setattr(inferers, "cpu_runs_bf16", lambda: False)
    with pytest.raises(CorxError, match=r"bf16 refused: this CPU \(\w+\) has no AVX-512/AMX .* use precision fp32"):
        backends.TorchBackend(random_init=True, embed_dim=12, precision="bf16")
    assert backends.bf16_refusal("cuda") is None  # GPUs run bf16 natively
    backends.TorchBackend(random_init=True, embed_dim=12, precision="fp32")  # fp32 is never refused
