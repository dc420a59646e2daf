"""The whole SynthSeg path (pre-processing, port, post-processing, outputs) with the tiny weights."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.interpolate import RegularGridInterpolator

pytest.importorskip("h5py")
nib = pytest.importorskip("nibabel")

from diffdeur_bids.segment import labels as lab  # noqa: E402
from diffdeur_bids.segment import postprocess as post  # noqa: E402
from diffdeur_bids.segment import preprocess as pre  # noqa: E402
from diffdeur_bids.segment import segment  # noqa: E402

DATA = Path(__file__).parent / "data" / "synthseg"


def _mni_1mm():
    datasets = pytest.importorskip("nilearn.datasets")
    path = Path(datasets.__file__).parent / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    if not path.is_file():
        pytest.skip("nilearn's MNI template file is not installed")
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


@pytest.fixture(scope="module")
def mni_2mm():
    datasets = pytest.importorskip("nilearn.datasets")
    img = datasets.load_mni152_template(resolution=2)
    return np.asarray(img.dataobj), img.affine


def test_preprocessing_reproduces_synthseg_input():
    """SynthSeg's own preprocess(--crop 96) of the template is input_96.npz, bit for bit."""
    data, affine = _mni_1mm()
    assert not pre.needs_resampling(affine)
    aligned = pre.Orientation.from_affine(affine).apply(data.astype(np.float32))
    ours = pre.rescale_intensities(aligned[50:146, 68:164, 46:142])
    np.testing.assert_array_equal(ours, np.load(DATA / "input_96.npz")["input"])


def test_resampling_is_synthseg_grid():
    """1 mm grid of SynthSeg's resample_volume: voxel k of axis i sits at old index (k + 0.5) / f - 0.5."""
    rng = np.random.default_rng(0)
    vol = rng.random((7, 9, 6)).astype(np.float32)
    aff = np.diag([2.0, 1.5, 3.0, 1.0])
    aff[:3, 3] = [10, -20, 5]
    out, aff1 = pre.resample_to_1mm(vol, aff)
    factor = np.array([2.0, 1.5, 3.0])
    assert out.shape == (14, 14, 18)
    np.testing.assert_allclose(pre.voxel_sizes(aff1), 1.0)
    # world position of voxel centres: same FOV centre
    centre_old = aff @ np.r_[(np.array(vol.shape) - 1) / 2, 1]
    centre_new = aff1 @ np.r_[(np.array(out.shape) - 1) / 2, 1]
    np.testing.assert_allclose(centre_old[:3], centre_new[:3], atol=0.5)
    pts = [np.clip((np.arange(n) + 0.5) / f - 0.5, 0, s - 1) for n, f, s in zip(out.shape, factor, vol.shape)]
    ref = RegularGridInterpolator([np.arange(s) for s in vol.shape], vol.astype(np.float64))(
        np.stack(np.meshgrid(*pts, indexing="ij"), -1))
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(aff1 @ np.r_[2, 3, 4, 1], aff @ np.r_[(np.r_[2, 3, 4] + 0.5) / factor - 0.5, 1])


def _flip_back(post_of_flipped: torch.Tensor, flip_indices: np.ndarray) -> torch.Tensor:
    """SynthSeg's own step: undo a left-right flip (voxel axis 0) and swap the left/right channels."""
    return torch.flip(post_of_flipped, dims=[2]).index_select(1, torch.as_tensor(flip_indices))


def test_fused_flip_average_equals_synthseg_order():
    """SynthSeg: blur(P) and blur(P_flipped) averaged after flipping back; we average then blur once."""
    torch.manual_seed(0)
    p, q = torch.rand(1, 33, 12, 10, 9), torch.rand(1, 33, 12, 10, 9)
    flip = lab.flip_indices()
    synthseg = 0.5 * (post.blur_posteriors(p.clone()) + _flip_back(post.blur_posteriors(q.clone()), flip))
    fused = post.blur_posteriors(0.5 * (p + _flip_back(q, flip)))
    torch.testing.assert_close(fused, synthseg, atol=1e-6, rtol=0)
    # and the blur is SynthSeg's 3x3x3 Gaussian of sigma 0.5 with zero padding
    g = post._gaussian_taps(0.5)
    kernel = (g[:, None, None] * g[None, :, None] * g[None, None, :])[None, None]
    ref = torch.nn.functional.conv3d(p[:, :1], kernel, padding=1)
    torch.testing.assert_close(post.blur_posteriors(p[:, :1].clone()), ref, atol=1e-6, rtol=0)


def test_clean_up_keeps_largest_components():
    post_ = np.zeros((4, 12, 12, 12), np.float32)
    post_[0] = 1
    post_[:, 1:5, 1:5, 1:5] = np.reshape([0, 0.9, 0.1, 0], (4, 1, 1, 1))   # main blob, channel 1
    post_[:, 8:10, 8:10, 8:10] = np.reshape([0, 0, 0, 1.0], (4, 1, 1, 1))  # separate blob: not the brain
    post_[:, 2, 2, 6] = [0.5, 0, 0, 0.5]                                   # isolated voxel
    topology = np.array([0, 1, 1, 2])
    out = post.clean_posteriors(post_.copy(), topology, fast=False)
    labels = post.hard_labels(out, np.array([0, 2, 3, 4]))
    assert set(np.unique(labels)) == {0, 2}
    np.testing.assert_allclose(out.sum(0), 1, atol=1e-6)
    fast = post.clean_posteriors(post_.copy(), None, fast=True)
    assert fast[2, 1:5, 1:5, 1:5].max() == 0  # 0.1 < 0.2 is zeroed in fast mode
    vols, tiv = post.soft_volumes(out, np.array([0, 2, 3, 4]), 2.0)
    assert vols[2] == pytest.approx(64 * 0.9 * 2.0) and vols[3] == pytest.approx(64 * 0.1 * 2.0) and tiv == pytest.approx(sum(vols.values()))


def test_orientation_does_not_change_the_segmentation():
    """A permuted and flipped copy of the image (same world positions) gets the same labels."""
    data, affine = _mni_1mm()
    data, affine = data[50:146, 68:164, 46:142].astype(np.float32), affine.copy()
    affine[:3, 3] += affine[:3, :3] @ [50, 68, 46]
    ras = segment(data, affine, DATA / "synthseg2_tiny.h5")
    # LPS-like storage with axes (j, k, i): voxel (a, b, c) -> RAS voxel (n_i-1-c, b, n_j-1-a)
    other = np.flip(np.transpose(data, (1, 2, 0)), (0, 2))
    perm = np.zeros((4, 4))
    perm[0, 2], perm[1, 0], perm[2, 1], perm[3, 3] = -1, -1, 1, 1
    perm[0, 3], perm[1, 3] = data.shape[0] - 1, data.shape[1] - 1
    out = segment(other, affine @ perm, DATA / "synthseg2_tiny.h5")
    back = np.transpose(np.flip(out.labels, (0, 2)), (2, 0, 1))
    np.testing.assert_array_equal(back, ras.labels)
    assert out.volumes == pytest.approx(ras.volumes)


@pytest.mark.parametrize("name,robust", [("synthseg2", False), ("robust", True)])
def test_whole_path_on_mni_template(mni_2mm, name, robust):
    data, affine = mni_2mm
    result = segment(data, affine, DATA / f"{name}_tiny.h5", robust=robust, threads=2)
    # on the input grid
    assert result.labels.shape == data.shape and result.labels.dtype == np.int16
    np.testing.assert_array_equal(result.affine, affine)
    # SynthSeg's 1 mm grid: 2 mm voxels become 2 voxels, centred on the same field of view
    assert result.labels_1mm.shape == tuple(2 * n for n in data.shape)
    np.testing.assert_allclose(pre.voxel_sizes(result.affine_1mm), 1.0)
    np.testing.assert_allclose(result.affine_1mm[:3, 3], affine[:3, 3] - 0.5)
    # nearest neighbour: input voxel i covers 1 mm voxels 2i and 2i+1 (tie goes to 2i+1)
    np.testing.assert_array_equal(result.labels, result.labels_1mm[1::2, 1::2, 1::2])
    # labels: FreeSurfer values of this model, background outside the head
    found = set(np.unique(result.labels).tolist())
    assert found <= set(lab.label_values().tolist()) and 0 in found and len(found) >= 4
    assert result.labels[0, 0, 0] == 0 and result.labels[-1, -1, -1] == 0
    # volumes: every structure, soft volumes at 1 mm, TIV their sum and close to the hard count
    assert set(result.volumes) == set(lab.label_values()[1:].tolist())
    assert all(v >= 0 for v in result.volumes.values())
    assert result.tiv_mm3 == pytest.approx(sum(result.volumes.values()))
    hard = np.count_nonzero(result.labels_1mm)
    assert abs(result.tiv_mm3 - hard) < 0.1 * hard
    rows = result.volume_rows()
    assert len(rows) == 33 and rows[0]["label"] is None and rows[0]["name"] == lab.TIV_NAME
    assert [r["label"] for r in rows[1:]] == lab.label_values()[1:].tolist()
    assert rows[0]["volume_mm3"] == pytest.approx(result.tiv_mm3, abs=1e-3)
    assert result.model == ("SynthSeg-robust 2.0" if robust else "SynthSeg 2.0")


def test_nearest_to_grid_general_affine():
    labels = np.arange(27, dtype=np.int16).reshape(3, 3, 3)
    src = np.eye(4)
    dst = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])  # swapped axes: general path
    out = pre.nearest_to_grid(labels, src, (3, 3, 3), dst)
    np.testing.assert_array_equal(out, labels.transpose(1, 0, 2))
    coarse = pre.nearest_to_grid(labels, src, (2, 2, 2), np.diag([2.0, 2.0, 2.0, 1.0]))  # separable path
    np.testing.assert_array_equal(coarse, [[[0, 2], [6, 8]], [[18, 20], [24, 26]]])
    outside = pre.nearest_to_grid(labels, src, (2, 2, 2), np.diag([4.0, 4.0, 4.0, 1.0]))
    assert outside[1, 1, 1] == 0  # beyond the source grid: background


def test_bad_inputs_are_rejected():
    from diffdeur_bids.segment import InvalidImageError

    with pytest.raises(InvalidImageError):
        segment(np.zeros((4, 4)), np.eye(4), DATA / "synthseg2_tiny.h5")
    with pytest.raises(InvalidImageError):
        segment(np.full((8, 8, 8), np.nan), np.eye(4), DATA / "synthseg2_tiny.h5")
    with pytest.raises(InvalidImageError):
        segment(np.zeros((8, 8, 8)), np.zeros((4, 4)), DATA / "synthseg2_tiny.h5")



@pytest.mark.skipif(not os.environ.get("DIFFDEUR_SYNTHSEG_WEIGHTS"), reason="official weights not available")
def test_official_weights_load():
    """Optional: DIFFDEUR_SYNTHSEG_WEIGHTS=/path/synthseg_2.0.h5 (or robust) checks the full-size file."""
    from diffdeur_bids.segment import identify_weights, inspect_weights, load_network

    path = os.environ["DIFFDEUR_SYNTHSEG_WEIGHTS"]
    info = inspect_weights(path)
    assert info.features[0] == 24 and info.n_labels == 33
    assert identify_weights(path)[1] in ("synthseg_2.0.h5", "synthseg_robust_2.0.h5")
    assert load_network(path).specs[-1].n_labels == 33


def test_hard_labels_is_argmax_with_first_channel_on_ties():
    rng = np.random.default_rng(0)
    p = rng.random((33, 6, 7, 8)).astype(np.float32)
    p[:, :2] = 0.5  # all tied: background wins, as np.argmax
    values = lab.label_values()
    np.testing.assert_array_equal(post.hard_labels(p, values), values[p.argmax(axis=0)])
