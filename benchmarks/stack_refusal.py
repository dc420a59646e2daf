"""How well the first registration tells this head's stacks from another head's: the scores behind
``alignment.MIN_EXPLAINED`` and ``alignment.MIN_EDGES``, on the prior's training volumes only.

For each training volume, sim-lf-v2 stacks (1.5 x 1.5 x 5 mm, motion up to 3 deg / 2 mm) are made;
the coronal and sagittal stacks are registered to the axial one as DiffDeuR's start does (each
stack denoised by the prior first), and so are impostors put in their place: the same stack
simulated from another volume of the same contrast, from this volume upside down, and from it
shrunk by 15 % (each centred where this head is). Prints one row per registration: its scores
and whether the current rule refuses it.

    python benchmarks/stack_refusal.py --crop 144          # about 45 min on 2 CPU threads
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402,F401  (puts the repository on sys.path)
from sim_lf import DEFAULT_DATA, centre_crop, load_hf  # noqa: E402

from diffdeur_bids.enhance import EnhanceSettings, enhance  # noqa: E402
from diffdeur_bids.enhance import alignment  # noqa: E402
from diffdeur_bids.evaluation.protocol import simulate_stacks  # noqa: E402
from diffdeur_bids.priors import load_prior  # noqa: E402

# training volumes (not in sim_lf.VALIDATION_SPLIT), by contrast: the impostors come from the same contrast
TRAINING = {
    "T1w": ["hf/1mm/IXI002-Guys-0828_T1w_brain_hdbet.nii.gz", "hf/1mm/niivue_freesurfer_norm_T1w_brain_1mm.mgz"],
    "T2w": ["hf/1mm/IXI002-Guys-0828_T2w_brain_hdbet.nii.gz", "hf/1mm/stroke_M2208_T2w_head_1mm_normalized.nii.gz"],
}


class _Stop(Exception):
    pass


def first_round_scores(stacks, settings, prior) -> list[dict]:
    """Run DiffDeuR's start up to the first registration and return what it found (no refusal)."""
    found = []
    original = alignment.align_stacks

    def record(p, x, zs, levels=alignment.LEVELS, check_match=False):
        found.extend(original(p, x, zs, levels, check_match=False)[1:])
        raise _Stop()

    alignment.align_stacks = record
    try:
        enhance([s["lf"] for s in stacks], [s["affine"] for s in stacks], settings, prior=prior)
    except _Stop:
        pass
    finally:
        alignment.align_stacks = original
    return found


def centred_like(other: np.ndarray, other_aff: np.ndarray, aff: np.ndarray, shape) -> np.ndarray:
    """``other`` resampled onto ``(shape, aff)`` with its head's centre where that grid's centre is."""
    fg = np.argwhere(other > 0.05 * other.max())
    centre_other = other_aff @ np.r_[(fg.min(0) + fg.max(0)) / 2.0, 1.0]
    centre = aff @ np.r_[(np.asarray(shape) - 1) / 2.0, 1.0]
    shift = np.eye(4)
    shift[:3, 3] = centre_other[:3] - centre[:3]
    to_other = np.linalg.inv(other_aff) @ shift @ aff
    return ndimage.affine_transform(other, to_other[:3, :3], to_other[:3, 3], output_shape=shape, order=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--crop", type=int, default=144)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    settings = EnhanceSettings.preset("fast", device="cpu", threads=args.threads)
    prior = load_prior()
    rows = []
    for contrast, paths in TRAINING.items():
        volumes = [centre_crop(*load_hf({"path": args.data / rel}), args.crop) for rel in paths]
        for i, (hf, aff) in enumerate(volumes):
            other, other_aff = volumes[1 - i]
            impostors = {
                "this head": hf,
                "another head": centred_like(other, other_aff, aff, hf.shape),
                "upside down": np.ascontiguousarray(hf[:, :, ::-1]),
                "shrunk 15%": centred_like(ndimage.zoom(hf, 0.85, order=1), aff, aff, hf.shape),
            }
            genuine = simulate_stacks(hf, aff, seed=7 + i)["stacks"]
            for what, volume in impostors.items():
                fake = genuine if what == "this head" else simulate_stacks(volume, aff, seed=11 + i)["stacks"]
                for j in (1, 2) if what == "this head" else (1,):  # the coronal (and the sagittal) stack replaced
                    stacks = [genuine[0], genuine[1] if j == 2 else genuine[2], fake[j]]
                    entry = first_round_scores(stacks, settings, prior)[-1]
                    refused = alignment.failed(entry)
                    row = {"volume": Path(paths[i]).name, "stack": fake[j]["name"], "impostor": what,
                           **{k: entry[k] for k in ("ncc", "explained", "edges", "gain", "rotation_deg",
                                                    "translation_mm")}, "refused": refused}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    wrong = [r for r in rows if r["refused"] != (r["impostor"] != "this head")]
    print(f"{len(rows) - len(wrong)}/{len(rows)} decided right "
          f"(MIN_EXPLAINED {alignment.MIN_EXPLAINED}, MIN_EDGES {alignment.MIN_EDGES})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
