"""The start's learned upsampler: slice families, files, training, and what it does to the start."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffdeur_bids.enhance import EnhanceSettings, enhance
from diffdeur_bids.enhance.errors import CheckpointError
from diffdeur_bids.enhance.prior import PriorConfig
from diffdeur_bids.enhance.upsampler import SliceUpsampler, slice_families, upsample
from diffdeur_bids.evaluation.metrics import score_volume
from diffdeur_bids.evaluation.protocol import simulate_lowfield
from diffdeur_bids.priors import load_prior, load_upsampler
from diffdeur_bids.priors.checkpoint import read_prior, read_upsampler, save_upsampler
from diffdeur_bids.priors.registry import UPSAMPLER


def test_slice_families_contain_the_thick_axis_and_isotropic_data_is_left_alone():
    assert slice_families((1, 1, 3)) == [(1, 2, 0), (0, 2, 1)]
    assert slice_families((2, 4, 2)) == [(2, 1, 0), (0, 1, 2)]
    assert slice_families((1, 1, 1)) == [] == slice_families((2, 2, 2)) == slice_families((2, 2, 1))
    x = torch.rand(6, 7, 8)
    assert upsample(SliceUpsampler(), x, (1, 1, 1)) is x


def test_each_family_sees_its_slices_with_rows_along_the_thick_axis():
    """A network that returns its input plus the row index marks which axis it took as rows."""

    class RowIndex(SliceUpsampler):
        def forward(self, x, log_k):
            assert torch.allclose(log_k[0], torch.log(torch.tensor([3.0, 1.0])))
            return x + torch.arange(x.shape[-2], dtype=x.dtype).view(1, 1, -1, 1)

    x = torch.zeros(5, 6, 9)
    out = upsample(RowIndex(), x, (1, 1, 3))
    assert out.shape == x.shape
    assert torch.allclose(out, torch.arange(9.0).view(1, 1, 9).expand(5, 6, 9))


def test_a_network_with_context_sees_the_neighbouring_slices_edges_repeated():
    """With two neighbours on each side, channel 0 is the slice two before along the slicing axis."""
    class TwoBefore(SliceUpsampler):
        def forward(self, x, log_k):
            assert x.shape[1] == 5
            return x[:, :1]

    x = torch.arange(7.0).view(1, 7, 1).expand(4, 7, 9).contiguous()  # the value is the index along axis 1
    out = upsample(TwoBefore(PriorConfig(base_channels=8, image_channels=5)), x, (1, 1, 3))
    # family (1, 2, 0) slices along axis 1 (two before, the edge repeated); family (0, 2, 1) along axis 0 (constant)
    expected = (torch.tensor([0.0, 0, 0, 1, 2, 3, 4]).view(1, 7, 1) + x) / 2
    assert torch.equal(out, expected.expand(4, 7, 9))


def test_upsampler_files_round_trip_and_are_not_taken_for_a_prior(tmp_path):
    net = SliceUpsampler(metadata={"note": "test"})
    path = tmp_path / "up.safetensors"
    sha = save_upsampler(net, path)
    back = read_upsampler(path, expected_sha256=sha)
    assert back.metadata["note"] == "test" and back.sha256 == sha
    x, k = torch.rand(2, 1, 32, 32), torch.zeros(2, 2)
    assert torch.equal(back(x, k), net.eval()(x, k))
    with pytest.raises(CheckpointError, match="is not a diffdeur prior"):
        read_prior(path)
    with pytest.raises(CheckpointError, match="sha256"):
        read_upsampler(path, expected_sha256="0" * 64)


def test_shipped_upsampler_matches_its_recorded_hash_and_card():
    up = load_upsampler()
    assert up.sha256 == UPSAMPLER.expected_sha256()
    assert up.sha256 in (UPSAMPLER.path.parent / "MODEL_CARD.md").read_text()


def test_learned_upsampling_says_what_it_needs(mni_small):
    lf, lf_aff, _, _ = simulate_lowfield(*mni_small, k=(1, 1, 3), seed=0)
    settings = EnhanceSettings.preset("fast", method="start", output_resolution=2.0, learned_upsampling=True)
    with pytest.raises(ValueError, match="load_upsampler"):
        enhance(lf, lf_aff, settings, prior=load_prior())


@pytest.mark.parametrize("k", [(1, 1, 3), (2, 2, 4)])
def test_learned_upsampling_improves_the_start(mni_small, k):
    hf, aff = mni_small
    if k == (2, 2, 4):  # the 1 mm track's factors, on the template at 1 mm
        nilearn_datasets = pytest.importorskip("nilearn.datasets")
        img = nilearn_datasets.load_mni152_template(resolution=1)
        hf = np.asarray(img.get_fdata(), dtype=np.float32)[40:144, 60:180, 50:146]
        aff = img.affine.copy()
        aff[:3, 3] = img.affine[:3, :3] @ [40, 60, 50] + img.affine[:3, 3]
    lf, lf_aff, gt, gt_aff = simulate_lowfield(hf, aff, k=k, seed=0)
    voxel = float(abs(aff[0, 0]))
    scores = {}
    for on in (False, True):
        settings = EnhanceSettings.preset("fast", method="start", output_resolution=voxel, learned_upsampling=on)
        res = enhance(lf, lf_aff, settings, prior=load_prior(), upsampler=load_upsampler())
        scores[on] = score_volume(res.image, res.affine, gt, gt_aff, lpips=False)
        assert res.info["upsampler_sha256"] == (load_upsampler().sha256 if on else None)
    assert scores[True]["psnr"] > scores[False]["psnr"] + 0.3
    assert scores[True]["ssim"] > scores[False]["ssim"]


def test_upsampler_training_writes_weights_that_load(tmp_path, mni_small):
    from diffdeur_bids.priors.train_upsampler import UpsamplerTrainConfig, make_pair, train_upsampler

    hf, aff = mni_small
    pair = make_pair(hf, aff, (1, 1, 3), 0.04, load_prior(), seed=0)
    assert pair["start"].shape == pair["target"].shape and pair["k"].tolist() == [1, 1, 3]
    cfg = UpsamplerTrainConfig(steps=2, batch_size=2, patch=32)
    final = train_upsampler([pair], [pair], tmp_path, cfg, torch.device("cpu"))
    meta = json.loads((tmp_path / "upsampler_metadata.json").read_text())
    assert meta["training_steps"] == 2 and read_upsampler(final).num_parameters == meta["parameters"]
    assert set(meta["final_validation_mse"]) == {"start", "upsampled"}
    # with neighbouring slices as channels: the file declares them and the start is the centre slice
    cfg = UpsamplerTrainConfig(steps=2, batch_size=2, patch=32, net=PriorConfig(base_channels=8, image_channels=5))
    final = train_upsampler([pair], [pair], tmp_path / "context", cfg, torch.device("cpu"))
    net = read_upsampler(final)
    assert net.context == 2
    with_context = json.loads((tmp_path / "context" / "upsampler_metadata.json").read_text())
    # the same patches are drawn whatever the context (validation losses compare across networks)
    assert with_context["final_validation_mse"]["start"] == meta["final_validation_mse"]["start"]


def test_a_correction_inr_renders_its_base_until_the_data_move_it():
    """DiffDeuR's INR on an upsampled start is a correction: it starts at exactly that start and its fit
    then lowers the data term from there."""
    from diffdeur_bids.enhance.forward import Degradation
    from diffdeur_bids.enhance.grids import subdivided_grid
    from diffdeur_bids.enhance.inr import FidelityProblem, fit_inr, make_inr, make_optimizer, render

    gen = torch.Generator().manual_seed(0)
    y = torch.rand(10, 12, 4, generator=gen)
    fid = subdivided_grid(y.shape, np.eye(4), (1, 1, 3))
    base = torch.rand(fid.shape, generator=gen)
    inr = make_inr(y.shape, fid, fid, "cpu", init_value=5.0, correction=True)
    assert torch.equal(render(inr, fid, base), base)
    problem = FidelityProblem(y, Degradation((1, 1, 3), 0.5), 0.05, fid, fid, base=(base, base))
    first = fit_inr(inr, problem, make_optimizer(inr, 0.05), 1)
    last = fit_inr(inr, problem, make_optimizer(inr, 0.05), 30)
    assert last < 0.5 * first
    assert not torch.equal(render(inr, fid, base), base)


@pytest.mark.parametrize("resolution", [2.0, 1.5])  # 1.5 mm: the output grid is not the fidelity grid
def test_diffdeur_keeps_what_the_upsampler_restored(mni_small, resolution):
    lf, lf_aff, gt, gt_aff = simulate_lowfield(*mni_small, k=(1, 1, 3), seed=0)
    scores = {}
    for on in (False, True):
        settings = EnhanceSettings.preset("fast", output_resolution=resolution, learned_upsampling=on, threads=2)
        res = enhance(lf, lf_aff, settings, prior=load_prior(), upsampler=load_upsampler())
        scores[on] = score_volume(res.image, res.affine, gt, gt_aff, lpips=False)
        assert np.isfinite(res.image).all() and res.info["upsampler"] == ("upsampler-v1" if on else None)
    assert scores[True]["psnr"] > scores[False]["psnr"] + 0.3, scores
    assert scores[True]["ssim"] > scores[False]["ssim"], scores


def test_a_scan_without_thick_slices_is_not_upsampled(mni_small):
    """2 mm voxels enhanced to 1 mm in every direction (k 2, 2, 2): nothing lies between thick slices, and the
    upsampler never saw such a scan, so the result is the start without it, and the sidecar says so."""
    lf, lf_aff, _, _ = simulate_lowfield(*mni_small, k=(2, 2, 2), seed=0)
    runs = [enhance(lf, lf_aff, EnhanceSettings.preset("fast", method="start", output_resolution=2.0,
                                                       learned_upsampling=on), prior=load_prior(), upsampler=load_upsampler())
            for on in (True, False)]
    np.testing.assert_array_equal(runs[0].image, runs[1].image)
    assert runs[0].info["upsampler"] is None
