"""The real-pairs benchmark's scoring: registration to the 3 T slice, scores, the invented-edges check."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("SimpleITK")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import real_lf  # noqa: E402


def _slice(shape=(160, 140)) -> np.ndarray:
    y, x = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    head = ((y / 0.8) ** 2 + (x / 0.65) ** 2 < 1).astype(float)
    ventricle = (((y + 0.1) / 0.25) ** 2 + ((x - 0.15) / 0.12) ** 2 < 1).astype(float)
    lesion = (((y - 0.35) / 0.15) ** 2 + ((x + 0.3) / 0.15) ** 2 < 1).astype(float)
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(0.8 * head - 0.5 * ventricle + 0.4 * lesion, 1.5).astype(np.float32)


def test_registration_brings_a_moved_coarse_slice_onto_the_fixed_one():
    from scipy import ndimage

    fixed = _slice()
    moved = ndimage.rotate(fixed, 7, reshape=False, order=1)
    moved = ndimage.shift(moved, (6, -4), order=1)[::2, ::2]  # the LF slice: half the pixels, moved
    transform, fix, scale = real_lf.register_slice(moved, fixed)
    back = real_lf.resample_to(transform, fix, scale, moved)
    mask = real_lf.head_mask(fixed) & np.isfinite(back)
    naive = ndimage.zoom(moved, 2, order=1)[: fixed.shape[0], : fixed.shape[1]]
    corr = lambda a: np.corrcoef(a[mask], fixed[mask])[0, 1]  # noqa: E731
    assert corr(back) > 0.97 and corr(back) > corr(naive) + 0.05


def test_scores_rank_a_cleaner_slice_above_a_noisier_one():
    rng = np.random.default_rng(0)
    truth = _slice()
    mask = real_lf.head_mask(truth)
    clean = real_lf.score_slice(truth + 0.02 * rng.standard_normal(truth.shape), truth, mask)
    noisy = real_lf.score_slice(truth + 0.2 * rng.standard_normal(truth.shape), truth, mask)
    for key in ("ssim", "psnr", "nmi"):
        assert clean[key] > noisy[key], key
    assert 1.0 < noisy["nmi"] < clean["nmi"] < 2.0


def test_invented_edges_are_counted():
    truth = np.stack([_slice((64, 64))] * 8, axis=-1)
    mask = truth > 0.1
    assert real_lf.invented_edges(truth, truth, mask) < 0.05
    invented = truth.copy()
    invented[20:30, 20:30, :] += 0.5  # a square the input does not have
    assert real_lf.invented_edges(truth, invented, mask) > 0.2
