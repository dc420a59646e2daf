"""Several thick-slice stacks of one contrast fused into one volume (sim-lf-v2): operator, registration, fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from diffdeur_bids.enhance import EnhanceSettings, RegistrationError, enhance
from diffdeur_bids.enhance.forward import Degradation
from diffdeur_bids.enhance.grids import output_grid, sample_points, sample_points_adjoint
from diffdeur_bids.enhance.registration import register
from diffdeur_bids.enhance.stacks import StackOperator
from diffdeur_bids.evaluation.metrics import registration_error, score_volume
from diffdeur_bids.evaluation.protocol import STACKS, rigid_about, simulate_stacks
from diffdeur_bids.priors import load_prior

VOXEL = (6.0, 6.0, 16.0)  # the protocol's 1.5 x 1.5 x 5 mm, scaled for a 4 mm head that runs in seconds


@pytest.fixture(scope="module")
def head_4mm():
    """The MNI152 head (2 mm template averaged to 4 mm, RAS+): air around it, as the stacks see a head."""
    nilearn_datasets = pytest.importorskip("nilearn.datasets")
    img = nilearn_datasets.load_mni152_template(resolution=2)
    data = np.asarray(img.get_fdata(), dtype=np.float32)[:90, :108, :90]
    data = data.reshape(45, 2, 54, 2, 45, 2).mean(axis=(1, 3, 5))
    return data, img.affine @ np.diag([2.0, 2.0, 2.0, 1.0]) @ np.r_[np.c_[np.eye(3), [0.25, 0.25, 0.25]], [[0, 0, 0, 1]]]


@pytest.fixture(scope="module")
def stacks(head_4mm):
    return simulate_stacks(*head_4mm, seed=3, voxel_mm=VOXEL)


@pytest.mark.parametrize("threads", [1, 3])
def test_points_split_over_threads_read_and_transpose_as_one_grid_sample(threads):
    """The points go to grid_sample in one batch per thread (140 of them: not a multiple of 3); the values
    are exactly those of one call, and the adjoint is its transpose."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((7, 9, 11), generator=gen, dtype=torch.float64)
    points = torch.rand((1, 5, 4, 7, 3), generator=gen, dtype=torch.float64) * 2.2 - 1.1  # some outside: edges
    y = torch.rand((5, 4, 7), generator=gen, dtype=torch.float64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        values = sample_points(x, points)
        back = sample_points_adjoint(y, points, x.shape)
    finally:
        torch.set_num_threads(before)
    one_call = torch.nn.functional.grid_sample(x[None, None], points, mode="bilinear", padding_mode="border",
                                               align_corners=True)[0, 0]
    assert values.shape == (5, 4, 7) and torch.equal(values, one_call)
    assert back.shape == x.shape
    assert float((y * values).sum()) == pytest.approx(float((back * x).sum()), rel=1e-12)


def _centre(stack) -> np.ndarray:
    return (stack["affine"] @ np.r_[(np.asarray(stack["lf"].shape) - 1) / 2.0, 1.0])[:3]


def test_simulated_stacks_follow_the_protocol(stacks, head_4mm):
    assert [s["name"] for s in stacks["stacks"]] == list(STACKS)
    np.testing.assert_array_equal(stacks["stacks"][0]["motion"], np.eye(4))
    for s in stacks["stacks"]:
        vox = np.sqrt((s["affine"][:3, :3] ** 2).sum(0))
        np.testing.assert_allclose(vox, VOXEL)
        np.testing.assert_allclose(_centre(s), _centre(stacks["stacks"][0]), atol=1e-9)  # centred on the head
        thick_world_axis = int(np.argmax(np.abs(s["affine"][:3, 2])))
        assert thick_world_axis == STACKS[s["name"]][2]
    for s in stacks["stacks"][1:]:
        err = registration_error(np.eye(4), s["motion"], _centre(s))
        assert 0 < err["angle_deg"] <= 3.0 + 1e-9 and 0 < err["corner_mm"]


def test_registration_error_of_a_known_transform():
    centre = np.array([10.0, -5.0, 3.0])
    shift = rigid_about([0, 0, 0], [3.0, 4.0, 0.0], centre)
    assert registration_error(shift, np.eye(4), centre) == pytest.approx({"corner_mm": 5.0, "angle_deg": 0.0}, abs=1e-9)
    turn = rigid_about([0, 0, np.deg2rad(2.0)], [0, 0, 0], centre)
    err = registration_error(turn, np.eye(4), centre)
    assert err["angle_deg"] == pytest.approx(2.0)
    assert err["corner_mm"] == pytest.approx(2 * np.sin(np.deg2rad(1.0)) * 80 * np.sqrt(2), rel=1e-6)


def test_stack_operator_on_its_own_subdivided_grid_is_the_block_mean_and_psf():
    affine = np.diag([1.5, 1.5, 5.0, 1.0])
    affine[:3, 3] = [3.0, -4.0, 10.0]
    out = output_grid((20, 24, 6), affine, (0.75, 0.75, 1.0))
    op = StackOperator(out, (20, 24, 6), affine, 0.5, [0, 0, 0], "cpu")
    assert op.k == (2, 2, 5)
    x = torch.rand(out.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op(x), Degradation((2, 2, 5), (0.5, 0.5, 0.0))(x), atol=1e-5, rtol=0)


def test_stack_operator_adjoint_passes_the_dot_product_test_for_an_oblique_moved_stack():
    out = output_grid((20, 24, 6), np.diag([1.5, 1.5, 5.0, 1.0]), 1.0)
    oblique = np.eye(4)
    oblique[:3, :3] = Rotation.from_rotvec([0.3, 0.1, -0.2]).as_matrix() @ np.diag([1.5, 5.0, 1.5])
    oblique[:3, 3] = [-2.0, 3.0, 1.0]
    op = StackOperator(out, (18, 6, 22), oblique, 0.5, [10.0, 10.0, 10.0], "cpu")
    op.params = torch.tensor([1.0, -2.0, 0.5, 1.0, 0.3, -0.7], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(out.shape, generator=gen), torch.rand((18, 6, 22), generator=gen)
    lhs, rhs = float((op(x) * y).sum()), float((x * op.adjoint(y)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-5)
    assert abs(lhs) > 1.0


def test_an_unmoved_reference_is_read_by_upsampling_with_the_values_of_grid_sample():
    """The reference stack (never moved) takes the separable path; moved, or any other stack, grid_sample's."""
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_rotvec([0.2, -0.1, 0.3]).as_matrix() @ np.diag([1.5, 1.5, 5.0])
    out = output_grid((20, 24, 6), affine, 1.0)  # 1.5 mm voxels on a 1 mm grid: not a subdivision
    op = StackOperator(out, (20, 24, 6), affine, 0.5, [0, 0, 0], "cpu")
    assert op._upsampling()
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(out.shape, generator=gen), torch.rand((20, 24, 6), generator=gen)
    fast = op(x), op.adjoint(y)
    leaf = x.clone().requires_grad_(True)
    (op(leaf) * y).sum().backward()  # autograd takes the upsampling's own transpose
    torch.testing.assert_close(leaf.grad, fast[1], atol=1e-6, rtol=0)
    op.params = torch.tensor([0.0, 0.0, 0.0, 1e-9, 0.0, 0.0], dtype=torch.float64)  # moved: grid_sample's path
    assert not op._upsampling()
    torch.testing.assert_close(fast[0], op(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(fast[1], op.adjoint(y), atol=1e-5, rtol=0)
    assert float((fast[0] * y).sum()) == pytest.approx(float((x * fast[1]).sum()), rel=1e-5)
    other = StackOperator(out, (20, 6, 24), affine @ np.eye(4)[[0, 2, 1, 3]], 0.5, [0, 0, 0], "cpu")
    assert not other._upsampling()


def test_a_moved_stack_image_is_read_back_at_the_output_voxels_through_its_motion():
    """``to_output`` is the inverse reading of ``sample``: a linear ramp (which trilinear interpolation keeps
    exactly) sampled at a moved oblique stack's sub-voxel points comes back on the output grid wherever the
    stack covers it; the motion taken the wrong way round would shift it by millimetres."""
    out = output_grid((20, 24, 8), np.diag([1.5, 1.5, 5.0, 1.0]), 1.0)
    oblique = np.eye(4)
    oblique[:3, :3] = Rotation.from_rotvec([0.2, 0.1, -0.1]).as_matrix() @ np.diag([1.5, 5.0, 1.5])
    oblique[:3, 3] = [-3.0, -2.0, 2.0]
    op = StackOperator(out, (22, 9, 26), oblique, 0.5, [14.0, 18.0, 20.0], "cpu")
    op.params = torch.tensor([2.0, -1.5, 1.0, 1.5, -1.0, 0.8], dtype=torch.float64)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij"), -1)
    world = index @ out.affine[:3, :3].T + out.affine[:3, 3]
    ramp = torch.from_numpy((world @ [0.03, -0.02, 0.05] + 1.0).astype(np.float32))
    fine = op.sample(ramp)
    back, inside = op.to_output(fine)
    core = inside.bool() & torch.from_numpy((index > 1).all(-1) & (index < np.array(out.shape) - 2).all(-1))
    assert 0.3 < float(core.float().mean()) < 0.95  # the stack covers part of the grid, and says which
    torch.testing.assert_close(back[core], ramp[core], atol=1e-3, rtol=0)
    op.params = -op.params  # read back through the motion the wrong way round
    wrong, covered = op.to_output(fine)
    both = core & covered.bool()
    assert float(both.float().mean()) > 0.2 and float((wrong[both] - ramp[both]).abs().max()) > 0.05


def test_registration_recovers_a_known_motion(stacks):
    """A 3 deg / 2 mm motion (of the protocol's kind) recovered to under 0.5 mm at the 160 mm cube's corners."""
    ref = stacks["stacks"][0]
    centre = _centre(ref)
    out = output_grid(stacks["gt"].shape, stacks["gt_affine"], 4.0)
    gt = torch.from_numpy(stacks["gt"])
    for s in stacks["stacks"][1:]:
        op = StackOperator(out, s["lf"].shape, s["affine"], 0.5, centre, "cpu")
        before = registration_error(op.motion(), s["motion"], centre)["corner_mm"]
        found = register(op, gt, torch.from_numpy(s["lf"]))
        after = registration_error(op.motion(), s["motion"], centre)
        assert before > 2.0 and after["corner_mm"] < 0.5 and after["angle_deg"] < 0.3, (s["name"], before, after)
        assert found.ncc > 0.9


def _fused(stacks, n, method="inr", prior=None, upsampler=None, **settings):
    chosen = stacks["stacks"][:n]
    lfs, affs = [s["lf"] for s in chosen], [s["affine"] for s in chosen]
    st = EnhanceSettings.preset("fast", method=method, output_resolution=4.0, device="cpu", threads=1, **settings)
    return enhance(lfs if n > 1 else lfs[0], affs if n > 1 else affs[0], st, prior=prior, upsampler=upsampler)


def test_two_stacks_beat_one_and_three_beat_two(stacks):
    scores = {}
    for n in (1, 2, 3):
        res = _fused(stacks, n)
        assert res.image.shape == output_grid(stacks["stacks"][0]["lf"].shape, stacks["stacks"][0]["affine"], 4.0).shape
        scores[n] = score_volume(res.image, res.affine, stacks["gt"], stacks["gt_affine"], lpips=False)["psnr"]
        if n > 1:
            assert len(res.info["stacks"]) == n and res.info["stacks"][0]["reference"]
            for s, found in zip(stacks["stacks"][1:n], res.info["stacks"][1:]):
                assert registration_error(np.array(found["motion"]), s["motion"], _centre(s))["corner_mm"] < 1.0
    assert scores[2] > scores[1] + 0.5 and scores[3] > scores[2], scores


@pytest.mark.parametrize("what", ["no head", "moved 40 mm"])
def test_a_stack_that_does_not_match_the_reference_is_refused(stacks, head_4mm, what):
    """A stack that is not this head as the reference sees it (a uniform box: no head in it; a head too far away to
    be the same session's) fails registration loudly instead of being fused."""
    head, affine = head_4mm
    other_head = np.ones_like(head) if what == "no head" else np.roll(head, 10, axis=2)  # 10 voxels of 4 mm
    other = simulate_stacks(other_head, affine, seed=4, voxel_mm=VOXEL)["stacks"][1]
    lfs = [stacks["stacks"][0]["lf"], other["lf"]]
    affs = [stacks["stacks"][0]["affine"], other["affine"]]
    st = EnhanceSettings.preset("fast", method="inr", output_resolution=4.0, device="cpu", threads=1)
    with pytest.raises(RegistrationError) as err:
        enhance(lfs, affs, st)
    assert "stack(s) 1" in str(err.value) and len(err.value.stacks) == 2


def test_the_start_ablation_fuses_stacks_too(stacks):
    """``start@fused`` is a benchmark row: the fused start alone, registered and projected through every stack."""
    psnr = {}
    for n in (1, 3):
        res = _fused(stacks, n, method="start", prior=load_prior(), learned_upsampling=False)
        psnr[n] = score_volume(res.image, res.affine, stacks["gt"], stacks["gt_affine"], lpips=False)["psnr"]
    assert len(res.info["stacks"]) == 3
    assert psnr[3] > psnr[1] + 0.5, psnr


def test_fused_stacks_start_from_their_upsampled_starts_and_diffdeur_keeps_them(stacks):
    """With the learned upsampler each stack's own start is restored across its thick slices and the fused start
    stays near their mean; DiffDeuR's INR is then a correction of it, as after one upsampled scan."""
    from diffdeur_bids.priors import load_upsampler

    runs = {(method, on): _fused(stacks, 3, method=method, prior=load_prior(), upsampler=load_upsampler(),
                                 learned_upsampling=on)
            for method, on in [("start", False), ("start", True), ("diffdeur", True)]}
    psnr = {key: score_volume(r.image, r.affine, stacks["gt"], stacks["gt_affine"], lpips=False)["psnr"]
            for key, r in runs.items()}
    assert psnr["start", True] > psnr["start", False] + 0.4, psnr
    assert psnr["diffdeur", True] > psnr["start", True] - 0.1, psnr
    assert runs["start", False].info["upsampler"] is None
    assert runs["diffdeur", True].info["upsampler_sha256"] == load_upsampler().sha256


def test_methods_that_do_not_fuse_refuse_several_stacks(stacks):
    with pytest.raises(ValueError, match="one stack at a time"):
        _fused(stacks, 2, method="cubic")
