"""``diffdeur-train-prior``: train a diffusion prior on a folder or BIDS dataset of high-field scans."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mgz")


def find_volumes(paths) -> list[Path]:
    """Every NIfTI/MGZ file under the given files or folders (BIDS datasets included), sorted."""
    found = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found += [f for f in p.rglob("*") if f.is_file() and f.name.endswith(VOLUME_SUFFIXES)
                      and "derivatives" not in f.relative_to(p).parts]
        else:
            raise click.BadParameter(f"{p} does not exist")
    return sorted(set(found))


def read_volume(path: Path):
    """RAS+ float32 3D array (4D keeps its first volume)."""
    import nibabel as nib
    import numpy as np

    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    if data.ndim != 3:
        raise click.BadParameter(f"{path} is not a 3D volume (shape {data.shape})")
    return data


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--out-dir", required=True, type=click.Path(), help="Folder for checkpoints, the loss log and the final prior.")
@click.option("--validation", "validation", multiple=True, type=click.Path(exists=True),
              help="Held-out volumes (files or folders) for the validation loss; never trained on.")
@click.option("--steps", default=20000, show_default=True)
@click.option("--batch-size", default=24, show_default=True)
@click.option("--patch", default=64, show_default=True, help="Patch size in voxels.")
@click.option("--lr", default=2e-3, show_default=True)
@click.option("--max-minutes", type=float, default=None, help="Stop (and save) after this much training time.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
@click.option("--random-seed", "seed", default=0, show_default=True)
def main(inputs, out_dir, validation, steps, batch_size, patch, lr, max_minutes, device, threads, seed):
    """Train a prior on INPUTS (NIfTI/MGZ files, folders or BIDS datasets). Rerun with the same
    --out-dir to resume after an interruption."""
    from tqdm import tqdm

    from .enhance.devices import resolve_device
    from .enhance.errors import DeviceError
    from .priors.train import TrainConfig, train_prior

    try:
        dev = resolve_device(device)
    except DeviceError as exc:
        click.echo(f"diffdeur-train-prior: {exc}", err=True)
        sys.exit(1)
    val_files = find_volumes(validation) if validation else []
    train_files = [f for f in find_volumes(inputs) if f.resolve() not in {v.resolve() for v in val_files}]
    if not train_files:
        click.echo("diffdeur-train-prior: no training volumes found", err=True)
        sys.exit(66)
    click.echo(f"training on {len(train_files)} volumes, validating on {len(val_files)}, device {dev}")
    train = [read_volume(f) for f in train_files]
    val = [read_volume(f) for f in val_files]
    cfg = TrainConfig(steps=steps, batch_size=batch_size, patch=patch, lr=lr, max_minutes=max_minutes,
                      threads=threads, seed=seed)
    bar = tqdm(total=steps, desc="training", unit="step", dynamic_ncols=True)

    def progress(step, total, loss, val):
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4f}", **({"val@0.1": f"{val['0.1']:.5f}"} if val else {}))
        bar.refresh()

    metadata = {"training_files": [f.name for f in train_files], "validation_files": [f.name for f in val_files],
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    final = train_prior(train, val, out_dir, cfg, dev, metadata=metadata, progress=progress)
    bar.close()
    click.echo(f"wrote {final}")
    click.echo(json.dumps(json.loads((Path(out_dir) / "prior_metadata.json").read_text()).get("final_validation_mse")))


PAIRS_PER_VOLUME = 2


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--out-dir", required=True, type=click.Path(), help="Folder for the pairs, checkpoints, the loss log and the weights.")
@click.option("--validation", "validation", multiple=True, type=click.Path(exists=True),
              help="Held-out volumes (files or folders) for the validation loss; never trained on.")
@click.option("--steps", default=12000, show_default=True)
@click.option("--max-minutes", type=float, default=None, help="Stop (and save) after this much training time.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
@click.option("--random-seed", "seed", default=0, show_default=True)
@click.option("--context-slices", "context", default=0, show_default=True,
              help="Neighbouring slices the network sees on each side of the one it restores (0: one slice).")
@click.option("--base-channels", default=32, show_default=True, help="Width of the U-Net's first level.")
@click.option("--patch", default=64, show_default=True, help="Training patch side in voxels.")
def upsampler_main(inputs, out_dir, validation, steps, max_minutes, device, threads, seed, context, base_channels,
                   patch):
    """Train the learned upsampler of the start on INPUTS (high-field NIfTI/MGZ files or folders).

    Each volume gives two training pairs (a simulated LF scan's start and the volume), kept in
    OUT_DIR/pairs; rerun with the same --out-dir to resume."""
    import nibabel as nib
    import numpy as np
    from tqdm import tqdm

    from .enhance.devices import resolve_device
    from .enhance.prior import PriorConfig
    from .priors import load_prior
    from .priors.train_upsampler import UpsamplerTrainConfig, factors_for, make_pair, train_upsampler

    dev = resolve_device(device)
    val_files = find_volumes(validation) if validation else []
    train_files = [f for f in find_volumes(inputs) if f.resolve() not in {v.resolve() for v in val_files}]
    if not train_files:
        click.echo("diffdeur-train-upsampler: no training volumes found", err=True)
        sys.exit(66)
    prior = load_prior(device=dev)
    pair_dir = Path(out_dir) / "pairs"
    pair_dir.mkdir(parents=True, exist_ok=True)

    def pairs_of(files, seed_offset):
        pairs = []
        for n, f in enumerate(tqdm(files, desc="pairs", unit="volume")):
            rng = np.random.default_rng([seed, seed_offset, n])
            affine = nib.as_closest_canonical(nib.load(str(f))).affine
            voxel = float(np.sqrt((affine[:3, :3] ** 2).sum(0)).min())
            for j in range(PAIRS_PER_VOLUME):
                k, noise = factors_for(voxel, rng), float(rng.uniform(0.025, 0.06))
                cached = pair_dir / f"{f.name.split('.')[0]}_{j}.npz"
                if not cached.is_file():
                    pair = make_pair(read_volume(f), affine, k, noise, prior, seed=int(rng.integers(2**31)), threads=threads)
                    np.savez(cached.with_suffix(".tmp.npz"), **pair)
                    cached.with_suffix(".tmp.npz").replace(cached)
                pairs.append(dict(np.load(cached)))
        return pairs

    click.echo(f"training on {len(train_files)} volumes, validating on {len(val_files)}, device {dev}")
    train, val = pairs_of(train_files, 0), pairs_of(val_files, 1)
    cfg = UpsamplerTrainConfig(steps=steps, max_minutes=max_minutes, threads=threads, seed=seed, patch=patch,
                               net=PriorConfig(base_channels=base_channels, image_channels=2 * context + 1))
    bar = tqdm(total=steps, desc="training", unit="step", dynamic_ncols=True)

    def progress(step, total, loss, val):
        bar.n = step
        bar.set_postfix(loss=f"{loss:.5f}", **({"val": f"{val['upsampled']:.5f}/{val['start']:.5f}"} if val else {}))
        bar.refresh()

    metadata = {"training_files": [f.name for f in train_files], "validation_files": [f.name for f in val_files],
                "prior_sha256": prior.sha256, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    final = train_upsampler(train, val, out_dir, cfg, dev, metadata=metadata, progress=progress)
    bar.close()
    click.echo(f"wrote {final}")


if __name__ == "__main__":
    main()
