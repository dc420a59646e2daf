"""Training the learned upsampler (``enhance/upsampler.py``) on high-field volumes.

Training pairs are made by the method itself: each high-field volume is degraded by
sim-lf-v1's model with a random thick axis, factors and noise level, and DiffDeuR's start
(``method="start"``, the shipped prior) is computed from it on the volume's own grid; the pair
is that start and the volume, both divided by the LF scan's robust maximum (the units the
solver works in). The network learns the residual on 2D patches whose rows run along the thick
axis (with the neighbouring slices as channels when the network sees them). The EMA of the
weights is what gets shipped.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..enhance.prior import PriorConfig
from ..enhance.upsampler import SliceUpsampler, slice_families, with_neighbours
from .train import _lr_at, ema_update, resume_state, save_state

# (in-plane factor, thick factor) drawn per pair, by the volume's voxel size
FACTORS_2MM = [(1, 3), (1, 4)]
FACTORS_1MM = [(2, 4), (1, 3), (2, 5), (1, 5)]
NOISE_RANGE = (0.025, 0.06)
VALIDATION_PATCH = 64  # fixed, whatever the training patch, so validation losses compare across runs


@dataclass
class UpsamplerTrainConfig:
    steps: int = 12000
    batch_size: int = 16
    patch: int = 64
    lr: float = 1e-3
    lr_final: float = 5e-5
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    val_every: int = 500
    checkpoint_every: int = 250
    max_minutes: float | None = None
    threads: int | None = None
    net: PriorConfig = field(default_factory=lambda: PriorConfig(base_channels=32))


def make_pair(hf_ras: np.ndarray, hf_affine: np.ndarray, k: tuple[int, int, int], noise: float, prior, seed: int,
              threads: int | None = None) -> dict:
    """One training pair: DiffDeuR's start from a simulated LF scan, and the normalised ground truth."""
    from ..enhance import EnhanceSettings, enhance
    from ..enhance.normalise import robust_max
    from ..evaluation.protocol import simulate_lowfield

    lf, lf_affine, gt, gt_affine = simulate_lowfield(hf_ras, hf_affine, k, 0.5, noise, seed)
    voxel = tuple(float(v) for v in np.sqrt((gt_affine[:3, :3] ** 2).sum(0)))
    # the upsampler learns to follow the start as it is before the upsampler
    settings = EnhanceSettings.preset("default", method="start", learned_upsampling=False, output_resolution=voxel,
                                      seed=seed, threads=threads)
    result = enhance(lf, lf_affine, settings, prior=prior)
    if result.image.shape != gt.shape or not np.allclose(result.affine, gt_affine, atol=1e-4):
        raise ValueError(f"the start's grid {result.image.shape} does not match the ground truth's {gt.shape}")
    scale = float(robust_max(lf))
    return {"start": (result.image / scale).astype(np.float16), "target": (gt / scale).astype(np.float16),
            "k": np.asarray(k, dtype=np.int64)}


def factors_for(voxel_mm: float, rng: np.random.Generator) -> tuple[int, int, int]:
    """Random factors for a volume: a random thick axis, in-plane and thick factors by its voxel size."""
    in_plane, thick = (FACTORS_2MM if voxel_mm > 1.5 else FACTORS_1MM)[rng.integers(2 if voxel_mm > 1.5 else 4)]
    k = [in_plane] * 3
    k[int(rng.integers(3))] = thick
    return tuple(k)


class PairSampler:
    """Augmented 2D patches (start with ``context`` neighbours on each side, target, log k) from training pairs,
    rows along the thick axis."""

    def __init__(self, pairs: Sequence[dict], patch: int, seed: int, context: int = 0):
        self.patch = patch
        self.context = context
        self.rng = np.random.default_rng(seed)
        self.items = []  # (start, target, k, family, foreground slice indices)
        for pair in pairs:
            x, t = torch.from_numpy(pair["start"].astype(np.float32)), torch.from_numpy(pair["target"].astype(np.float32))
            k = tuple(int(v) for v in pair["k"])
            for family in slice_families(k):
                axis = family[0]
                fg = (t > 0.05 * float(t.max())).float().mean(dim=tuple(a for a in range(3) if a != axis))
                idx = np.flatnonzero(fg.numpy() > 0.05)
                if len(idx):
                    self.items.append((x, t, k, family, idx))
        if not self.items:
            raise ValueError("no usable training pairs")

    def _one(self):
        rng, p = self.rng, self.patch
        x, t, k, (axis, rows, cols), idx = self.items[rng.integers(len(self.items))]
        i = int(rng.choice(idx))
        xs = with_neighbours(x.permute(axis, rows, cols), torch.tensor([i]), self.context)[0]
        ts = t.permute(axis, rows, cols)[i]
        ph, pw = max(0, p - ts.shape[0]), max(0, p - ts.shape[1])
        if ph or pw:
            xs, ts = (torch.nn.functional.pad(v, (0, pw, 0, ph)) for v in (xs, ts))
        fg = torch.nonzero(ts > 0.1 * float(ts.max()))
        cy, cx = fg[rng.integers(len(fg))].tolist() if len(fg) else (ts.shape[0] // 2, ts.shape[1] // 2)
        y0 = int(np.clip(cy - p // 2, 0, ts.shape[0] - p))
        x0 = int(np.clip(cx - p // 2, 0, ts.shape[1] - p))
        xs, ts = (v[..., y0 : y0 + p, x0 : x0 + p] for v in (xs, ts))
        for dim in (-2, -1):
            if rng.random() < 0.5:
                xs, ts = xs.flip(dim), ts.flip(dim)
        gain = float(rng.uniform(0.85, 1.15))
        return xs * gain, ts * gain, torch.tensor([math.log(k[rows]), math.log(k[cols])])

    def batch(self, n: int):
        xs, ts, ks = zip(*(self._one() for _ in range(n)))
        return torch.stack(xs), torch.stack(ts)[:, None], torch.stack(ks)


def validation_mse(net: SliceUpsampler, batch) -> dict[str, float]:
    """MSE of the start and of the upsampled start on fixed held-out patches (lower is better)."""
    x, t, k = batch
    net.eval()
    with torch.inference_mode():
        centre = x[:, net.context : net.context + 1]
        return {"start": float((centre - t).pow(2).mean()), "upsampled": float((net(x, k) - t).pow(2).mean())}


def train_upsampler(train_pairs: Sequence[dict], val_pairs: Sequence[dict], out_dir: str | Path,
                    cfg: UpsamplerTrainConfig, device: torch.device, metadata: dict | None = None,
                    progress: Callable[[int, int, float, dict], None] | None = None) -> Path:
    """Train (or resume) the upsampler; returns the path of the final safetensors file."""
    from .checkpoint import save_upsampler

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    net = SliceUpsampler(cfg.net).to(device)
    sampler = PairSampler(train_pairs, cfg.patch, cfg.seed, net.context)
    val_batch = None
    if val_pairs:
        val_batch = tuple(v.to(device) for v in PairSampler(val_pairs, VALIDATION_PATCH, cfg.seed + 1, net.context).batch(64))
    torch.nn.init.zeros_(net.net.tail.weight)  # starts as the identity: the start itself
    torch.nn.init.zeros_(net.net.tail.bias)
    ema = copy.deepcopy(net).eval()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    state_path = out_dir / "train_state.pt"
    step, elapsed_before = resume_state(state_path, net, ema, opt, device)
    if step:
        sampler.rng = np.random.default_rng([cfg.seed, step])
        torch.manual_seed(cfg.seed + step)
    log_path = out_dir / "loss_log.csv"
    new_log = not log_path.is_file() or step == 0
    log_fh = open(log_path, "w" if new_log else "a", newline="")
    log = csv.writer(log_fh)
    if new_log:
        log.writerow(["step", "elapsed_s", "train_loss", "lr", "val_mse_start", "val_mse_upsampled"])
    t0 = time.time()

    running = None
    net.train()
    while step < cfg.steps:
        if cfg.max_minutes and (elapsed_before + time.time() - t0) > 60 * cfg.max_minutes:
            break
        x, t, k = (v.to(device) for v in sampler.batch(cfg.batch_size))
        loss = (net(x, k) - t).pow(2).mean()
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        ema_update(ema, net, step, cfg.ema_decay)
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        val = validation_mse(ema, val_batch) if val_batch is not None and step % cfg.val_every == 0 else {}
        if step % 50 == 0 or val:
            log.writerow([step, round(elapsed_before + time.time() - t0, 1), round(running, 6), _lr_at(step, cfg),
                          val.get("start", ""), val.get("upsampled", "")])
            log_fh.flush()
        if step % cfg.checkpoint_every == 0:
            save_state(state_path, net, ema, opt, step, elapsed_before + time.time() - t0)
        if progress:
            progress(step, cfg.steps, running, val)
    save_state(state_path, net, ema, opt, step, elapsed_before + time.time() - t0)
    log_fh.close()
    meta = dict(metadata or {})
    meta.update(training_steps=step, training_seconds=round(elapsed_before + time.time() - t0, 1),
                training_config={k: v for k, v in asdict(cfg).items() if k != "net"}, training_device=str(device),
                parameters=ema.num_parameters,
                final_validation_mse=validation_mse(ema, val_batch) if val_batch is not None else None)
    ema.metadata = meta
    final = out_dir / "upsampler.safetensors"
    save_upsampler(ema, final)
    (out_dir / "upsampler_metadata.json").write_text(json.dumps(meta, indent=2, default=str))
    return final
