"""Read the weights of a Keras 2 ``save_weights`` HDF5 file into plain numpy arrays.

The official SynthSeg files (``synthseg_2.0.h5``, ``synthseg_robust_2.0.h5``) are Keras 2.3
weight files: one HDF5 group per layer, named as the layer, holding ``<layer>/<weight>:0``
datasets, with the layer order in the root attribute ``layer_names``. We read them with
h5py only (no TensorFlow), so h5py is an optional dependency needed for ``.h5`` files alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import SegmentationUnavailable, WeightsError

LayerWeights = dict[str, np.ndarray]  # short weight name ("kernel", "gamma", ...) -> array

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _decode(names) -> list[str]:
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in np.atleast_1d(names)]


def sniff_weights_file(path: Path) -> None:
    """Fail with a clear message for the usual wrong files before h5py gives a cryptic one."""
    if not path.is_file():
        raise SegmentationUnavailable(f"SynthSeg weights file not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(b"version https://git-lfs"):
        raise WeightsError(
            f"{path} is a Git LFS pointer ({size} bytes), not the weights; fetch the real file "
            "(git lfs pull) or copy it from $FREESURFER_HOME/models/.")
    if not head.startswith(_HDF5_SIGNATURE):
        raise WeightsError(f"{path} ({size} bytes) is not an HDF5 file, so not Keras SynthSeg weights.")


def read_keras_weights(path: str | Path, load_data: bool = True) -> dict[str, LayerWeights]:
    """Return ``{layer_name: {weight_name: array}}`` for every layer that carries weights.

    ``load_data=False`` reads the layout only (zero-stride placeholders of the right shapes), which
    checks a 200 MB file in milliseconds, e.g. at start-up before any enhancement runs.
    """
    path = Path(path)
    sniff_weights_file(path)
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SegmentationUnavailable(
            "reading the Keras .h5 weights needs h5py (pip install 'diffdeur[synthseg]'), or "
            "convert them once to .safetensors on a machine that has it") from exc
    layers: dict[str, LayerWeights] = {}
    try:
        with h5py.File(path, "r") as handle:
            root = handle["model_weights"] if "model_weights" in handle else handle
            names = _decode(root.attrs["layer_names"]) if "layer_names" in root.attrs else list(root.keys())
            for name in names:
                if name not in root:
                    raise WeightsError(f"{path}: layer {name!r} is listed but missing")
                group = root[name]
                weight_names = _decode(group.attrs.get("weight_names", []))
                weight_names = [w for w in weight_names if w]
                if not weight_names:
                    continue
                weights = {}
                for full_name in weight_names:
                    short = full_name.split("/")[-1].split(":")[0]
                    dataset = group[full_name]
                    weights[short] = (np.asarray(dataset, dtype=np.float32) if load_data
                                      else np.broadcast_to(np.float32(0), dataset.shape))
                layers[name] = weights
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise WeightsError(
            f"{path} could not be read as Keras weights ({type(exc).__name__}: {exc}); the file is "
            "probably truncated or corrupt. Compare its size and sha256 with the official file.") from exc
    if not layers:
        raise WeightsError(f"{path} is an HDF5 file without any Keras layer weights.")
    return layers
