"""Which SynthSeg backend can run here, checked at start-up so a run fails before any enhancement.

Two backends: ``freesurfer`` (the real ``mri_synthseg``) and ``torch`` (the port, which needs the
official weights: given with ``--synthseg-model``, or found in ``$FREESURFER_HOME/models``).
Weights are never downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checksums import file_sha256
from .errors import SegmentationUnavailable, WeightsError
from .freesurfer import freesurfer_home, freesurfer_status
from .keras_h5 import read_keras_weights
from .model import _specs_from_layers

# Official files (FreeSurfer git-annex keys / SynthSeg distribution): name -> (bytes, sha256)
OFFICIAL_WEIGHTS = {
    "synthseg_1.0.h5": (53079056, "7d2e32d298fe38dc51ea38e6a8e8fc5c665d56b63cddb409e8b199535f8b5298"),
    "synthseg_2.0.h5": (53079152, "f190bfd742f450ef3ca2c9df9ed4d2e0232b3a74471da5e51b7770bacdf80c3e"),
    "synthseg_robust_2.0.h5": (214606800, "7bc30bf5c3d204f20c4a6cb5a283aedbcab6af1de927cda783f59b67d19cb01c"),
}


@dataclass(frozen=True)
class WeightsInfo:
    path: Path
    robust: bool
    n_labels: int
    features: tuple[int, ...]


def default_weights(robust: bool = False) -> Path | None:
    """The weights FreeSurfer ships, if FreeSurfer is installed."""
    home = freesurfer_home()
    if home is None:
        return None
    path = home / "models" / ("synthseg_robust_2.0.h5" if robust else "synthseg_2.0.h5")
    return path if path.is_file() else None


def inspect_weights(path, robust: bool | None = None) -> WeightsInfo:
    """Check a weights file without loading its data: right format, a SynthSeg network, right kind."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from .model import load_network

        net = load_network(path)
        specs = net.specs
    else:
        specs = _specs_from_layers(read_keras_weights(path, load_data=False), str(path))
    info = WeightsInfo(path, len(specs) == 3, specs[-1].n_labels, specs[0].features)
    if info.n_labels not in (32, 33):
        raise WeightsError(f"{path}: a SynthSeg segmentation network has 32 or 33 outputs, not {info.n_labels}")
    if robust is not None and robust != info.robust:
        want = "synthseg_robust_2.0.h5" if robust else "synthseg_2.0.h5"
        kind = "robust" if info.robust else "non-robust"
        raise WeightsError(f"{path} is a {kind} SynthSeg network; robust={robust} needs {want}")
    return info


def identify_weights(path) -> tuple[str, str | None]:
    """The file's sha256, and the name of the official file it is (size and sha256 match) or None."""
    path = Path(path)
    sha = file_sha256(path)
    size = path.stat().st_size
    return sha, next((name for name, (n, digest) in OFFICIAL_WEIGHTS.items() if n == size and digest == sha), None)


def available_backends(model_path=None, robust: bool = False) -> list[str]:
    """Backends that can run now, best first: ``torch`` with given weights, ``freesurfer``, ``torch`` with FreeSurfer's."""
    found = []
    if model_path is not None and Path(model_path).is_file():
        found.append("torch")
    if freesurfer_status()[0]:
        found.append("freesurfer")
    if "torch" not in found and default_weights(robust) is not None:
        found.append("torch")
    return found


def choose_backend(model_path=None, robust: bool = False, backend: str = "auto") -> tuple[str, Path | None]:
    """Pick the backend and weights, or raise :class:`SegmentationUnavailable` / :class:`WeightsError` now.

    Given weights are checked (format and kind) here, so a wrong file fails before enhancement.
    """
    if backend not in ("auto", "torch", "freesurfer"):
        raise ValueError(f"backend must be auto, torch or freesurfer, not {backend!r}")
    if model_path is not None:
        if backend == "freesurfer":
            raise ValueError("a weights file is for the torch backend, not for FreeSurfer")
        inspect_weights(model_path, robust)
        return "torch", Path(model_path)
    fs_ok, fs_reason = freesurfer_status()
    if backend in ("auto", "freesurfer") and fs_ok:
        return "freesurfer", None
    if backend == "freesurfer":
        raise SegmentationUnavailable(f"FreeSurfer backend unavailable: {fs_reason}")
    weights = default_weights(robust)
    if weights is not None:
        inspect_weights(weights, robust)
        return "torch", weights
    raise SegmentationUnavailable(f"no SynthSeg backend: {fs_reason}, and no weights file was given")
