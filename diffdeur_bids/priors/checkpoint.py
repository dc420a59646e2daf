"""Prior checkpoint files: weights plus everything needed to rebuild the network, in one safetensors file.

safetensors holds tensors only, so loading a file never runs code from it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..checksums import file_sha256
from ..enhance.errors import CheckpointError
from ..enhance.prior import Prior, PriorConfig
from ..enhance.upsampler import SliceUpsampler

CHECKPOINT_FORMAT = "diffdeur-prior"
UPSAMPLER_FORMAT = "diffdeur-upsampler"
CHECKPOINT_VERSION = 1


def save_prior(prior: Prior, path: str | Path, extra_metadata: dict | None = None) -> str:
    """Write the prior atomically (temporary name, then rename); returns the file's sha256."""
    return _save(prior, path, CHECKPOINT_FORMAT, extra_metadata)


def save_upsampler(upsampler: SliceUpsampler, path: str | Path, extra_metadata: dict | None = None) -> str:
    """Write the learned upsampler as :func:`save_prior` writes a prior, under its own format name."""
    return _save(upsampler, path, UPSAMPLER_FORMAT, extra_metadata)


def _save(model, path, file_format: str, extra_metadata: dict | None) -> str:
    from safetensors.torch import save_file

    meta = dict(model.metadata)
    meta.update(extra_metadata or {})
    header = {
        "format": file_format,
        "format_version": str(CHECKPOINT_VERSION),
        "config": model.config.to_json(),
        "metadata": json.dumps(meta, sort_keys=True, default=str),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=header)
    tmp.replace(path)
    return file_sha256(path)


def read_prior(path: str | Path, device="cpu", expected_sha256: str | None = None) -> Prior:
    """A prior from its file, checked against ``expected_sha256`` when given; typed errors for bad files."""
    return _read(path, device, expected_sha256, CHECKPOINT_FORMAT, Prior, "prior")


def read_upsampler(path: str | Path, device="cpu", expected_sha256: str | None = None) -> SliceUpsampler:
    """The learned upsampler from its file, checked as :func:`read_prior` checks a prior."""
    return _read(path, device, expected_sha256, UPSAMPLER_FORMAT, SliceUpsampler, "upsampler")


def _read(path, device, expected_sha256, file_format: str, model_class, what: str):
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} weights not found: {path}")
    sha = file_sha256(path)
    if expected_sha256 and sha != expected_sha256:
        raise CheckpointError(
            f"{what} weights {path} have sha256 {sha}, expected {expected_sha256}: the file is corrupt or not the shipped one"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read {what} weights {path}: {exc} (truncated or not a safetensors file)") from exc
    if header.get("format") != file_format:
        raise CheckpointError(f"{path} is not a diffdeur {what} (format {header.get('format')!r})")
    if header.get("format_version") != str(CHECKPOINT_VERSION):
        raise CheckpointError(
            f"{path} has checkpoint format version {header.get('format_version')}, this diffdeur reads version {CHECKPOINT_VERSION}"
        )
    try:
        config = PriorConfig.from_json(header["config"])
        metadata = json.loads(header.get("metadata", "{}"))
        model = model_class(config, metadata)
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} does not match the {what} architecture it declares: {exc}") from exc
    model.sha256 = sha
    model.name = str(path)
    return model.to(device).eval()
