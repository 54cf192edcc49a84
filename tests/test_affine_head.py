"""CoRX-NET's optional affine head: silent at initialisation, the stated formula, exportable, found in checkpoints,
it learns a pure translation under the paper's loss, warm starts add it, configs build it when the weights hold it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from corx_bundle.scripts.export import load_network, onnx_opset
from corx_bundle.scripts.losses import HybridRegistrationLoss
from corx_bundle.scripts.network import AFFINE_OUTPUT_SCALE, build_network
from corx_bundle.scripts.scripted import script_network

SIZE = (64, 64, 64)  # the affine head needs >= 2 voxels after its pooling and four stride-2 stages


def _images(seed: int = 0) -> torch.Tensor:
    return torch.rand((1, 4, *SIZE), generator=torch.Generator().manual_seed(seed))


def _with_head(bias: list[float], seed: int = 0, passes: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_network("corx", affine_head=True, affine_passes=passes).eval()
    with torch.no_grad():
        net.affine_head[0].mlp[2].bias.copy_(torch.tensor(bias))
        if passes > 1:  # so that a further pass depends on the images it sees
            net.affine_head[0].mlp[2].weight.normal_(0.0, 0.02)
    return net


BIAS = [3.0, -2.0, 0.0, 1.0, 0.5, 0.0, 0.0, 0.0, -4.0, 1.5, -0.5, 2.0]


def test_new_head_leaves_the_field_unchanged() -> None:
    x = _images()
    torch.manual_seed(0)
    plain = build_network("corx").eval()
    torch.manual_seed(0)
    headed = build_network("corx", affine_head=True).eval()
    with torch.no_grad():  # the zero affine's warp resamples at the voxel centres: equal up to rounding
        torch.testing.assert_close(headed(x), plain(x), rtol=0, atol=1e-6)


def test_head_adds_the_stated_affine_displacement() -> None:
    x = _images()
    torch.manual_seed(0)
    plain = build_network("corx").eval()
    net = _with_head(BIAS)
    with torch.no_grad():
        added = (net(x) - plain(x))[0].numpy()
    m = np.array(BIAS[:9]).reshape(3, 3) * AFFINE_OUTPUT_SCALE
    t = np.array(BIAS[9:]) * AFFINE_OUTPUT_SCALE
    half = (np.array(SIZE) - 1) / 2
    grid = np.stack(np.meshgrid(*[(np.arange(n) - (n - 1) / 2) / ((n - 1) / 2) for n in SIZE], indexing="ij"))
    expected = (np.einsum("ij,j...->i...", m, grid) + t[:, None, None, None]) * half[:, None, None, None]
    # up to the untrained dense field (~1e-4 voxels), which now registers the affinely aligned pair
    np.testing.assert_allclose(added, expected, atol=2e-3)
    assert float(np.abs(expected).max()) > 5.0


def test_head_and_dense_field_compose_exactly() -> None:
    """The dense field d registers the affinely aligned pair, so x goes to y = x + d, then to y + a(y): with a
    constant d (dense output heads set to a bias) the field must be d + a(x + d), the affine evaluated at y."""
    net, x = _with_head(BIAS), _images()
    shift = torch.tensor([1.5, -2.0, 0.75])
    with torch.no_grad():
        for head in net.heads:
            head.weight.zero_()
            head.bias.copy_(shift)
        field = net(x)[0].numpy()
    m = np.array(BIAS[:9]).reshape(3, 3) * AFFINE_OUTPUT_SCALE
    t = np.array(BIAS[9:]) * AFFINE_OUTPUT_SCALE
    half = (np.array(SIZE) - 1) / 2
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in SIZE], indexing="ij"))
    y = grid + shift.numpy()[:, None, None, None]
    n_y = (y - half[:, None, None, None]) / half[:, None, None, None]
    affine_at_y = (np.einsum("ij,j...->i...", m, n_y) + t[:, None, None, None]) * half[:, None, None, None]
    np.testing.assert_allclose(field, shift.numpy()[:, None, None, None] + affine_at_y, atol=1e-4)


def test_network_warp_samples_as_monai_warp_does() -> None:
    """The network's scriptable warp of the moving images and MONAI's Warp (the loss's) give the same image."""
    from monai.networks.blocks import Warp

    from corx_bundle.scripts.network import warp_voxels

    gen = torch.Generator().manual_seed(4)
    image = torch.rand((2, 2, 16, 20, 24), generator=gen)
    displacement = torch.randn((2, 3, 16, 20, 24), generator=gen) * 3.0
    torch.testing.assert_close(warp_voxels(image, displacement), Warp("bilinear", "zeros")(image, displacement),
                               rtol=0, atol=1e-5)


def test_dense_part_sees_the_affinely_aligned_moving_images() -> None:
    """A pure translation by the head: the encoder-decoder's input holds the moving images moved by it (fixed ones
    untouched), i.e. moving(x + t) for an integer t, zero where x + t leaves the grid."""
    bias = [0.0] * 9 + [2.0 / AFFINE_OUTPUT_SCALE / ((SIZE[0] - 1) / 2), 0.0, 0.0]  # +2 voxels along axis 0
    net, x = _with_head(bias), _images()
    seen: list[torch.Tensor] = []
    net.patch_embed[0].register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    with torch.no_grad():
        net(x)
    ct_pair = seen[0][0]
    torch.testing.assert_close(ct_pair[0], x[0, 0], rtol=0, atol=0)
    torch.testing.assert_close(ct_pair[1, :-2], x[0, 1, 2:], rtol=0, atol=1e-5)
    assert float(ct_pair[1, -2:].abs().max()) == 0.0


def test_head_refuses_a_velocity_output() -> None:
    with pytest.raises(ValueError, match="affine_head"):
        build_network("corx", affine_head=True, integration_steps=7)


def test_scripted_head_matches_eager() -> None:
    net, x = _with_head(BIAS), _images()
    with torch.no_grad():
        torch.testing.assert_close(script_network(net)(x), net(x), rtol=0, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_onnx_head_matches_eager(tmp_path: Path) -> None:
    """The project's export (``export_onnx``: opset 20 for the 3-D GridSample of the aligned pair, checked in ONNX
    Runtime at batch 2) keeps the headed network, two passes included; opset 17 cannot express it."""
    import onnx

    from corx_bundle.scripts.export import OPSET, export_onnx

    net = _with_head(BIAS, passes=2)
    path = tmp_path / "affine.onnx"
    diff = export_onnx(net, path, SIZE)
    assert diff <= 1e-4 and path.is_file()
    assert onnx_opset(net) == 20 and onnx_opset(build_network("corx", embed_dim=12)) == OPSET == 17
    model = onnx.load(str(path))
    assert any(node.op_type == "GridSample" for node in model.graph.node)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 20


def test_checkpoint_with_head_loads_with_it(tmp_path: Path) -> None:
    net, x = _with_head(BIAS, passes=2), _images()
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    loaded = load_network(path)
    assert len(loaded.affine_head) == 1 and int(loaded.affine_head[0].passes) == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=1e-6)
    plain = tmp_path / "plain.pt"
    torch.save(build_network("corx").state_dict(), plain)
    assert len(load_network(plain).affine_head) == 0


def test_head_learns_a_translation_under_the_paper_loss() -> None:
    """Only the head's output layer is trained, alone, on a smooth image pair shifted by (2, -1, 0) voxels: the
    field's mean must approach that shift (the pull-back convention: warped(x) = moving(x + u))."""
    rng = np.random.default_rng(0)
    fixed = ndimage.gaussian_filter(rng.random(SIZE), 2.5)
    fixed = (fixed - fixed.min()) / np.ptp(fixed)
    shift = np.array([2.0, -1.0, 0.0])
    moving = ndimage.shift(fixed, shift, order=3, mode="nearest")  # moving(x) = fixed(x - shift)
    images = torch.from_numpy(np.stack([fixed, moving, fixed, moving])[None].astype(np.float32))
    from corx_bundle.scripts.network import AffineHead

    torch.manual_seed(0)
    net = AffineHead(4).train()  # as in stage 1 (configs/affine_stage.json): the head is a registration network
    params = list(net.mlp[2].parameters())
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    loss_fn = HybridRegistrationLoss()
    optimiser = torch.optim.Adam(params, lr=0.02)
    for _ in range(40):
        optimiser.zero_grad()
        loss = loss_fn(net(images), images)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        field = net.eval()(images)[0, :, 8:-8, 8:-8, 8:-8].mean(dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(field, shift, atol=0.3)


def test_trainable_parameters_freezes_all_but_the_head() -> None:
    from corx_bundle.scripts.network import trainable_parameters

    net = build_network("corx", embed_dim=12, affine_head=True)
    chosen = trainable_parameters(net, "affine_head")
    assert {id(p) for p in chosen} == {id(p) for p in net.affine_head.parameters()}
    assert all(not p.requires_grad for n, p in net.named_parameters() if not n.startswith("affine_head."))
    assert len(trainable_parameters(net, None)) == len(list(net.parameters()))
    assert all(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match="no submodule 'decoderr'"):
        trainable_parameters(net, "decoderr")
    with pytest.raises(ValueError, match="none left to train"):
        trainable_parameters(build_network("corx", embed_dim=12), "affine_head")


def test_trainable_parameters_freezes_the_head_for_the_dense_stage() -> None:
    from corx_bundle.scripts.network import trainable_parameters

    net = build_network("corx", embed_dim=12, affine_head=True)
    chosen = trainable_parameters(net, frozen=["affine_head"])
    head = {id(p) for p in net.affine_head.parameters()}
    assert head and not head & {id(p) for p in chosen}
    assert len(chosen) == len(list(net.parameters())) - len(head)
    assert all(p.requires_grad != (id(p) in head) for p in net.parameters())
    with pytest.raises(ValueError, match="no submodule 'affine_heads'"):
        trainable_parameters(net, frozen=["affine_heads"])


def test_warm_start_adds_a_new_head_and_refuses_other_weights(tmp_path: Path) -> None:
    from corx_bundle.scripts.checkpoints import has_submodule, warm_start

    torch.manual_seed(0)
    plain = build_network("corx", embed_dim=12)
    path = tmp_path / "plain.pt"
    torch.save({"model": plain.state_dict()}, path)
    headed = build_network("corx", embed_dim=12, affine_head=True)
    new = warm_start(headed, path)
    assert new and all(k.startswith("affine_head.") for k in new)
    x = torch.rand((1, 4, *SIZE), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the new head is silent: up to the rounding of the zero affine's resampling
        torch.testing.assert_close(headed.eval()(x), plain.eval()(x), rtol=0, atol=1e-6)
    assert not has_submodule(path, "affine_head") and not has_submodule(tmp_path / "missing.pt", "affine_head")
    headed_path = tmp_path / "headed.pt"
    torch.save(headed.state_dict(), headed_path)
    assert has_submodule(headed_path, "affine_head")
    with pytest.raises(ValueError, match="does not match"):
        warm_start(build_network("corx_nocs", embed_dim=12), path)  # the cross-stitch weights are unexpected there


def test_bundle_configs_build_the_network_the_weights_need(tmp_path: Path) -> None:
    from monai.bundle import ConfigParser

    bundle = Path(__file__).resolve().parents[1] / "bundle"
    headed = tmp_path / "model.pt"
    torch.save(build_network("corx", embed_dim=12, affine_head=True).state_dict(), headed)
    for names in (["inference.json"], ["train.json", "evaluate.json"]):
        for weights, expected in ((headed, 1), (tmp_path / "absent.pt", 0)):
            parser = ConfigParser()
            parser.read_config([str(bundle / "configs" / n) for n in names])
            parser["bundle_root"] = str(bundle)
            parser["model_file"] = str(weights)
            parser["network_def#embed_dim"] = 12
            assert len(parser.get_parsed_content("network_def").affine_head) == expected, names


def test_candidate_weights_are_a_named_method(tmp_path: Path) -> None:
    from corx.errors import CorxError
    from corx.evaluation.methods import make_methods
    from corx.evaluation.metrics import parameter_count

    path = tmp_path / "model.pt"
    torch.save(build_network("corx", affine_head=True).state_dict(), path)
    (shipped, candidate) = make_methods(["corx", f"corx@affine={path}"])
    assert candidate.name == "corx@affine" and shipped.name == "corx"
    assert candidate.settings()["weights"] != shipped.settings()["weights"]
    assert candidate.parameters() == parameter_count("corx", affine_head=True) > parameter_count("corx")
    with pytest.raises(CorxError, match="no such weights file"):
        make_methods([f"corx@x={tmp_path / 'absent.pt'}"])


def test_stage_two_starts_from_the_stage_one_affine_alone(tmp_path: Path) -> None:
    """start_from: whole weights, then the head trained alone, then the dense output zeroed -> the field is exactly
    the stage-1 head's affine; a bad part name is refused."""
    from corx_bundle.scripts.checkpoints import start_from, zero_submodule
    from corx_bundle.scripts.network import AffineHead

    torch.manual_seed(0)
    dense = build_network("corx", embed_dim=12)
    dense_path = tmp_path / "dense.pt"
    torch.save({"model": dense.state_dict()}, dense_path)
    torch.manual_seed(1)
    stage_one = AffineHead(4).eval()
    with torch.no_grad():
        stage_one.mlp[2].bias.copy_(torch.tensor(BIAS))
    head_path = tmp_path / "head.pt"
    torch.save(stage_one.state_dict(), head_path)

    net = build_network("corx", embed_dim=12, affine_head=True)
    start_from(net, dense_path, {"affine_head.0": str(head_path)}, ["heads"])
    x = _images(2)
    with torch.no_grad():
        field = net.eval()(x)
        torch.testing.assert_close(field, stage_one(x), rtol=0, atol=1e-6)
    assert float(field.abs().max()) > 1.0  # the affine is there, not an all-zero field
    with pytest.raises(ValueError, match="does not match"):
        start_from(net, None, {"affine_head.0": str(dense_path)})
    with pytest.raises(ValueError, match="no parameters"):
        zero_submodule(net, "avg_pool")


def test_bundle_writes_the_stage_two_starting_point(tmp_path: Path) -> None:
    """train.json's ``save_starting_point`` with affine_head.json: the shipped dense weights plus the stage-1 head, the
    dense output zeroed, written as weights whose field is the head's affine alone; an existing file is kept."""
    from monai.bundle import ConfigParser

    from corx_bundle.scripts.network import AffineHead

    torch.manual_seed(0)
    dense_path = tmp_path / "dense.pt"
    torch.save(build_network("corx", embed_dim=12).state_dict(), dense_path)
    stage_one = AffineHead(4).eval()
    with torch.no_grad():
        stage_one.mlp[2].bias.copy_(torch.tensor(BIAS))
    head_path = tmp_path / "head.pt"
    torch.save({"model": stage_one.state_dict()}, head_path)

    bundle = Path(__file__).resolve().parents[1] / "bundle"
    names = ["train.json", "train_cpu.json", "validate_truth.json", "affine_head.json"]
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / n) for n in names])
    parser.update({"bundle_root": str(tmp_path), "device": "$torch.device('cpu')", "network_def#embed_dim": 12,
                   "init_weights": str(dense_path), "affine_stage_weights": str(head_path)})
    parser.get_parsed_content("save_starting_point", lazy=False)
    written = tmp_path / "runs" / "cpu_corx_affine" / "models" / "starting_point.pt"
    net = build_network("corx", embed_dim=12, affine_head=True).eval()
    net.load_state_dict(torch.load(written, weights_only=True))
    x = _images(3)
    with torch.no_grad():
        torch.testing.assert_close(net(x), stage_one(x), rtol=0, atol=1e-6)
    before = written.read_bytes()
    with pytest.raises(RuntimeError) as refused:  # MONAI wraps the expression's error
        ConfigParser(parser.config).get_parsed_content("save_starting_point", lazy=False)
    assert isinstance(refused.value.__cause__, FileExistsError) and "starting_point.pt" in str(refused.value.__cause__)
    assert written.read_bytes() == before


def test_dense_stage_trains_the_dense_part_behind_the_frozen_head(tmp_path: Path) -> None:
    """configs/dense_stage.json stacked on the overlap stage: CoRX-NET with its head, started from the given
    weights with the dense output kept, the head's stored passes and the stored dense smoothing, short epochs, and an
    optimiser step that moves the dense part only."""
    from monai.bundle import ConfigParser

    torch.manual_seed(0)
    start = build_network("corx", embed_dim=12, affine_head=True, affine_passes=2, dense_smoothing=1.5)
    with torch.no_grad():
        start.affine_head[0].mlp[2].bias.copy_(torch.tensor(BIAS))
    start_path = tmp_path / "start.pt"
    torch.save(start.state_dict(), start_path)

    bundle = Path(__file__).resolve().parents[1] / "bundle"
    names = ["train.json", "train_cpu.json", "validate_truth.json", "affine_stage.json", "overlap_loss.json",
             "dense_stage.json"]
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / n) for n in names])
    parser.update({"bundle_root": str(tmp_path), "device": "$torch.device('cpu')", "network_def#embed_dim": 12,
                   "init_weights": str(start_path)})
    assert parser.get_parsed_content("epoch_length") == 68
    assert parser.get_parsed_content("crop_size") == parser.get_parsed_content("spatial_size")
    assert Path(parser.get_parsed_content("ckpt_dir")) == tmp_path / "runs" / "cpu_dense_stage" / "models"
    net = parser.get_parsed_content("network")
    optimizer = parser.get_parsed_content("optimizer")
    from corx_bundle.scripts.checkpoints import start_from

    start_from(net, parser.get_parsed_content("init_weights"), parser.get_parsed_content("init_parts"),
               parser.get_parsed_content("init_zeroed"))
    for name, value in start.state_dict().items():  # nothing zeroed: the dense output is kept; 2 passes, width 1.5
        torch.testing.assert_close(net.state_dict()[name], value, rtol=0, atol=0)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    x = _images(1)
    target = torch.cat([x, torch.ones_like(x)], dim=1)  # 4 images + 4 field-of-view masks
    loss = parser.get_parsed_content("loss")(net(x), target)
    loss.backward()
    optimizer.step()
    moved = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(not n.startswith("affine_head.") for n in moved)
    assert any(n.startswith("heads.") for n in moved)


def test_composed_affine_parameters_are_the_composed_fields() -> None:
    """compose_affine_parameters(a, b): the moving image pulled through a, then through b, as one affine: the field
    u_b(x) + u_a(x + u_b(x)), exactly; the other order is a different field."""
    from corx_bundle.scripts.network import affine_displacement, affine_linear_part, compose_affine_parameters

    generator = torch.Generator().manual_seed(3)
    first, second = (torch.randn((2, 12), generator=generator) * 0.05 for _ in range(2))
    shape = [20, 22, 24]
    u_first, u_second = affine_displacement(first, shape), affine_displacement(second, shape)
    through_both = u_second + u_first + torch.einsum("bij,bjdhw->bidhw", affine_linear_part(first, shape), u_second)
    composed = affine_displacement(compose_affine_parameters(first, second), shape)
    torch.testing.assert_close(composed, through_both, rtol=0, atol=1e-5)
    swapped = affine_displacement(compose_affine_parameters(second, first), shape)
    assert float((swapped - through_both).abs().max()) > 1e-2


def test_a_two_pass_head_corrects_its_own_affine_and_scripts() -> None:
    """passes=2: the second pass sees the moving images warped by the first pass's affine and its correction is
    composed with it; the scripted network gives the same field."""
    from corx_bundle.scripts.network import (
        AffineHead,
        affine_displacement,
        compose_affine_parameters,
        moving_warped,
    )

    torch.manual_seed(4)
    head = AffineHead(4, passes=2).eval()
    with torch.no_grad():
        head.mlp[2].weight.normal_(0.0, 0.05)
        head.mlp[2].bias.copy_(torch.tensor(BIAS))
    x = _images(5)
    with torch.no_grad():
        pooled = torch.nn.functional.avg_pool3d(x, 2, ceil_mode=True)
        first = head._single_pass(pooled)
        aligned = moving_warped(pooled, affine_displacement(first, list(pooled.shape[2:])))
        expected = compose_affine_parameters(first, head._single_pass(aligned))
        two = head.parameters_of(x)
        torch.testing.assert_close(two, expected, rtol=0, atol=1e-6)
        assert float((two - first).abs().max()) > 1e-3  # the second pass changed something
        scripted = script_network(head)
        torch.testing.assert_close(scripted(x), head(x), rtol=0, atol=1e-5)


def test_weights_carry_their_passes_and_warm_starts_keep_the_configured_ones(tmp_path: Path) -> None:
    """Weights saved before the option load as one pass (strict loaders too); a two-pass file runs two passes in a
    network built with the default; a warm start keeps the run's passes and can start a head alone from a whole
    CoRX-NET file."""
    from corx_bundle.scripts.checkpoints import stored_affine_passes, warm_start
    from corx_bundle.scripts.network import AffineHead

    torch.manual_seed(0)
    two_pass = build_network("corx", embed_dim=12, affine_head=True, affine_passes=2)
    state = two_pass.state_dict()
    assert int(state["affine_head.0.passes"]) == 2
    plain = build_network("corx", embed_dim=12, affine_head=True)
    plain.load_state_dict(state)
    assert int(plain.affine_head[0].passes) == 2
    older = {k: v for k, v in state.items() if not k.endswith("passes")}
    restored = build_network("corx", embed_dim=12, affine_head=True, affine_passes=3)
    restored.load_state_dict(older)  # strict
    assert int(restored.affine_head[0].passes) == 1

    whole = tmp_path / "whole.pt"
    torch.save(older, whole)
    two_pass_file = tmp_path / "two_pass.pt"
    torch.save({"model": state}, two_pass_file)
    assert stored_affine_passes(two_pass_file) == 2
    assert stored_affine_passes(whole) == stored_affine_passes(tmp_path / "absent.pt") == 1
    head = AffineHead(4, passes=2)
    warm_start(head, whole)
    assert int(head.passes) == 2
    torch.testing.assert_close(head.mlp[0].weight, two_pass.affine_head[0].mlp[0].weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="passes"):
        AffineHead(4, passes=0)
