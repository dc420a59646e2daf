"""Prior checkpoint files: weights plus everything needed to rebuild the network, in one safetensors file.

safetensors holds tensors only, so loading a file never runs code from it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..checksums import file_sha256
from ..enhance.errors import CheckpointError
from ..enhance.prior import Prior, PriorConfig

CHECKPOINT_FORMAT = "diffdeur-prior"
CHECKPOINT_VERSION = 1


def save_prior(prior: Prior, path: str | Path, extra_metadata: dict | None = None) -> str:
    """Write the prior atomically (temporary name, then rename); returns the file's sha256."""
    from safetensors.torch import save_file

    meta = dict(prior.metadata)
    meta.update(extra_metadata or {})
    header = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(CHECKPOINT_VERSION),
        "config": prior.config.to_json(),
        "metadata": json.dumps(meta, sort_keys=True, default=str),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in prior.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=header)
    tmp.replace(path)
    return file_sha256(path)


def read_prior(path: str | Path, device="cpu", expected_sha256: str | None = None) -> Prior:
    """A prior from its file, checked against ``expected_sha256`` when given; typed errors for bad files."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"prior weights not found: {path}")
    sha = file_sha256(path)
    if expected_sha256 and sha != expected_sha256:
        raise CheckpointError(
            f"prior weights {path} have sha256 {sha}, expected {expected_sha256}: the file is corrupt or not the shipped one"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read prior weights {path}: {exc} (truncated or not a safetensors file)") from exc
    if header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a diffdeur prior (format {header.get('format')!r})")
    if header.get("format_version") != str(CHECKPOINT_VERSION):
        raise CheckpointError(
            f"{path} has checkpoint format version {header.get('format_version')}, this diffdeur reads version {CHECKPOINT_VERSION}"
        )
    try:
        config = PriorConfig.from_json(header["config"])
        metadata = json.loads(header.get("metadata", "{}"))
        prior = Prior(config, metadata)
        prior.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} does not match the prior architecture it declares: {exc}") from exc
    prior.sha256 = sha
    prior.name = str(path)
    return prior.to(device).eval()
