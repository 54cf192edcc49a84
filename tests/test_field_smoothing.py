"""CoRX-NET's dense-field smoothing: scipy's Gaussian filter, applied to the dense field only, carried by the
weights (older files load unsmoothed), scripted and exported alike, kept by warm starts and set by publishing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from corx_bundle.scripts.network import FieldSmoothing, build_network

SIZE = (64, 64, 64)  # the affine head needs 64 voxels per axis
KEY = "dense_smoothing.smoothing_sigma"


def _images(seed: int = 0) -> torch.Tensor:
    return torch.rand((1, 4, *SIZE), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sigma", [0.7, 2.0])
def test_smoothing_is_scipys_gaussian_filter_with_nearest_borders(sigma: float) -> None:
    field = torch.randn((2, 3, 13, 17, 21), generator=torch.Generator().manual_seed(1))
    smoothed = FieldSmoothing(sigma)(field).numpy()
    expected = np.stack([[ndimage.gaussian_filter(c.double().numpy(), sigma, mode="nearest", truncate=3.0)
                          for c in batch] for batch in field])
    np.testing.assert_allclose(smoothed, expected, rtol=0, atol=1e-5)
    assert float(np.abs(smoothed - field.numpy()).max()) > 0.1  # it did smooth


def test_zero_width_is_the_identity_and_bad_widths_are_refused() -> None:
    field = torch.randn((1, 3, 8, 8, 8))
    assert FieldSmoothing(0.0)(field) is field
    for bad in (-0.5, 8.5):
        with pytest.raises(ValueError, match="sigma"):
            FieldSmoothing(bad)


def test_network_smooths_the_dense_field_before_composing_it_with_the_affine() -> None:
    """With the head's affine at zero the field is the smoothed dense field; with a non-zero affine the smoothed
    dense field is composed with it, u = a + (I + A) S(d)."""
    from corx_bundle.scripts.network import affine_displacement, affine_linear_part

    torch.manual_seed(0)
    plain = build_network("corx", embed_dim=12, affine_head=True).eval()
    smoothed = build_network("corx", embed_dim=12, affine_head=True, dense_smoothing=1.5).eval()
    smoothed.load_state_dict({**plain.state_dict(), KEY: torch.tensor(1.5)})
    with torch.no_grad():
        for net in (plain, smoothed):  # a dense field large enough to see
            net.heads[0].weight.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(2))
            net.heads[1].weight.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(3))
        x = _images()
        dense = plain(x)
        expected = FieldSmoothing(1.5)(dense)
        torch.testing.assert_close(smoothed(x), expected, rtol=0, atol=1e-5)
        assert float((expected - dense).abs().max()) > 1e-3

        bias = torch.tensor([0.5, -0.2, 0.0, 0.1, 0.3, 0.0, 0.0, 0.0, -0.4, 1.5, -0.5, 2.0])
        smoothed.affine_head[0].mlp[2].bias.copy_(bias)
        params = smoothed.affine_head[0].parameters_of(x)
        shape = list(SIZE)
        from corx_bundle.scripts.network import moving_warped

        aligned_dense = FieldSmoothing(1.5)(smoothed._dense_field(moving_warped(x, affine_displacement(params, shape))))
        composed = (affine_displacement(params, shape) + aligned_dense
                    + torch.einsum("bij,bjdhw->bidhw", affine_linear_part(params, shape), aligned_dense))
        torch.testing.assert_close(smoothed(x), composed, rtol=0, atol=1e-5)


def test_weights_carry_their_width_older_files_load_unsmoothed(tmp_path: Path) -> None:
    """The width is in the state dict; a network built with the default runs a file's stored width (eager, the
    checkpoint loader, TorchScript); weights saved before the option load strictly as unsmoothed; a warm start keeps
    the run's width; stored_dense_smoothing reads it."""
    from corx_bundle.scripts.checkpoints import stored_dense_smoothing, warm_start
    from corx_bundle.scripts.export import load_network
    from corx_bundle.scripts.scripted import script_network

    torch.manual_seed(0)
    wide = build_network("corx", embed_dim=12, dense_smoothing=2.0)
    state = wide.state_dict()
    assert float(state[KEY]) == 2.0
    default = build_network("corx", embed_dim=12)
    default.load_state_dict(state)
    assert float(default.dense_smoothing.smoothing_sigma) == 2.0
    older = {k: v for k, v in state.items() if k != KEY}
    restored = build_network("corx", embed_dim=12, dense_smoothing=3.0)
    restored.load_state_dict(older)  # strict
    assert float(restored.dense_smoothing.smoothing_sigma) == 0.0

    wide_file, older_file = tmp_path / "wide.pt", tmp_path / "older.pt"
    torch.save({"model": state}, wide_file)
    torch.save(older, older_file)
    assert stored_dense_smoothing(wide_file) == 2.0
    assert stored_dense_smoothing(older_file) == stored_dense_smoothing(tmp_path / "absent.pt") == 0.0
    loaded = load_network(wide_file, embed_dim=12)
    x = torch.rand((1, 4, 32, 32, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), wide.eval()(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(script_network(loaded)(x), loaded(x), rtol=0, atol=1e-5)

    run = build_network("corx", embed_dim=12, dense_smoothing=0.5)
    warm_start(run, wide_file)
    assert float(run.dense_smoothing.smoothing_sigma) == 0.5


def test_publishing_stores_the_chosen_width(tmp_path: Path) -> None:
    from corx_bundle.scripts.publish_weights import main

    torch.manual_seed(0)
    src = tmp_path / "best.pt"
    torch.save({"model": build_network("corx", embed_dim=12).state_dict()}, src)
    main([str(src), str(tmp_path / "shipped.pt"), "--dense-smoothing", "2"])
    assert float(torch.load(tmp_path / "shipped.pt", weights_only=True)[KEY]) == 2.0
    with pytest.raises(ValueError, match="dense smoothing"):
        main([str(src), str(tmp_path / "bad.pt"), "--dense-smoothing", "9"])
    assert not (tmp_path / "bad.pt").exists()


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_onnx_export_keeps_the_smoothing(tmp_path: Path) -> None:
    """The traced graph smooths as the eager network does (ONNX Runtime at batch 2, ``export_onnx``'s check)."""
    import onnxruntime as ort

    from corx_bundle.scripts.export import INPUT_NAME, export_onnx

    torch.manual_seed(0)
    net = build_network("corx", embed_dim=12, dense_smoothing=1.5).eval()
    with torch.no_grad():
        for head in net.heads:
            head.weight.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(2))
    path = tmp_path / "smoothed.onnx"
    assert export_onnx(net, path, (32, 32, 32)) <= 1e-4
    x = torch.rand((1, 4, 32, 32, 32), generator=torch.Generator().manual_seed(5))
    (out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x.numpy()})
    with torch.no_grad():
        net.dense_smoothing.smoothing_sigma.zero_()
        unsmoothed = net(x).numpy()
    assert float(np.abs(out - unsmoothed).max()) > 1e-3  # the exported graph does smooth
