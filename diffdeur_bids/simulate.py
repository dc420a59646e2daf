"""``diffdeur-simulate``: a simulated low-field scan (sim-lf-v1) from a high-field NIfTI, as BIDS files.

Writes ``OUT_PREFIX.nii.gz`` (the LF scan) with its ``OUT_PREFIX.json`` sidecar, and with
``--ground-truth`` also the normalised, cropped HF volume the benchmark scores against. With
``--stacks`` (sim-lf-v2) it writes three stacks instead, ``acq-axi``, ``acq-cor`` and ``acq-sag``
inserted before the suffix (``sub-01_T2w`` -> ``sub-01_acq-axi_T2w``), each sidecar holding the
head's true motion for scoring. The simulations themselves are ``evaluation.protocol``'s; this
module only reads and writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from .evaluation.protocol import TRACKS


def _triple(text: str, kind=float):
    parts = [kind(v) for v in str(text).replace("x", ",").split(",") if v.strip()]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise click.BadParameter(f"{text!r}: give one value or three (e.g. 1,1,3)")
    return tuple(parts)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("hf_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("out_prefix", type=click.Path(dir_okay=False))
@click.option("--track", type=click.Choice(sorted(TRACKS)), default=None,
              help="A sim-lf-v1 track: 2mm = k (1,1,3), 1mm = k (2,2,4); PSF 0.5, noise 0.04.")
@click.option("-k", "--factors", default=None, help="Slice-profile factors per RAS axis, e.g. 1,1,3 (overrides --track).")
@click.option("--psf-sigma", type=float, default=None, help="Gaussian PSF sigma in LF voxels (default 0.5).")
@click.option("--noise-sigma", type=float, default=None, help="Noise sigma relative to the normalised image (default 0.04).")
@click.option("--field-strength", type=float, default=0.064, show_default=True, help="MagneticFieldStrength (T) for the sidecar.")
@click.option("--random-seed", "seed", type=int, default=0, show_default=True)
@click.option("--ground-truth", is_flag=True, help="Also write OUT_PREFIX_gt.nii.gz, the normalised cropped HF volume.")
@click.option("--stacks", is_flag=True, help="sim-lf-v2: three 1.5 x 1.5 x 5 mm stacks (acq-axi, acq-cor, acq-sag) with "
                                             "random rigid motion of the later two; the true motion is in their sidecars.")
def main(hf_file, out_prefix, track, factors, psf_sigma, noise_sigma, field_strength, seed, ground_truth, stacks):
    """Simulate a low-field scan from HF_FILE; write OUT_PREFIX.nii.gz and OUT_PREFIX.json."""
    import nibabel as nib

    from .enhance.errors import InvalidInputError
    from .evaluation.protocol import simulate_lowfield

    if stacks:
        _write_stacks(hf_file, out_prefix, psf_sigma, noise_sigma, field_strength, seed, ground_truth)
        return

    params = dict(TRACKS[track or "1mm"])
    if factors:
        params["k"] = _triple(factors, int)
    if psf_sigma is not None:
        params["psf_sigma"] = psf_sigma
    if noise_sigma is not None:
        params["noise_sigma"] = noise_sigma
    try:
        img = nib.as_closest_canonical(nib.load(hf_file))
        data = np.asarray(img.dataobj, dtype=np.float32)
        lf, lf_aff, gt, gt_aff = simulate_lowfield(data, img.affine, seed=seed, **params)
    except (InvalidInputError, OSError, ValueError) as exc:
        click.echo(f"diffdeur-simulate: {hf_file}: {exc}", err=True)
        sys.exit(65)
    prefix = str(out_prefix).removesuffix(".nii.gz").removesuffix(".nii")
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(lf, lf_aff), prefix + ".nii.gz")
    sidecar = {
        "MagneticFieldStrength": field_strength,
        "SimulatedLowField": {
            "Protocol": "sim-lf-v1",
            "Source": Path(hf_file).name,
            "Factors": list(params["k"]),
            "PSFSigmaVoxels": params["psf_sigma"],
            "NoiseSigma": params["noise_sigma"],
            "RandomSeed": seed,
        },
    }
    Path(prefix + ".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    if ground_truth:
        nib.save(nib.Nifti1Image(gt, gt_aff), prefix + "_gt.nii.gz")
    click.echo(f"wrote {prefix}.nii.gz {lf.shape} voxel {np.sqrt((lf_aff[:3, :3] ** 2).sum(0)).round(3).tolist()} mm")


def _write_stacks(hf_file, out_prefix, psf_sigma, noise_sigma, field_strength, seed, ground_truth) -> None:
    import nibabel as nib

    from .enhance.errors import InvalidInputError
    from .evaluation.protocol import STACK_VOXEL_MM, simulate_stacks

    options = {k: v for k, v in (("psf_sigma", psf_sigma), ("noise_sigma", noise_sigma)) if v is not None}
    try:
        img = nib.as_closest_canonical(nib.load(hf_file))
        sim = simulate_stacks(np.asarray(img.dataobj, dtype=np.float32), img.affine, seed=seed, **options)
    except (InvalidInputError, OSError, ValueError) as exc:
        click.echo(f"diffdeur-simulate: {hf_file}: {exc}", err=True)
        sys.exit(65)
    prefix = Path(str(out_prefix).removesuffix(".nii.gz").removesuffix(".nii"))
    head, _, suffix = prefix.name.rpartition("_")
    if not head:
        raise click.BadParameter(f"{prefix.name}: give a BIDS name with its suffix, e.g. sub-01_T2w", param_hint="OUT_PREFIX")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for stack in sim["stacks"]:
        out = prefix.parent / f"{head}_acq-{stack['name']}_{suffix}"
        nib.save(nib.Nifti1Image(stack["lf"], stack["affine"]), f"{out}.nii.gz")
        sidecar = {"MagneticFieldStrength": field_strength, "SimulatedLowField": {
            "Protocol": "sim-lf-v2", "Source": Path(hf_file).name, "Stack": stack["name"],
            "VoxelSizeMM": list(STACK_VOXEL_MM), "PSFSigmaVoxels": options.get("psf_sigma", 0.5),
            "NoiseSigma": options.get("noise_sigma", 0.04), "RandomSeed": seed,
            # the world transform the head moved by before this stack (the header holds the nominal position)
            "TrueMotion": np.round(stack["motion"], 6).tolist()}}
        Path(f"{out}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
        click.echo(f"wrote {out}.nii.gz {stack['lf'].shape}")
    if ground_truth:
        nib.save(nib.Nifti1Image(sim["gt"], sim["gt_affine"]), f"{prefix}_gt.nii.gz")


if __name__ == "__main__":
    main()
