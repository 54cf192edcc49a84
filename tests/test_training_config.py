"""The CPU training overlay (train_cpu.json), the mixed-precision inferer and the refinement methods."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"


def merged_config(*names: str):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / n) for n in names])
    parser["bundle_root"] = str(BUNDLE)
    return parser


def test_cpu_overlay_crops_all_four_images_identically() -> None:
    from monai.data import MetaTensor
    from monai.transforms import Compose

    parser = merged_config("train.json", "train_cpu.json")
    crop = Compose(parser.get_parsed_content("crop_augmentation"))
    volume = torch.rand(1, 96, 96, 96)
    keys = parser["image_keys"]
    for seed in range(3):
        crop.set_random_state(seed)
        out = crop({k: MetaTensor(volume.clone(), affine=torch.eye(4)) for k in keys})
        shapes = {tuple(out[k].shape) for k in keys}
        assert shapes == {(1, *parser["crop_size"])}
        for k in keys[1:]:  # one crop, flip and rotation for the four images
            assert torch.equal(out[k].as_tensor(), out[keys[0]].as_tensor())


@pytest.mark.parametrize("variant_config, variant", [(None, "corx"), ("corx_nocs.json", "corx_nocs"),
                                                     ("transmorph.json", "transmorph")])
def test_cpu_overlay_keeps_each_variant_in_its_own_run_folder(variant_config: str | None, variant: str) -> None:
    names = ["train.json"] + ([variant_config] if variant_config else []) + ["train_cpu.json"]
    parser = merged_config(*names)
    assert parser.get_parsed_content("network_def#variant") == variant
    ckpt_dir = Path(parser.get_parsed_content("ckpt_dir"))
    assert ckpt_dir == BUNDLE / "runs" / f"cpu_{variant}" / "models"
    assert parser.get_parsed_content("train#dataset#_target_") == "PersistentDataset"
    assert parser["train#inferer"]["_target_"] == "scripts.inferers.FieldInferer"
    assert parser.get_parsed_content("autocast_dtype") == "bfloat16"


def test_field_inferer_autocasts_and_returns_float32_close_to_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    import corx_bundle.scripts.inferers as inferers
    from corx_bundle.scripts.inferers import FieldInferer
    from corx_bundle.scripts.network import build_network

    monkeypatch.setattr(inferers, "cpu_runs_bf16", lambda: True)  # the bf16 arithmetic itself, emulated or not

    torch.manual_seed(0)
    net = build_network("corx", embed_dim=24)  # its largest tensors have >= SMALL_TENSOR elements.eval()
    with torch.no_grad():
        for head in net.heads:  # a field of about a voxel, as a trained network gives (init: ~1e-4)
            head.weight.normal_(0.0, 0.05)
        x = torch.rand(1, 4, 32, 32, 32)
        reference = net(x)
        mixed = FieldInferer("bfloat16")(x, net)
        plain = FieldInferer()(x, net)  # no dtype: full precision
    assert mixed.dtype == torch.float32
    assert mixed.shape == reference.shape
    scale = float(reference.abs().max())
    assert scale > 0
    assert float((mixed - reference).abs().max()) <= 0.05 * scale + 1e-6
    assert torch.equal(plain, reference)
    with pytest.raises(ValueError, match="unknown autocast dtype"):
        FieldInferer("int8")


def test_field_inferer_runs_float32_where_the_cpu_would_emulate_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """train_cpu.json asks for bf16; an AVX2-only CPU would emulate it ~130x slower, so float32 runs, warned once."""
    import corx_bundle.scripts.inferers as inferers
    from corx_bundle.scripts.network import build_network

    monkeypatch.setattr(inferers, "cpu_runs_bf16", lambda: False)
    torch.manual_seed(0)
    net = build_network("corx", embed_dim=12).eval()
    x = torch.rand(1, 4, 32, 32, 32)
    inferer = inferers.FieldInferer("bfloat16")
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="bfloat16 autocast not used: this CPU .* running float32"):
            first = inferer(x, net)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per inferer, not per iteration
            second = inferer(x, net)
        reference = net(x)
    assert torch.equal(first, reference) and torch.equal(second, reference)


def test_true_field_validation_measures_the_error_in_mm(tmp_path: Path) -> None:
    import nibabel as nib
    from monai.data import MetaTensor

    from corx_bundle.scripts.metrics import WarpedPairMetric
    from corx_bundle.scripts.transforms import LoadTrueFieldd

    spacing, shape = 3.87, (12, 10, 8)
    affine = np.diag([spacing] * 3 + [1.0])
    rng = np.random.default_rng(0)
    truth = rng.normal(0, 1, (*shape, 3)).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[2:10, 2:8, 2:6] = 1
    labels[4:6, 4:6, 3:5] = 6  # kidney
    nib.save(nib.Nifti1Image(truth, affine), str(tmp_path / "field.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / "labels.nii.gz"))
    ref = MetaTensor(torch.zeros(1, *shape), affine=torch.as_tensor(affine))
    item = {"fixed_spect": ref, "field_spect": str(tmp_path / "field.nii.gz"),
            "labels_fixed": str(tmp_path / "labels.nii.gz")}
    out = LoadTrueFieldd()(item)["truth"]
    assert tuple(out.shape) == (4, *shape)
    label = torch.cat([torch.rand(4, *shape), out.as_tensor()])[None]
    pred = torch.from_numpy(np.moveaxis(truth, -1, 0).copy())[None]
    pred[:, 0] += 1.0  # one voxel off along axis 0 everywhere
    body = WarpedPairMetric("field_error_mm", spacing_mm=spacing)(pred, label)
    kidney = WarpedPairMetric("kidney_field_error_mm", spacing_mm=spacing)(pred, label)
    assert float(body) == pytest.approx(spacing, rel=1e-5) and float(kidney) == pytest.approx(spacing, rel=1e-5)
    pred[:, 0] -= 1.0
    assert float(WarpedPairMetric("field_error_mm", spacing_mm=spacing)(pred, label)) < 1e-5
    with pytest.raises(ValueError, match="label channels 4-7"):
        WarpedPairMetric("field_error_mm")(pred, label[:, :4])
    shifted = MetaTensor(torch.zeros(1, *shape), affine=torch.as_tensor(affine @ np.diag([2.0, 1, 1, 1])))
    with pytest.raises(ValueError, match="does not coincide"):
        LoadTrueFieldd()({**item, "fixed_spect": shifted})
    with pytest.raises(ValueError, match="has no truth"):
        LoadTrueFieldd()({"fixed_spect": ref, "field_spect": None, "labels_fixed": None})


def test_truth_validation_overlay_keeps_only_pairs_with_truth(tmp_path: Path) -> None:
    import json

    from corx_bundle.scripts.datalist import load_pairs

    entries = [{"fixed_ct": "a", "moving_ct": "b", "fixed_spect": "c", "moving_spect": "d",
                "field_spect": "f" if i % 2 else None, "labels_fixed": "l" if i % 2 else None} for i in range(5)]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"validation": entries}))
    assert len(load_pairs(datalist, "validation")) == 5
    assert len(load_pairs(datalist, "validation", require_truth=True)) == 2
    parser = merged_config("train.json", "train_cpu.json", "validate_truth.json")
    assert parser.get_parsed_content("val_require_truth") is True
    metrics = parser["validate#additional_metrics"]
    assert {"val_spect_lncc", "val_kidney_field_error_mm"} <= set(metrics)
    # the checkpoint kept is the one with the lowest true field error (lower is better)
    assert set(parser["validate#key_metric"]) == {"val_field_error_mm"}
    better = parser.get_parsed_content("validate#evaluator#metric_cmp_fn")
    assert better(6.7, -1) and better(6.7, 7.0) and not better(7.0, 6.7)
    assert parser["validate#handlers"][2]["key_metric_negative_sign"] is True


def test_refine_methods_are_named_and_parsed() -> None:
    from corx.errors import CorxError
    from corx.evaluation.methods import WEIGHTS, make_methods
    from corx.evaluation.metrics import parameter_count
    from corx_bundle.scripts.checkpoints import has_submodule

    (plain, refined) = make_methods(["corx", "corx+refine25"])
    assert refined.name == "corx+refine25" and refined.options.steps == 25
    with_head = has_submodule(WEIGHTS["corx"], "affine_head")  # the shipped weights carry the affine head
    assert refined.parameters() == parameter_count("corx", affine_head=with_head) == plain.parameters()
    assert refined.settings()["refine"]["steps"] == 25 and "refine" not in plain.settings()
    with pytest.raises(CorxError, match="unknown method"):
        make_methods(["elastix+refine5"])
    with pytest.raises(CorxError, match="unknown method"):
        make_methods(["corx+refineX"])


def test_publish_weights_stores_float16_loads_back_and_refuses_to_clobber(tmp_path: Path) -> None:
    from corx_bundle.scripts.export import load_network
    from corx_bundle.scripts.network import build_network
    from corx_bundle.scripts.publish_weights import SMALL_TENSOR, publish

    torch.manual_seed(1)
    net = build_network("corx", embed_dim=24)  # its largest tensors have >= SMALL_TENSOR elements
    src = tmp_path / "checkpoint.pt"
    torch.save({"model": net.state_dict()}, src)  # the layout MONAI/Ignite savers write
    dst = tmp_path / "models" / "model.pt"
    size, digest = publish(src, dst)  # float16 by default
    assert size == dst.stat().st_size and len(digest) == 64
    stored = torch.load(dst, weights_only=True)
    floats = {k: v for k, v in stored.items() if v.is_floating_point()}
    assert {v.dtype for v in floats.values() if v.numel() >= SMALL_TENSOR} == {torch.float16}
    assert {v.dtype for v in floats.values() if v.numel() < SMALL_TENSOR} == {torch.float32}
    loaded = load_network(dst, variant="corx", embed_dim=24)
    for key, value in net.state_dict().items():
        restored = loaded.state_dict()[key]
        assert restored.dtype == value.dtype, key  # float16 is cast back to the network's float32
        if value.is_floating_point():
            assert torch.allclose(restored, value, rtol=1e-3, atol=1e-4), key
        else:
            assert torch.equal(restored, value), key
    with pytest.raises(FileExistsError, match="--overwrite"):
        publish(src, dst)
    publish(src, dst, half=False, overwrite=True)
    first_float = next(k for k, v in stored.items() if v.is_floating_point())
    assert torch.load(dst, weights_only=True)[first_float].dtype == torch.float32


def test_wall_clock_budget_never_stops_inside_the_first_epoch() -> None:
    """A budget that runs out during epoch 1 still lets epoch 1 finish (it is validated), then stops."""
    import time

    import torch
    from ignite.engine import Engine, Events

    from corx_bundle.scripts.handlers import WallClockCosineLR

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    engine = Engine(lambda e, b: time.sleep(0.01))
    WallClockCosineLR(opt, budget_s=0.015).attach(engine)
    epochs_done = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs_done.append(e.state.epoch))
    engine.run(range(5), max_epochs=10)
    assert epochs_done == [1] and engine.state.iteration <= 6  # epoch 1 whole, at most one step of epoch 2
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # annealed to eta_min once the budget was spent
