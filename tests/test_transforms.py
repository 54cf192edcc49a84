"""Bundle transforms keep geometry; a known shift of the moving image is recovered in the field convention."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from corx_bundle.scripts.losses import HybridRegistrationLoss
from corx_bundle.scripts.transforms import normalize_spect

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
SPACING = 4.0
SHIFT_MM = 8.0  # the moving pair lies 8 mm further along +x (RAS): 2 voxels of the network grid


def blobs(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Smooth random blobs: structure at every scale a translation can lock onto."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 2.0).astype(np.float32)


def preprocessing(spatial: int, train: bool = False):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({"spatial_size": [spatial] * 3, "pixdim": [SPACING] * 3})
    from monai.transforms import Compose

    chain = parser.get_parsed_content("preprocessing")
    if train:
        chain = chain + parser.get_parsed_content("augmentation")
    return Compose(chain)


@pytest.fixture
def shifted_pair(tmp_path: Path) -> dict[str, str]:
    shape = (36, 36, 36)
    ct_hu = (blobs(shape, 0) - 0.5) * 4000.0  # spans the CT window
    spect = blobs(shape, 1) * 1e5
    fixed_aff = np.diag([SPACING, SPACING, SPACING, 1.0])
    moving_aff = fixed_aff.copy()
    moving_aff[0, 3] += SHIFT_MM
    ct_fine_aff = np.diag([SPACING / 2, SPACING / 2, SPACING, 1.0])  # CT on its own finer grid
    ct_fine = np.repeat(np.repeat(ct_hu, 2, axis=0), 2, axis=1)
    ct_fine_aff[:3, 3] = [-SPACING / 4, -SPACING / 4, 0.0]  # voxel centres of the 2x grid, same box
    paths = {}
    for role, aff, ct_aff in (("fixed", fixed_aff, ct_fine_aff), ("moving", moving_aff, None)):
        c_aff = ct_aff if ct_aff is not None else moving_aff
        c_data = ct_fine if ct_aff is not None else ct_hu
        paths[f"{role}_ct"] = str(tmp_path / f"{role}_ct.nii.gz")
        paths[f"{role}_spect"] = str(tmp_path / f"{role}_spect.nii.gz")
        nib.save(nib.Nifti1Image(c_data.astype(np.int16), c_aff), paths[f"{role}_ct"])
        nib.save(nib.Nifti1Image(spect, aff), paths[f"{role}_spect"])
    return paths


def test_ct_is_resampled_onto_the_fixed_spect_grid(shifted_pair: dict[str, str]) -> None:
    out = preprocessing(32)(dict(shifted_pair))
    fixed_affine = out["fixed_spect"].affine.numpy()
    for key in ("fixed_ct", "moving_ct", "moving_spect"):
        assert tuple(out[key].shape) == (1, 32, 32, 32)
        np.testing.assert_allclose(out[key].affine.numpy(), fixed_affine, atol=1e-5)
    np.testing.assert_allclose(np.diag(fixed_affine)[:3], [SPACING] * 3, atol=1e-5)
    for key in ("fixed_ct", "moving_ct", "fixed_spect", "moving_spect"):
        assert float(out[key].min()) >= 0.0 and float(out[key].max()) <= 1.0


def test_known_shift_is_recovered_with_the_field_convention(shifted_pair: dict[str, str]) -> None:
    out = preprocessing(32)(dict(shifted_pair))
    images = torch.cat([out[k] for k in ("fixed_ct", "moving_ct", "fixed_spect", "moving_spect")])[None].float()
    translation = torch.zeros(3, requires_grad=True)
    loss_fn = HybridRegistrationLoss()
    optimiser = torch.optim.Adam([translation], lr=0.1)
    for _ in range(80):
        optimiser.zero_grad()
        ddf = translation.view(1, 3, 1, 1, 1).expand(1, 3, 32, 32, 32)
        loss_fn(ddf, images).backward()
        optimiser.step()
    # content moved +8 mm along x => warped(p) = moving(p + u) needs u = +2 voxels along array axis 0
    np.testing.assert_allclose(translation.detach().numpy(), [SHIFT_MM / SPACING, 0, 0], atol=0.25)


def test_augmentation_applies_the_same_transform_to_all_four_images(shifted_pair: dict[str, str]) -> None:
    same = dict(shifted_pair, moving_ct=shifted_pair["fixed_ct"], moving_spect=shifted_pair["fixed_spect"])
    chain = preprocessing(32, train=True)
    for seed in range(3):
        chain.set_random_state(seed=seed)
        out = chain(dict(same))
        torch.testing.assert_close(out["fixed_ct"], out["moving_ct"])
        torch.testing.assert_close(out["fixed_spect"], out["moving_spect"])


def test_normalize_spect_modes() -> None:
    x = torch.tensor([0.0, 1.0, 10.0, 1000.0])
    torch.testing.assert_close(normalize_spect(x), x / 1000.0)
    logged = normalize_spect(x, "log")
    assert logged[0] == 0 and logged[-1] == 1 and logged[1] > x[1] / 1000.0  # low values lifted
    with pytest.raises(ValueError, match="unknown SPECT normalisation"):
        normalize_spect(x, "zscore")


def test_field_of_view_masks_follow_their_images_onto_the_fixed_grid(shifted_pair: dict[str, str]) -> None:
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({"spatial_size": [40] * 3, "pixdim": [SPACING] * 3, "fov_keys": "@image_keys"})
    out = Compose(parser.get_parsed_content("preprocessing"))(dict(shifted_pair))
    fixed_affine = out["fixed_spect"].affine.numpy()
    profiles = {}
    for key in parser.get_parsed_content("image_keys"):
        mask = out[f"{key}_fov"]
        assert tuple(mask.shape) == (1, 40, 40, 40)
        np.testing.assert_allclose(mask.affine.numpy(), fixed_affine, atol=1e-5)
        profiles[key] = mask[0, :, 20, 20].numpy()
    # the 36^3 boxes are padded by 2 voxels on each side; the moving scans start 8 mm (2 voxels) further along +x
    for key in ("fixed_ct", "fixed_spect"):
        np.testing.assert_allclose(profiles[key][[0, 1, 38, 39]], 0.0, atol=1e-6)
        np.testing.assert_allclose(profiles[key][2:38], 1.0, atol=1e-6)
    for key in ("moving_ct", "moving_spect"):
        np.testing.assert_allclose(profiles[key][[0, 1, 2, 3, 38, 39]], 0.0, atol=1e-6)
        np.testing.assert_allclose(profiles[key][4:38], 1.0, atol=1e-6)


def test_field_of_view_mask_owns_its_geometry() -> None:
    from monai.data import MetaTensor

    from corx_bundle.scripts.transforms import FieldOfViewd

    image = MetaTensor(torch.zeros(1, 2, 2, 2), affine=torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0])))
    mask = FieldOfViewd(["ct"])({"ct": image})["ct_fov"]
    torch.testing.assert_close(mask.affine, image.affine)
    mask.affine[0, 0] = 9.0  # editing the mask's geometry leaves the image's alone
    assert float(image.affine[0, 0]) == 2.0


def test_axial_truncation_zeroes_whole_scans_alike_and_keeps_geometry() -> None:
    from monai.data import MetaTensor

    from corx_bundle.scripts.transforms import RandAxialTruncationd

    groups = [["fixed_ct", "fixed_ct_fov"], ["moving_ct", "moving_ct_fov"]]
    transform = RandAxialTruncationd(groups, max_slices=5, prob=1.0)
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    cuts_seen = set()
    for seed in range(6):
        transform.set_random_state(seed)
        data = {k: MetaTensor(torch.ones(1, 8, 8, 20), affine=affine) for g in groups for k in g}
        out = transform(data)
        for group in groups:
            profile = out[group[0]][0, 0, 0].numpy()
            torch.testing.assert_close(out[group[1]].as_tensor(), out[group[0]].as_tensor())  # one cut per scan
            inferior, superior = int(np.argmax(profile > 0)), int(np.argmax(profile[::-1] > 0))
            assert 0 <= inferior <= 5 and 0 <= superior <= 5 and profile[inferior : 20 - superior].min() == 1.0
            cuts_seen.add((inferior, superior))
            torch.testing.assert_close(out[group[0]].affine, affine.double())
        assert torch.equal(data["fixed_ct"].as_tensor(), torch.ones(1, 8, 8, 20))  # the input is not modified
    assert len(cuts_seen) > 3
    untouched = RandAxialTruncationd(groups, max_slices=5, prob=0.0)({k: torch.ones(1, 4, 4, 20) for g in groups
                                                                        for k in g})
    assert all(float(v.min()) == 1.0 for v in untouched.values())
    too_many = RandAxialTruncationd([["fixed_ct"]], max_slices=12, prob=1.0)
    too_many.set_random_state(0)  # seeded: draws 5 + 0 slices of 3 (unseeded, 6 in 169 draws fit and nothing is raised)
    with pytest.raises(ValueError, match="cannot truncate 5 \\+ 0 of its 3 slices"):
        too_many({"fixed_ct": torch.ones(1, 2, 2, 3)})


def test_overlap_overlay_trains_on_an_8_channel_target_and_validates_on_the_plain_pair(
        shifted_pair: dict[str, str]) -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    names = ("train.json", "train_cpu.json", "affine_stage.json", "overlap_loss.json")
    parser.read_config([str(BUNDLE / "configs" / n) for n in names])
    parser.update({"bundle_root": str(BUNDLE), "spatial_size": [40] * 3, "pixdim": [SPACING] * 3,
                   "fov_truncation_slices": 4, "fov_truncation_prob": 1.0})
    train = parser.get_parsed_content("train#preprocessing")
    train.set_random_state(0)
    out = train(dict(shifted_pair))
    image, label = out["image"], out["label"]
    assert tuple(image.shape) == (4, 40, 40, 40) and tuple(label.shape) == (8, 40, 40, 40)
    torch.testing.assert_close(label[:4].as_tensor(), image.as_tensor())
    masks = label[4:]
    assert abs(float(masks.max()) - 1.0) < 1e-5 and float(masks.min()) == 0.0
    ct = slice(0, 2)  # (the SPECT blur may spread activity past its mask: the loss ignores it there)
    assert float(image[ct].abs().mul(masks[ct] < 1e-6).max()) < 1e-6  # no CT is left where the scan saw none
    truncated = masks[:, 20, 20].sum(dim=0)  # every scan lost up to 4 + 2 padding planes at each axial end
    assert float(truncated[:2].max()) == 0.0 and float(truncated[-2:].max()) == 0.0
    assert set(out) >= {"image", "label"} and not any(k.endswith("_fov") for k in out)
    validate = parser.get_parsed_content("validate#preprocessing")(dict(shifted_pair))
    assert tuple(validate["label"].shape) == (4, 40, 40, 40)
    assert not any(k.endswith("_fov") for k in validate)
    loss = parser.get_parsed_content("loss")
    assert float(loss(torch.zeros(1, 3, 40, 40, 40), label[None])) < 0.1
