"""One device rule for the whole product: never fall back silently."""

from __future__ import annotations

import torch

from .errors import DeviceError


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` takes the first GPU when there is one; ``cuda[:N]`` without that GPU is an error."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        index = 0 if spec == "cuda" else spec.split(":", 1)[1]
        if not str(index).isdigit():
            raise DeviceError(f"invalid device {spec!r}: use auto, cpu, cuda or cuda:N")
        index = int(index)
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {spec} was requested but no CUDA GPU is visible to PyTorch "
                "(in Docker add --gpus all, in Apptainer/Singularity add --nv; or use --device cpu)"
            )
        if index >= torch.cuda.device_count():
            raise DeviceError(f"--device {spec} was requested but only {torch.cuda.device_count()} GPU(s) are visible")
        return torch.device(f"cuda:{index}")
    raise DeviceError(f"invalid device {spec!r}: use auto, cpu, cuda or cuda:N")


def describe_device(device: torch.device) -> dict:
    """What the provenance records about the device."""
    info = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = f"{props.name} (sm_{props.major}{props.minor})"
    else:
        import platform

        info["device_name"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    return info
