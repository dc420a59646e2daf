"""The method on arrays: degradation model, simulation, grids, INR, solver, baselines, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffdeur_bids.enhance import (
    CheckpointError,
    EnhanceSettings,
    InvalidInputError,
    MissingDependencyError,
    Prior,
    PriorConfig,
    enhance,
    output_grid,
)
from diffdeur_bids.enhance.forward import Degradation
from diffdeur_bids.enhance.noise import wavelet_mad_sigma
from diffdeur_bids.enhance.grids import fidelity_grid, subdivided_grid
from diffdeur_bids.enhance.inr import FidelityProblem, fit_inr, make_inr, make_optimizer, render
from diffdeur_bids.enhance.start import damped_projection
from diffdeur_bids.evaluation.metrics import score_volume
from diffdeur_bids.evaluation.protocol import simulate_lowfield
from diffdeur_bids.priors import load_prior, load_upsampler
from diffdeur_bids.priors.checkpoint import read_prior, save_prior
from diffdeur_bids.priors.registry import SHIPPED


@pytest.fixture(scope="module")
def simulated(mni_small):
    hf, aff = mni_small
    return simulate_lowfield(hf, aff, k=(1, 1, 3), psf_sigma=0.5, noise_sigma=0.04, seed=0)


def test_forward_adjoint_dot_product():
    gen = torch.Generator().manual_seed(0)
    A = Degradation((2, 3, 1), psf_sigma=(0.5, 1.0, 0.7))
    x = torch.randn(10, 12, 7, generator=gen, dtype=torch.float64).float()
    y = torch.randn(5, 4, 7, generator=gen)
    lhs = float((A(x) * y).sum())
    rhs = float((x * A.adjoint(y)).sum())
    assert A(x).shape == (5, 4, 7)
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_forward_matches_scipy_protocol():
    from scipy.ndimage import gaussian_filter

    x = np.random.default_rng(1).random((8, 6, 12)).astype(np.float32)
    ref = gaussian_filter(x.reshape(4, 2, 3, 2, 3, 4).mean(axis=(1, 3, 5)), 0.5, mode="nearest")
    ours = Degradation((2, 2, 4), 0.5)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_simulation_follows_protocol(mni_small):
    hf, aff = mni_small
    lf, lf_aff, gt, gt_aff = simulate_lowfield(hf, aff, k=(2, 2, 4), psf_sigma=0.5, noise_sigma=0.04, seed=3)
    assert gt.shape == (56, 60, 48) and lf.shape == (28, 30, 12)
    assert gt.max() <= 1 and lf.min() >= 0
    np.testing.assert_allclose(gt_aff, aff)
    # the centre of LF voxel (0,0,0) is the mean of the centres of its 2x2x4 HF sub-voxels
    hf_centres = np.array([aff @ [i, j, k, 1] for i in range(2) for j in range(2) for k in range(4)])[:, :3]
    np.testing.assert_allclose(lf_aff[:3, 3], hf_centres.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(np.sqrt((lf_aff[:3, :3] ** 2).sum(0)), [4, 4, 8])
    # the HF grid is the LF grid subdivided by k
    grid = subdivided_grid(lf.shape, lf_aff, (2, 2, 4))
    assert grid.shape == gt.shape
    np.testing.assert_allclose(grid.affine, gt_aff, atol=1e-9)
    # seeded noise
    again = simulate_lowfield(hf, aff, k=(2, 2, 4), seed=3)[0]
    np.testing.assert_array_equal(lf, again)


def test_noise_estimate_recovers_sigma(mni_small):
    hf, aff = mni_small
    for sigma in (0.02, 0.05):
        lf = simulate_lowfield(hf, aff, k=(1, 1, 1), psf_sigma=0.5, noise_sigma=sigma, seed=0)[0]
        assert wavelet_mad_sigma(lf) == pytest.approx(sigma, rel=0.25)


def test_output_grid_integer_non_integer_and_oblique():
    lf_aff = np.diag([2.0, 2.0, 6.0, 1.0])
    g = output_grid((10, 12, 8), lf_aff, 1.0)
    assert g.shape == (20, 24, 48) and g.subdivision == (2, 2, 6)
    # 1.5 mm -> 1 mm: not an integer factor, the FOV is still covered
    g = output_grid((10, 10, 10), np.diag([1.5, 1.5, 1.5, 1.0]), 1.0)
    assert g.shape == (15, 15, 15) and g.subdivision is None
    np.testing.assert_allclose(np.sqrt((g.affine[:3, :3] ** 2).sum(0)), [1, 1, 1])
    lf_fov_corner = np.diag([1.5, 1.5, 1.5, 1.0]) @ [-0.5, -0.5, -0.5, 1]
    out_corner = g.affine @ [-0.5, -0.5, -0.5, 1]
    np.testing.assert_allclose(out_corner, lf_fov_corner)
    assert fidelity_grid((10, 10, 10), np.diag([1.5, 1.5, 1.5, 1.0]), 1.0).subdivision == (2, 2, 2)
    # oblique: the output keeps the LF orientation and splits its voxels
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0, 5], [s, c, 0, -3], [0, 0, 1, 2], [0, 0, 0, 1.0]]) @ np.diag([2, 2, 4, 1.0])
    g = output_grid((8, 8, 8), rot, 1.0)
    assert g.subdivision == (2, 2, 4)
    np.testing.assert_allclose(g.affine[:3, :3], rot[:3, :3] / [2, 2, 4])


def test_inr_fit_lowers_residual_and_renders_other_grid(simulated):
    lf, lf_aff, gt, _ = simulated
    y = torch.from_numpy(lf)
    fid = output_grid(lf.shape, lf_aff, (2.0, 2.0, 2.0))
    A = Degradation(fid.subdivision, 0.5)
    inr = make_inr(lf.shape, fid, fid, "cpu", init_value=float(y.mean()))
    problem = FidelityProblem(y, A, 0.04, fid, fid)
    opt = make_optimizer(inr, 0.02)
    first = fit_inr(inr, problem, opt, 1)
    last = fit_inr(inr, problem, opt, 30)
    assert last < 0.5 * first
    other = output_grid(lf.shape, lf_aff, 3.0)
    img = render(inr, other)
    assert tuple(img.shape) == other.shape
    assert np.allclose(np.sqrt((other.affine[:3, :3] ** 2).sum(0)), 3.0)
    assert torch.isfinite(img).all()


@pytest.mark.parametrize("quality", ["fast"])
def test_diffdeur_beats_linear_interpolation(simulated, quality):
    lf, lf_aff, gt, gt_aff = simulated
    prior = load_prior(device="cpu")
    common = dict(output_resolution=2.0, device="cpu", seed=0)
    lin = enhance(lf * 700, lf_aff, EnhanceSettings.preset(quality, method="linear", **common))
    upsampler = load_upsampler()
    res = enhance(lf * 700, lf_aff, EnhanceSettings.preset(quality, **common), prior=prior, upsampler=upsampler)
    assert res.image.shape == gt.shape
    np.testing.assert_allclose(res.affine, gt_aff, atol=1e-6)
    assert 300 < np.percentile(res.image, 99) < 1400  # the input's units are kept
    s_lin = score_volume(lin.image, lin.affine, gt, gt_aff, lpips=False)
    s_dd = score_volume(res.image, res.affine, gt, gt_aff, lpips=False)
    assert s_dd["psnr"] > s_lin["psnr"] + 0.2
    assert s_dd["ssim"] > s_lin["ssim"] + 0.01
    assert res.info["weights_sha256"] == prior.sha256 and res.info["upsampler_sha256"] == upsampler.sha256
    assert res.info["noise_sigma_estimated"] == pytest.approx(0.04 * 700, rel=0.3)


def test_seeded_runs_are_deterministic_and_samples_give_uncertainty(simulated):
    lf, lf_aff, _, _ = simulated
    s = EnhanceSettings.preset("fast", steps=2, output_resolution=2.0, device="cpu", seed=7)
    a = enhance(lf, lf_aff, s, prior=load_prior(), upsampler=load_upsampler())
    b = enhance(lf, lf_aff, s, prior=load_prior(), upsampler=load_upsampler())
    np.testing.assert_array_equal(a.image, b.image)
    assert a.std is None
    c = enhance(lf, lf_aff, s.replace(num_samples=2), prior=load_prior(), upsampler=load_upsampler())
    assert c.std is not None and c.std.shape == c.image.shape
    assert float(c.std.max()) > 0 and np.all(c.std >= 0)


@pytest.mark.parametrize("method", ["linear", "cubic", "inr", "prior_cf", "dps"])
def test_baselines_share_the_signature(simulated, method):
    lf, lf_aff, gt, gt_aff = simulated
    s = EnhanceSettings.preset("fast", method=method, steps=2, dps_steps=3, inr_init_iters=5,
                               output_resolution=2.0, device="cpu")
    res = enhance(lf, lf_aff, s, prior=load_prior())
    assert res.image.shape == gt.shape
    np.testing.assert_allclose(res.affine, gt_aff, atol=1e-6)
    assert np.isfinite(res.image).all()


def test_cubic_bm3d_denoises_or_names_its_missing_package(simulated):
    lf, lf_aff, gt, gt_aff = simulated
    settings = EnhanceSettings(method="cubic_bm3d", output_resolution=2.0, device="cpu")
    try:
        import bm3d  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="pip install"):
            enhance(lf, lf_aff, settings)
        return
    res = enhance(lf, lf_aff, settings)
    cubic = enhance(lf, lf_aff, settings.replace(method="cubic"))
    assert res.image.shape == gt.shape
    s_bm3d = score_volume(res.image, res.affine, gt, gt_aff, lpips=False)
    s_cubic = score_volume(cubic.image, cubic.affine, gt, gt_aff, lpips=False)
    assert s_bm3d["ssim"] > s_cubic["ssim"] + 0.02  # BM3D removes noise that cubic interpolation keeps


def test_checkpoint_round_trip_and_bad_files(tmp_path):
    torch.manual_seed(0)
    prior = Prior(PriorConfig(base_channels=8, channel_mults=(1, 2)))
    path = tmp_path / "p.safetensors"
    sha = save_prior(prior, path, {"note": "test"})
    loaded = read_prior(path)
    assert loaded.sha256 == sha and loaded.metadata["note"] == "test"
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(loaded(x, torch.tensor([0.1])), prior(x, torch.tensor([0.1])))
    with pytest.raises(CheckpointError, match="sha256"):
        read_prior(path, expected_sha256="0" * 64)
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read"):
        read_prior(truncated)
    with pytest.raises(CheckpointError, match="not found"):
        read_prior(tmp_path / "missing.safetensors")
    # a file whose tensors do not fit the architecture it declares
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    state = load_file(str(path))
    state.pop(next(iter(state)))
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="architecture"):
        read_prior(bad)
    save_file(load_file(str(path)), str(bad), metadata={**meta, "format_version": "99"})
    with pytest.raises(CheckpointError, match="version"):
        read_prior(bad)


def test_shipped_prior_loads_and_matches_its_card():
    prior = load_prior("2d-v2", device="cpu")
    assert prior.num_parameters > 500_000
    assert prior.sha256 is not None


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((0, 4, 4)), "too small"),
        (np.ones((16, 16)), "3D"),
        (np.ones((8, 8, 8, 3)), "4D"),
        (np.zeros((8, 8, 8)), "constant"),
        (np.full((8, 8, 8), np.nan), "NaN"),
    ],
)
def test_invalid_inputs_get_clear_errors(data, message):
    with pytest.raises(InvalidInputError, match=message):
        enhance(data, np.eye(4), EnhanceSettings(method="linear", device="cpu"))


def test_a_few_nan_voxels_are_zeroed_and_reported(simulated):
    lf, lf_aff, _, _ = simulated
    bad = lf.copy()
    bad[0, 0, 0] = np.nan
    bad[1, 0, 0] = -5
    res = enhance(bad, lf_aff, EnhanceSettings(method="linear", output_resolution=2.0, device="cpu"))
    assert np.isfinite(res.image).all()
    assert res.info["nonfinite_voxels_set_to_zero"] == 1
    assert res.info["negative_voxels_clipped"] == 1


def test_shipped_prior_denoises_a_noisy_mni_slice(mni_small):
    from diffdeur_bids.evaluation.protocol import normalise_ground_truth
    from diffdeur_bids.enhance.prior import denoise_slices

    prior = load_prior(device="cpu")
    assert prior.sha256 == SHIPPED["2d-v2"].expected_sha256()
    clean = torch.from_numpy(normalise_ground_truth(mni_small[0])[:, :, 24])[None]
    gen = torch.Generator().manual_seed(0)
    for sigma in (0.03, 0.1):
        noisy = clean + sigma * torch.randn(clean.shape, generator=gen)
        den = denoise_slices(prior, noisy, sigma)
        assert float((den - clean).pow(2).mean()) < 0.5 * float((noisy - clean).pow(2).mean())


def test_damped_projection_reaches_the_data_and_damping_pulls_towards_the_start():
    gen = torch.Generator().manual_seed(3)
    A = Degradation((1, 2, 3), psf_sigma=0.5)
    start = torch.rand(8, 10, 12, generator=gen)
    data = torch.rand(8, 5, 4, generator=gen)
    exact = damped_projection(A, start, data, damping=0.0, iters=200)
    damped = damped_projection(A, start, data, damping=1.0, iters=200)
    assert float((A(exact) - data).abs().max()) < 1e-3  # exact projection: consistent with the data
    assert float((A(damped) - data).norm()) > 10 * float((A(exact) - data).norm())
    assert float((damped - start).norm()) < float((exact - start).norm())
    huge = damped_projection(A, start, data, damping=1e6, iters=200)
    assert float((huge - start).abs().max()) < 1e-4  # infinite damping: the start itself


def test_data_consistent_start_beats_cubic_interpolation(simulated):
    lf, lf_aff, gt, gt_aff = simulated
    common = dict(output_resolution=2.0, device="cpu")
    start = enhance(lf, lf_aff, EnhanceSettings.preset("fast", method="start", learned_upsampling=False, **common),
                    prior=load_prior())
    cubic = enhance(lf, lf_aff, EnhanceSettings.preset("fast", method="cubic", **common))
    s_start = score_volume(start.image, start.affine, gt, gt_aff, lpips=False)
    s_cubic = score_volume(cubic.image, cubic.affine, gt, gt_aff, lpips=False)
    assert s_start["psnr"] > s_cubic["psnr"] + 0.3
    assert s_start["ssim"] > s_cubic["ssim"] + 0.03
    assert start.info["weights_sha256"] == load_prior(device="cpu").sha256


@pytest.mark.parametrize("field, value", [("zeta", 1.5), ("average_fraction", -0.1), ("average_fraction", 2.0),
                                          ("start_damping", -1.0), ("steps", 0), ("output_resolution", 0.0),
                                          ("upsampled_pull", -1.0), ("upsampled_init_iters", 0)])
def test_settings_refuse_out_of_range_values(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0] if field != "steps" else "at least 1"):
        EnhanceSettings.preset("default", **{field: value}).validate()


def test_every_method_in_the_table_runs_and_ticks_as_it_declares(simulated):
    """One table drives the methods: each entry runs through ``enhance`` and makes the ticks it declares."""
    from diffdeur_bids.enhance import METHODS

    lf, lf_aff, gt, _ = simulated
    small = lf[:12, :12, :6]
    for method in METHODS.values():
        if method.name == "cubic_bm3d":
            pytest.importorskip("bm3d")
        settings = EnhanceSettings.preset("fast", method=method.name, steps=2, dps_steps=2, inr_init_iters=2,
                                          output_resolution=2.0, device="cpu", num_samples=2)
        ticks = []
        res = enhance(small, lf_aff, settings, prior=load_prior(), upsampler=load_upsampler(),
                      progress=lambda done, total, *_: ticks.append(total))
        assert res.image.shape == (12, 12, 18) and np.isfinite(res.image).all(), method.name
        assert len(ticks) == ticks[0] == 2 * method.ticks(settings), method.name


def test_a_method_that_needs_a_prior_says_how_to_get_one(simulated):
    lf, lf_aff, _, _ = simulated
    with pytest.raises(ValueError, match=r"needs a prior: pass prior=diffdeur_bids.priors.load_prior\(\)"):
        enhance(lf, lf_aff, EnhanceSettings.preset("fast", output_resolution=2.0, device="cpu"))
    assert enhance(lf, lf_aff, EnhanceSettings(method="linear", output_resolution=2.0, device="cpu")).info["prior"] is None


def test_unknown_method_is_refused_with_the_table_of_names():
    from diffdeur_bids.enhance import METHODS, check_settings

    with pytest.raises(ValueError, match="unknown method 'nope'; choose one of " + ", ".join(METHODS)):
        check_settings(EnhanceSettings(method="nope"))


def test_training_writes_a_prior_that_loads_and_records_how_it_was_made(tmp_path):
    import json

    from diffdeur_bids.priors.train import TrainConfig, train_prior

    volumes = [np.random.default_rng(0).random((40, 40, 40)).astype(np.float32)]
    final = train_prior(volumes, volumes, tmp_path, TrainConfig(steps=2, batch_size=2, patch=32), torch.device("cpu"))
    prior = read_prior(final)
    meta = json.loads((tmp_path / "prior_metadata.json").read_text())
    assert meta["training_steps"] == 2 and meta["parameters"] == prior.num_parameters > 500_000
    assert prior.metadata["training_steps"] == 2 and (tmp_path / "loss_log.csv").is_file()


def test_diffdeur_estimates_the_time_left_from_its_first_progress_line(simulated):
    """After the start, the expected step cost (its INR iterations, the prior's cost per voxel) gives an estimate."""
    lf, lf_aff, _, _ = simulated
    ticks = []
    settings = EnhanceSettings.preset("fast", steps=2, inr_init_iters=4, output_resolution=2.0, device="cpu")
    enhance(lf[:24, :24, :8], lf_aff, settings, prior=load_prior(), upsampler=load_upsampler(),
            progress=lambda *tick: ticks.append(tick))
    assert [t[0] for t in ticks] == [1, 2, 3]
    assert ticks[0][3] is not None and ticks[0][3] > 0
    assert ticks[-1][3] == 0.0


def test_the_progress_bar_shows_the_scan_and_its_steps(simulated, capsys):
    from diffdeur_bids.interfaces.enhance import _run_enhance

    lf, lf_aff, _, _ = simulated
    settings = EnhanceSettings.preset("fast", method="linear", output_resolution=2.0, device="cpu")
    _run_enhance("sub-01_T1w.nii.gz", lf, lf_aff, settings, None, progress_bar=True)
    err = capsys.readouterr().err
    assert "sub-01_T1w.nii.gz: 1/1" in err and "s left" in err
    _run_enhance("sub-01_T1w.nii.gz", lf, lf_aff, settings, None)
    assert "1/1" not in capsys.readouterr().err
