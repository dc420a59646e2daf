"""Training the diffusion prior on arrays of high-field volumes (files are read by ``train_cli``).

Slices are drawn from all three orientations (each is valid 2D training data for a prior
that the solver applies along cycling axes), at native resolution and 2x coarser so one
prior serves 1 mm and 2 mm work. The loss is the EDM denoising loss; the EMA of the
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
import torch.nn.functional as F

from ..enhance.normalise import robust_max
from ..enhance.prior import Prior, PriorConfig
from .checkpoint import save_prior

VALIDATION_SIGMAS = (0.02, 0.05, 0.1, 0.2)


@dataclass
class TrainConfig:
    steps: int = 20000
    batch_size: int = 24
    patch: int = 64
    lr: float = 2e-3
    lr_final: float = 1e-4
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    train_sigma_min: float = 0.004
    train_sigma_max: float = 1.5
    scales: tuple[int, ...] = (1, 2)
    seed: int = 0
    val_every: int = 500
    checkpoint_every: int = 500
    max_minutes: float | None = None
    threads: int | None = None
    prior: PriorConfig = field(default_factory=PriorConfig)


def normalise_volume(volume: np.ndarray) -> np.ndarray:
    """Per-volume intensity normalisation shared with the solver and the benchmark."""
    volume = np.nan_to_num(np.asarray(volume, dtype=np.float32))
    return np.clip(volume / robust_max(volume), 0, 1.2).astype(np.float32)


def _downsample2(volume: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(volume)[None, None]
    return F.avg_pool3d(t, 2, ceil_mode=True)[0, 0].numpy()


class SliceSampler:
    """Draws augmented 2D patches from a list of normalised 3D volumes."""

    def __init__(self, volumes: Sequence[np.ndarray], patch: int, scales: Sequence[int], seed: int):
        self.patch = patch
        self.rng = np.random.default_rng(seed)
        self.items = []  # (volume, {axis: foreground slice indices})
        for vol in volumes:
            for scale in scales:
                v = vol if scale == 1 else _downsample2(vol)
                if min(v.shape) < 8:
                    continue
                fg = v > 0.05
                slices = {ax: np.flatnonzero(fg.mean(axis=tuple(a for a in range(3) if a != ax)) > 0.05) for ax in range(3)}
                if all(len(s) for s in slices.values()):
                    self.items.append((torch.from_numpy(np.ascontiguousarray(v)), slices))
        if not self.items:
            raise ValueError("no usable training volumes (all empty or smaller than 8 voxels)")

    def _one(self) -> torch.Tensor:
        rng = self.rng
        vol, slices = self.items[rng.integers(len(self.items))]
        axis = int(rng.integers(3))
        idx = int(rng.choice(slices[axis]))
        img = vol.select(axis, idx)
        zoom = float(rng.uniform(0.85, 1.15))
        if abs(zoom - 1) > 0.02:
            img = F.interpolate(img[None, None], scale_factor=zoom, mode="bilinear", align_corners=False)[0, 0]
        p = self.patch
        ph, pw = max(0, p - img.shape[0]), max(0, p - img.shape[1])
        if ph or pw:
            img = F.pad(img[None, None], (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))[0, 0]
        # bias crops towards the head: pick a foreground centre when there is one
        fg = torch.nonzero(img > 0.1)
        if len(fg):
            cy, cx = fg[rng.integers(len(fg))].tolist()
        else:
            cy, cx = img.shape[0] // 2, img.shape[1] // 2
        y0 = int(np.clip(cy - p // 2, 0, img.shape[0] - p))
        x0 = int(np.clip(cx - p // 2, 0, img.shape[1] - p))
        crop = img[y0 : y0 + p, x0 : x0 + p]
        if rng.random() < 0.5:
            crop = crop.flip(0)
        if rng.random() < 0.5:
            crop = crop.flip(1)
        if rng.random() < 0.5:
            crop = crop.t()
        return crop * float(rng.uniform(0.85, 1.15))

    def batch(self, n: int) -> torch.Tensor:
        return torch.stack([self._one() for _ in range(n)])[:, None].contiguous()


def _lr_at(step: int, cfg: TrainConfig) -> float:
    warm = min(1.0, (step + 1) / 200)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, cfg.steps))))
    return warm * (cfg.lr_final + (cfg.lr - cfg.lr_final) * cos)


def resume_state(state_path: Path, model, ema, opt, device) -> tuple[int, float]:
    """Load a training state written by :func:`save_state`; returns (step, seconds trained), (0, 0) if none."""
    if not state_path.is_file():
        return 0, 0.0
    state = torch.load(state_path, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    return int(state["step"]), float(state["elapsed"])


def save_state(state_path: Path, model, ema, opt, step: int, elapsed: float) -> None:
    """Write the weights, their EMA and the optimiser atomically, so an interrupted run resumes."""
    tmp = state_path.with_name(state_path.name + ".tmp")
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                "step": step, "elapsed": elapsed}, tmp)
    tmp.replace(state_path)


def ema_update(ema, model, step: int, decay: float) -> None:
    """One step of the weights' exponential moving average (shorter memory over the first steps)."""
    with torch.no_grad():
        d = min(decay, (1 + step) / (10 + step))
        for pe, p in zip(ema.parameters(), model.parameters()):
            pe.lerp_(p, 1 - d)


def validation_loss(prior: Prior, batch: torch.Tensor, seed: int = 1234) -> dict[str, float]:
    """Denoising MSE at fixed noise levels on fixed held-out patches (lower is better)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    prior.eval()
    with torch.inference_mode():
        for s in VALIDATION_SIGMAS:
            noisy = batch + s * torch.randn(batch.shape, generator=gen).to(batch.device)
            den = prior(noisy, torch.tensor([s], device=batch.device))
            out[f"{s:g}"] = float((den - batch).pow(2).mean())
    return out


def train_prior(
    train_volumes: Sequence[np.ndarray],
    val_volumes: Sequence[np.ndarray],
    out_dir: str | Path,
    cfg: TrainConfig,
    device: torch.device,
    metadata: dict | None = None,
    progress: Callable[[int, int, float, dict], None] | None = None,
) -> Path:
    """Train (or resume) a prior; returns the path of the final safetensors file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    sampler = SliceSampler([normalise_volume(v) for v in train_volumes], cfg.patch, cfg.scales, cfg.seed)
    val_batch = None
    if val_volumes:
        val_sampler = SliceSampler([normalise_volume(v) for v in val_volumes], cfg.patch, cfg.scales, cfg.seed + 1)
        val_batch = val_sampler.batch(64).to(device)

    prior = Prior(cfg.prior).to(device)
    ema = copy.deepcopy(prior).eval()
    opt = torch.optim.Adam(prior.parameters(), lr=cfg.lr)
    state_path = out_dir / "train_state.pt"
    step, elapsed_before = resume_state(state_path, prior, ema, opt, device)
    if step:
        sampler.rng = np.random.default_rng([cfg.seed, step])
        torch.manual_seed(cfg.seed + step)

    log_path = out_dir / "loss_log.csv"
    new_log = not log_path.is_file() or step == 0
    log_fh = open(log_path, "w" if new_log else "a", newline="")
    log = csv.writer(log_fh)
    if new_log:
        log.writerow(["step", "elapsed_s", "train_loss", "lr"] + [f"val_mse_sigma_{s:g}" for s in VALIDATION_SIGMAS])

    t0 = time.time()
    running = None
    log_sigma_lo, log_sigma_hi = math.log(cfg.train_sigma_min), math.log(cfg.train_sigma_max)
    prior.train()
    while step < cfg.steps:
        if cfg.max_minutes and (elapsed_before + time.time() - t0) > 60 * cfg.max_minutes:
            break
        x0 = sampler.batch(cfg.batch_size).to(device)
        sigma = torch.exp(torch.empty(cfg.batch_size, device=device).uniform_(log_sigma_lo, log_sigma_hi))
        noisy = x0 + sigma.view(-1, 1, 1, 1) * torch.randn_like(x0)
        den = prior(noisy, sigma)
        loss = (prior.loss_weight(sigma).view(-1, 1, 1, 1) * (den - x0).pow(2)).mean()
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prior.parameters(), cfg.grad_clip)
        opt.step()
        ema_update(ema, prior, step, cfg.ema_decay)
        step += 1
        loss_value = loss.item()
        running = loss_value if running is None else 0.98 * running + 0.02 * loss_value
        val = {}
        if val_batch is not None and (step % cfg.val_every == 0 or step == cfg.steps):
            val = validation_loss(ema, val_batch)
        if step % 50 == 0 or val:
            log.writerow([step, round(elapsed_before + time.time() - t0, 1), round(running, 5), _lr_at(step, cfg)]
                         + [val.get(f"{s:g}", "") for s in VALIDATION_SIGMAS])
            log_fh.flush()
        if step % cfg.checkpoint_every == 0:
            save_state(state_path, prior, ema, opt, step, elapsed_before + time.time() - t0)
        if progress:
            progress(step, cfg.steps, running, val)
    save_state(state_path, prior, ema, opt, step, elapsed_before + time.time() - t0)
    log_fh.close()
    meta = dict(metadata or {})
    meta.update(
        training_steps=step,
        training_seconds=round(elapsed_before + time.time() - t0, 1),
        training_config={k: v for k, v in asdict(cfg).items() if k != "prior"},
        training_device=str(device),
        parameters=ema.num_parameters,
        final_validation_mse=validation_loss(ema, val_batch) if val_batch is not None else None,
    )
    ema.metadata = meta
    final = out_dir / "prior.safetensors"
    save_prior(ema, final)
    (out_dir / "prior_metadata.json").write_text(json.dumps(meta, indent=2, default=str))
    return final
