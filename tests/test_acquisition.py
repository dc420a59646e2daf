"""Real-scanner magnitude images: background noise, zero-filled reconstructions, the Rician bias."""

from __future__ import annotations

import numpy as np
import pytest

from diffdeur_bids.enhance.acquisition import acquired_band, fourier_crop, to_acquired_grid
from diffdeur_bids.enhance.noise import rayleigh_sigma, tissue_sigma, unbias_rician, wavelet_mad_sigma


def _phantom(shape, rng) -> np.ndarray:
    """A head-like ellipsoid with a brighter core and some texture, values about 0.5 to 1, smooth
    enough that zero-filling it adds no ringing (which would blur the comparison with the truth)."""
    from scipy.ndimage import gaussian_filter

    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum((g / a) ** 2 for g, a in zip(grid, (0.75, 0.85, 1.4))))
    img = 0.6 * (r < 0.8) + 0.3 * (r < 0.45) + 0.05 * np.sin(9 * grid[0]) * (r < 0.8)
    return gaussian_filter(img.astype(np.float64), (1.5, 1.5, 0.7))


def zero_filled_magnitude(coarse_shape=(64, 64, 6), factor=2, sigma=0.04, seed=0):
    """A magnitude scan as a scanner stores it: acquired on ``coarse_shape``, k-space zero-filled by
    ``factor`` in-plane, complex Gaussian noise; returns (stored magnitude, noise-free stored image)."""
    rng = np.random.default_rng(seed)
    clean = _phantom(coarse_shape, rng)
    noisy = clean + sigma * (rng.standard_normal(coarse_shape) + 1j * rng.standard_normal(coarse_shape))

    def zero_fill(x):
        for axis in (0, 1):
            n = x.shape[axis]
            spec = np.fft.fftshift(np.fft.fft(x, axis=axis), axes=axis)
            pad = [(0, 0)] * x.ndim
            pad[axis] = ((factor - 1) * n // 2, (factor - 1) * n - (factor - 1) * n // 2)
            spec = np.pad(spec, pad)
            x = np.fft.ifft(np.fft.ifftshift(spec, axes=axis), axis=axis) * factor
        return x

    return np.abs(zero_fill(noisy)).astype(np.float32), np.abs(zero_fill(clean)).astype(np.float32)


def test_fourier_crop_is_the_inverse_of_zero_filling_and_keeps_the_field_of_view():
    n, m = 96, 48
    t_stored = (np.arange(n) + 0.5) / n  # voxel centres, field of view [0, 1]
    t_acquired = (np.arange(m) + 0.5) / m
    signal = lambda t: 1.0 + 0.5 * np.cos(2 * np.pi * 3 * t + 0.3) + 0.2 * np.sin(2 * np.pi * 17 * t)  # noqa: E731
    stored = np.tile(signal(t_stored)[:, None, None], (1, 4, 4))
    cropped = fourier_crop(stored, 0, m)
    assert cropped.shape == (m, 4, 4)
    np.testing.assert_allclose(cropped[:, 0, 0], signal(t_acquired), atol=1e-5)


def test_background_noise_is_the_rayleigh_sigma_where_the_wavelet_estimate_fails():
    stored, _ = zero_filled_magnitude(sigma=0.04)
    assert rayleigh_sigma(stored) == pytest.approx(0.04, rel=0.15)
    assert wavelet_mad_sigma(stored) < 0.6 * 0.04  # zero-filling hides the noise from the finest detail


def test_tissue_noise_matches_the_air_and_finds_noise_the_air_does_not_hold():
    rng = np.random.default_rng(3)
    clean = _phantom((96, 96, 6), rng)
    air = 0.03
    thermal = clean + air * (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape))
    assert tissue_sigma(np.abs(thermal), air, (0, 1)) == pytest.approx(air, rel=0.15)
    extra = 0.05 * rng.standard_normal(clean.shape) * (clean > 0.3)  # noise inside the head only
    assert tissue_sigma(np.abs(thermal) + extra, air, (0, 1)) == pytest.approx(np.hypot(air, 0.05), rel=0.15)
    assert tissue_sigma(np.abs(thermal) * 0.01, air, (0, 1)) is None  # no tissue well above the air's noise


def test_enhance_takes_the_tissue_noise_when_it_exceeds_the_air():
    from diffdeur_bids.enhance import EnhanceSettings, enhance

    stored, clean = zero_filled_magnitude(coarse_shape=(48, 48, 6), factor=2, sigma=0.03)
    rng = np.random.default_rng(1)
    coarse = fourier_crop(fourier_crop(stored, 0, 48), 1, 48)
    coarse = coarse + 0.06 * rng.standard_normal(coarse.shape).astype(np.float32) * (coarse > 0.3)
    settings = EnhanceSettings.preset("fast", method="linear", output_resolution=(2.0, 2.0, 4.0), device="cpu")
    res = enhance(coarse, np.diag([2.0, 2.0, 4.0, 1.0]), settings)
    assert res.info["noise_estimator"] == "tissue_detail"
    assert res.info["noise_sigma_air"] == pytest.approx(0.03, rel=0.2)
    assert res.info["noise_sigma_used"] == res.info["noise_sigma_tissue"] == pytest.approx(np.hypot(0.03, 0.06), rel=0.2)
    white = enhance(fourier_crop(fourier_crop(stored, 0, 48), 1, 48), np.diag([2.0, 2.0, 4.0, 1.0]), settings)
    assert white.info["noise_estimator"] == "rayleigh_background"


def test_simulated_and_skull_stripped_scans_keep_the_wavelet_estimate():
    rng = np.random.default_rng(1)
    clean = _phantom((48, 48, 24), rng)
    clipped = np.clip(clean + rng.normal(0, 0.04, clean.shape), 0, None)  # noise added after the magnitude
    assert rayleigh_sigma(clipped) is None
    assert wavelet_mad_sigma(clipped) == pytest.approx(0.04, rel=0.25)
    assert rayleigh_sigma(np.where(clean > 0, clipped, 0)) is None  # skull-stripped: no air left


def test_a_zero_filled_scan_is_found_and_put_back_on_its_acquired_grid():
    stored, _ = zero_filled_magnitude(coarse_shape=(64, 64, 6), factor=2)
    sigma = rayleigh_sigma(stored)
    assert [acquired_band(stored, axis, sigma) for axis in range(3)] == pytest.approx([0.5, 0.5, 1.0], abs=0.08)
    affine = np.diag([0.9, 0.9, 5.0, 1.0])
    acquired, acquired_affine, _ = to_acquired_grid(stored, affine, sigma)
    assert acquired.shape == (64, 64, 6)
    np.testing.assert_allclose(np.diag(acquired_affine)[:3], [1.8, 1.8, 5.0])
    # the same field of view: the first acquired voxel spans the first two stored ones
    np.testing.assert_allclose(acquired_affine @ [-0.5, -0.5, -0.5, 1], affine @ [-0.5, -0.5, -0.5, 1])
    rng = np.random.default_rng(2)
    white = np.abs(_phantom((128, 128, 6), rng) + 0.04 * (rng.standard_normal((128, 128, 6))
                                                            + 1j * rng.standard_normal((128, 128, 6))))
    assert [acquired_band(white, axis, rayleigh_sigma(white)) for axis in range(3)] == [1.0, 1.0, 1.0]


def test_rician_bias_is_removed_in_air_and_tissue_is_kept():
    rng = np.random.default_rng(3)
    sigma = 0.05
    air = np.abs(sigma * (rng.standard_normal(100_000) + 1j * rng.standard_normal(100_000)))
    tissue = np.abs(1.0 + sigma * (rng.standard_normal(100_000) + 1j * rng.standard_normal(100_000)))
    assert air.mean() == pytest.approx(1.25 * sigma, rel=0.02)
    assert unbias_rician(air, sigma).mean() < 0.5 * sigma
    assert unbias_rician(tissue, sigma).mean() == pytest.approx(1.0, abs=0.002)
    assert unbias_rician(np.zeros(5), sigma).tolist() == [0.0] * 5


def test_enhancing_a_zero_filled_scan_works_on_its_acquired_grid_and_keeps_the_stored_grid():
    from diffdeur_bids.enhance import EnhanceSettings, enhance, output_grid
    from diffdeur_bids.priors import load_prior, load_upsampler

    stored, clean = zero_filled_magnitude(coarse_shape=(48, 48, 6), factor=2, sigma=0.05)
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    settings = EnhanceSettings.preset("fast", steps=2, output_resolution=(1.0, 1.0, 4.0), device="cpu")
    res = enhance(stored, affine, settings, prior=load_prior(), upsampler=load_upsampler())
    want = output_grid(stored.shape, affine, (1.0, 1.0, 4.0))
    assert res.image.shape == want.shape == stored.shape
    np.testing.assert_allclose(res.affine, want.affine, atol=1e-6)
    assert res.info["acquired_shape"] == [48, 48, 6] and res.info["noise_estimator"] == "rayleigh_background"
    assert res.info["noise_sigma_used"] == pytest.approx(0.05, rel=0.2)
    head = clean > 0.3
    err_in = np.abs(stored - clean)[head].mean()
    err_out = np.abs(res.image - clean)[head].mean()
    assert err_out < 0.8 * err_in  # closer to the noise-free scan than the input
    on_stored_grid = enhance(stored, affine, settings.replace(acquired_grid=False), prior=load_prior(),
                             upsampler=load_upsampler())
    assert err_out < 0.8 * np.abs(on_stored_grid.image - clean)[head].mean()  # the acquired grid is what helps
