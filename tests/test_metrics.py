"""Tests of the sim-lf-v1 quality metrics (diffdeur_bids.evaluation.metrics).

Why: every reported figure goes through score_volume, so it is checked against the published
LPIPS examples and the protocol's reference figures, besides analytic PSNR/SSIM cases.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffdeur_bids.evaluation import metrics

LPIPS_DATA = Path(__file__).parent / "data" / "lpips"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _blob(shape=(48, 48, 24), seed=0) -> np.ndarray:
    """A smooth 'head': textured ellipsoid in [0, 1] on an empty background."""
    from scipy import ndimage

    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid ** 2).sum(axis=0) < 0.7
    texture = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 2.0)
    texture = (texture - texture.min()) / np.ptp(texture)
    return np.where(inside, 0.2 + 0.8 * texture, 0.0)


# ---------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, published", [("ex_p0.png", 0.722), ("ex_p1.png", 0.138)])
def test_lpips_matches_published_examples(name, published):
    """LPIPS-Alex v0.1 on the examples of the LPIPS project (values to 3 decimals)."""
    model = metrics.load_lpips()
    ref = metrics.read_png_rgb(LPIPS_DATA / "ex_ref.png")
    assert model.distance(ref, metrics.read_png_rgb(LPIPS_DATA / name)) == pytest.approx(published, abs=1e-3)


def test_lpips_missing_weights_error_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="convert_lpips_weights"):
        metrics.LPIPSAlex.from_file(tmp_path / "absent.safetensors")


def test_lpips_rejects_slices_too_small_for_alexnet():
    gt = _blob((24, 24, 24))
    with pytest.raises(ValueError, match="31x31"):
        metrics.score_volume(gt, np.eye(4), gt, np.eye(4))


def test_lpips_volume_zero_for_identical_positive_for_blur():
    from scipy import ndimage

    gt = _blob()
    pred = ndimage.gaussian_filter(gt, 1.5)
    assert metrics.score_volume(gt, np.eye(4), gt, np.eye(4))["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert metrics.score_volume(pred, np.eye(4), gt, np.eye(4))["lpips"] > 0.01


# ---------------------------------------------------------------------------------------------
# PSNR, SSIM, masking, intensity alignment
# ---------------------------------------------------------------------------------------------

def test_identical_volume_is_perfect():
    gt = _blob()
    score = metrics.score_volume(gt, np.eye(4), gt, np.eye(4), lpips=False)
    assert score["psnr"] == float("inf")
    assert score["ssim"] == pytest.approx(1.0)
    assert score["lpips"] is None


def test_psnr_known_noise_levels():
    gt = np.full((20, 20, 20), 0.5)
    assert metrics.psnr(gt + 0.01, gt) == pytest.approx(40.0)
    noisy = gt + np.random.default_rng(0).normal(0.0, 0.05, gt.shape)
    assert metrics.psnr(noisy, gt) == pytest.approx(-20 * np.log10(0.05), abs=0.1)  # 26.02 dB


def test_score_volume_known_noise_level():
    """Noise sigma on a GT with no background (nothing clipped): the least-squares fit leaves a
    residual of sigma^2 var/(var + sigma^2), so PSNR = 10 log10((var + sigma^2) / (sigma^2 var))."""
    from scipy import ndimage

    texture = ndimage.gaussian_filter(np.random.default_rng(2).random((40, 40, 40)), 2.0)
    gt = 0.1 + 0.8 * (texture - texture.min()) / np.ptp(texture)
    sigma, var = 0.01, gt.var()
    noisy = gt + np.random.default_rng(1).normal(0.0, sigma, gt.shape)
    want = 10 * np.log10((var + sigma ** 2) / (sigma ** 2 * var))  # 40.06 dB here
    assert metrics.score_volume(noisy, np.eye(4), gt, np.eye(4), lpips=False)["psnr"] == pytest.approx(want, abs=0.1)


def test_intensity_alignment_makes_affine_copy_perfect():
    """LF outputs have an arbitrary scale: a * GT + b must score as the GT itself."""
    gt = _blob()
    score = metrics.score_volume(3.7 * gt + 12.0, np.eye(4), gt, np.eye(4), lpips=False)
    assert score["psnr"] > 100.0
    assert score["ssim"] == pytest.approx(1.0, abs=1e-6)


def test_alignment_fits_inside_mask_only():
    """Voxels outside the mask do not bias the fit (an output's background can be anything)."""
    gt = _blob()
    mask = metrics.score_mask(gt)
    pred = np.where(mask, 2.0 * gt + 1.0, 50.0)
    aligned = metrics.align_intensity(pred, gt, mask)
    np.testing.assert_allclose(aligned[mask], gt[mask], atol=1e-9)


def test_score_only_inside_bounding_box_of_dilated_mask():
    gt = np.zeros((60, 60, 40))
    gt[20:40, 20:40, 10:30] = _blob((20, 20, 20))
    box = metrics.bounding_box(metrics.score_mask(gt))
    pred = gt.copy()
    pred[:5], pred[-5:] = 0.9, 0.9  # outside the box: ignored
    assert metrics.score_volume(pred, np.eye(4), gt, np.eye(4), lpips=False)["psnr"] == float("inf")
    assert all(s.start >= 14 and s.stop <= 46 for s in box[:2])  # dilation of 3 voxels


def test_ssim_drops_with_blur():
    from scipy import ndimage

    gt = _blob()
    score = metrics.score_volume(ndimage.gaussian_filter(gt, 1.0), np.eye(4), gt, np.eye(4), lpips=False)
    assert 0.3 < score["ssim"] < 0.99


# ---------------------------------------------------------------------------------------------
# Resampling onto the GT grid
# ---------------------------------------------------------------------------------------------

def _ramp(affine, shape) -> np.ndarray:
    """A linear function of world position, sampled on a grid (trilinear resampling is exact on it)."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    return 0.5 + world @ np.array([0.004, 0.006, 0.008])  # in [0.16, 0.83]


def test_resampling_through_affines_on_a_different_grid():
    """A 2 mm LAS output covering the GT's 1 mm RAS grid scores as if written on the GT grid."""
    gt_affine = np.array([[1.0, 0, 0, -20], [0, 1, 0, -22], [0, 0, 1, -16], [0, 0, 0, 1]])
    gt = _ramp(gt_affine, (40, 44, 32))
    pred_affine = np.array([[-2.0, 0, 0, 26], [0, 2, 0, -28], [0, 0, 2, -21], [0, 0, 0, 1]])
    pred = _ramp(pred_affine, (28, 30, 26))
    np.testing.assert_allclose(metrics.resample_to_grid(pred, pred_affine, gt.shape, gt_affine), gt, atol=1e-9)
    score = metrics.score_volume(5.0 * pred, pred_affine, gt, gt_affine, lpips=False)
    assert score["psnr"] > 100.0
    assert score["ssim"] == pytest.approx(1.0, abs=1e-6)


def test_same_grid_is_not_resampled():
    """An output on the GT grid is scored as written (no interpolation smoothing)."""
    gt = _blob()
    np.testing.assert_array_equal(metrics.resample_to_grid(gt, np.eye(4), gt.shape, np.eye(4)), gt)


# ---------------------------------------------------------------------------------------------
# The protocol's reference figures (needs ../shared/data)
# ---------------------------------------------------------------------------------------------

def _simulate_track(path: Path, track: str):
    """Protocol steps 1-8 through the package: load, reorient to RAS, simulate the LF scan."""
    import nibabel as nib

    from diffdeur_bids.evaluation.protocol import TRACKS, simulate_lowfield

    img = nib.as_closest_canonical(nib.load(str(path)))
    return simulate_lowfield(np.asarray(img.dataobj, dtype=np.float32), img.affine, seed=0, **TRACKS[track])


def _linear_interpolation(lf, lf_affine, gt_affine):
    """The app's ``linear`` method with the GT voxel size as output resolution: (image, affine)."""
    from diffdeur_bids.enhance import EnhanceSettings, enhance
    from diffdeur_bids.enhance.grids import voxel_sizes

    settings = EnhanceSettings(method="linear", output_resolution=tuple(float(v) for v in voxel_sizes(gt_affine)),
                               device="cpu")
    result = enhance(lf, lf_affine, settings)
    return result.image, result.affine


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data absent")
@pytest.mark.parametrize("rel, track, want_psnr, want_ssim", [
    ("hf/ixi_2mm/IXI132-HH-1415_T1w.nii.gz", "2mm", 22.06, 0.671),
    ("hf/1mm/cstar_stroke_T1w_brain_1mm.nii.gz", "1mm", 23.57, 0.783),
])
def test_reference_figures_linear_interpolation(rel, track, want_psnr, want_ssim):
    """Linear interpolation of the simulated LF scan reproduces the protocol's table."""
    lf, lf_affine, gt, gt_affine = _simulate_track(SHARED_DATA / rel, track)
    linear, linear_affine = _linear_interpolation(lf, lf_affine, gt_affine)
    assert linear.shape == gt.shape  # the output grid is the GT grid: nothing to resample
    score = metrics.score_volume(linear, linear_affine, gt, gt_affine, lpips=False)
    assert score["psnr"] == pytest.approx(want_psnr, abs=0.15)
    assert score["ssim"] == pytest.approx(want_ssim, abs=0.01)
