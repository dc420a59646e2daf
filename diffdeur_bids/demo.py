"""``diffdeur-demo OUTDIR``: build a small low-field BIDS dataset and enhance it, on CPU, in minutes.

The dataset is made offline from the MNI152 template that nilearn ships (2 mm), degraded with the
sim-lf-v1 protocol (``simulate_lowfield``: 2x2x6 mm voxels, blur, noise) and stored as a 64 mT
T1w scan. A second subject holds the template itself labelled 3 T, to show that high-field scans
are left alone. ``--build-only DIR`` writes just the dataset (CI runs the containers on it).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import nibabel as nib
import numpy as np

LF_SIDECAR = {"MagneticFieldStrength": 0.064, "Manufacturer": "Simulated", "ManufacturersModelName": "sim-lf-v1",
              "RepetitionTime": 1.5, "EchoTime": 0.006, "MRAcquisitionType": "3D"}
HF_SIDECAR = {"MagneticFieldStrength": 3.0, "Manufacturer": "MNI", "ManufacturersModelName": "ICBM152 2009 template"}


def write_scan(root: Path, relpath: str, data: np.ndarray, affine: np.ndarray, sidecar: dict | None = None) -> Path:
    """One NIfTI (float32, scanner space, mm) and its sidecar."""
    path = Path(root) / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    if sidecar is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar, indent=2) + "\n")
    return path


def write_raw_description(root: Path, name: str, readme: str) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": name, "BIDSVersion": "1.10.1", "DatasetType": "raw", "License": "CC0",
        "Authors": ["diffdeur"],
    }, indent=2) + "\n")
    (root / "README").write_text(readme.strip() + "\n")


def build_demo_dataset(root: Path, seed: int = 0) -> Path:
    """Write the demo dataset at ``root`` (the BIDS root) and return it."""
    try:
        from nilearn.datasets import load_mni152_template
    except ImportError as e:
        raise click.ClickException("the demo needs nilearn: pip install 'diffdeur[demo]' (or '.[demo]' in a clone)") from e

    from .evaluation.protocol import simulate_lowfield

    template = nib.as_closest_canonical(load_mni152_template(resolution=2))
    hf = template.get_fdata(dtype=np.float32)
    lf, lf_affine, gt, gt_affine = simulate_lowfield(hf, template.affine, k=(1, 1, 3), psf_sigma=0.5,
                                                     noise_sigma=0.04, seed=seed)
    write_raw_description(root, "diffdeur demo: a simulated 64 mT scan of the MNI152 template", """
Made by diffdeur-demo from the MNI ICBM152 2009 template shipped with nilearn (2 mm).
sub-01: the template degraded with diffdeur's sim-lf-v1 protocol (2x2x6 mm voxels, Gaussian blur,
noise), labelled as a 64 mT scan. sub-02: the template itself labelled 3 T (left alone by diffdeur).
""")
    write_scan(root, "sub-01/anat/sub-01_T1w.nii.gz", lf, lf_affine, LF_SIDECAR)
    write_scan(root, "sub-02/anat/sub-02_T1w.nii.gz", gt, gt_affine, HF_SIDECAR)
    (Path(root) / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    return Path(root)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("outdir", type=click.Path(path_type=Path))
@click.option("--build-only", is_flag=True, help="Only write the BIDS dataset at OUTDIR, do not run diffdeur.")
@click.argument("diffdeur_args", nargs=-1, type=click.UNPROCESSED)
def cli(outdir: Path, build_only: bool, diffdeur_args) -> int:
    """Build a small low-field dataset and run ``diffdeur`` on it (CPU, quality 'fast', 2 mm output).

    Writes OUTDIR/bids, OUTDIR/derivatives/diffdeur and OUTDIR/work. Arguments after ``--`` go
    to diffdeur (e.g. ``-- --device cuda``).
    """
    if build_only:
        build_demo_dataset(outdir)
        click.echo(f"Demo BIDS dataset written to {outdir}")
        return 0
    bids = build_demo_dataset(outdir / "bids")
    click.echo(f"Demo BIDS dataset written to {bids}")
    from .cli import run_cli

    args = [str(bids), str(outdir / "derivatives" / "diffdeur"), "participant", "--quality", "fast",
            "--output-resolution", "2", "--device", "cpu", "-w", str(outdir / "work"), *diffdeur_args]
    click.echo("Running: diffdeur " + " ".join(args))
    return run_cli(args)


def main(argv=None) -> None:
    try:
        code = cli.main(args=argv, prog_name="diffdeur-demo", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        code = 64
    raise SystemExit(code or 0)


if __name__ == "__main__":
    main()
