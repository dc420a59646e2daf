"""Compute resources: what ``--mem`` means, and how much memory one enhancement needs.

``--mem`` accepts units because fMRIPrep reads a bare number as MB and MRIQC as GB; we follow
fMRIPrep for bare numbers and always log what was understood.
"""

from __future__ import annotations

import math
import os
import re

_UNITS_GB = {
    "": 1 / 1024, "m": 1 / 1024, "mb": 1 / 1024, "mib": 1 / 1024,   # a bare number is MB (fMRIPrep)
    "g": 1.0, "gb": 1.0, "gib": 1.0,
    "t": 1024.0, "tb": 1024.0, "tib": 1024.0,
    "k": 1 / 1024**2, "kb": 1 / 1024**2, "kib": 1 / 1024**2,
}


def parse_memory(text: str) -> float:
    """``16G``, ``16GB``, ``16000M``, ``1.5 TiB`` or ``16000`` (MB) -> gigabytes (1 GB = 1024 MB)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if unit not in _UNITS_GB:
        raise ValueError(f"cannot read memory amount {text!r}: use a number and a unit, e.g. 16G, 16000M or 0.5T")
    gb = float(match.group(1)) * _UNITS_GB[unit]
    if gb <= 0:
        raise ValueError(f"memory amount must be positive, got {text!r}")
    return gb


def format_gb(gb: float) -> str:
    return f"{gb:.1f} GB" if gb >= 1 else f"{gb * 1024:.0f} MB"


def available_cpus() -> int:
    """CPUs this process may use (honours taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def total_memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        return None


_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # v2, v1


def memory_limit_gb() -> float | None:
    """The memory this process may use: the machine's, or less when a container or job (cgroup) caps it."""
    limits = [total_memory_gb()]
    for path in _CGROUP_LIMITS:
        try:
            with open(path) as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) means no cap
            limits.append(int(text) / 1024**3)
    limits = [gb for gb in limits if gb]
    return min(limits) if limits else None


# Peak memory of one enhancement: a base (torch, the prior, the prior's batches of slices and their
# activations, which do not grow with the volume) plus bytes per output voxel (the estimate, the INR's
# feature grids, their values on the whole grid and the gradients of both). Fitted to the peaks measured on
# full heads at 2 mm and 1 mm output (0.9 M and 7.0 M voxels) and checked on the benchmark's 1.3 M- and
# 2.8 M-voxel volumes and three fused stacks of a head: within 15 % of each (benchmarks/README.md, "Memory model").
# Nipype uses it to decide how many scans run at once under --mem.
_BYTES_PER_OUTPUT_VOXEL = 150
_BASE_GB = 0.75
# Each further fused stack: its operator's sample points (kept while its motion holds) and their gradients
# through the sampling.
_BYTES_PER_STACK_OUTPUT_VOXEL = 50
# The input itself: the stored data, its float32 copy, the normalised copy and the reoriented copy.
_BYTES_PER_INPUT_VOXEL = 16


def estimate_enhance_mem_gb(output_shape, num_samples: int = 1, input_shape=None, stacks=()) -> float:
    """Memory of one enhancement; ``stacks`` (the other stacks' shapes) when several are fused."""
    voxels = math.prod(int(n) for n in output_shape)
    per_sample = voxels * _BYTES_PER_OUTPUT_VOXEL / 1024**3
    extra_maps = voxels * 4 * 3 / 1024**3 if num_samples > 1 else 0.0  # running mean, M2, std
    inputs = sum(math.prod(int(n) for n in shape) for shape in [input_shape, *stacks] if shape)
    per_stack = len(stacks) * voxels * _BYTES_PER_STACK_OUTPUT_VOXEL / 1024**3
    return round(_BASE_GB + per_sample + extra_maps + inputs * _BYTES_PER_INPUT_VOXEL / 1024**3 + per_stack, 2)


# Peak memory of one SynthSeg segmentation of a 1 mm head, by kind of weights, rounded up from
# benchmarks/synthseg_speed.py (benchmarks/README.md, "Memory model"); the input grid adds its float
# copies and label maps. mri_synthseg (TensorFlow) is counted as the official port plus 2 GB.
_SYNTHSEG_BASE_GB = {"tiny": 2.2, "official": 3.8, "robust": 4.1}
_SYNTHSEG_BYTES_PER_INPUT_VOXEL = 24
_OFFICIAL_SIZED_BYTES = 20 * 1024**2  # the official files are 53 MB (2.0) and 215 MB (robust)


def estimate_synthseg_mem_gb(input_shape, robust: bool = False, weights_bytes: int | None = None,
                             backend: str = "torch") -> float:
    """Memory of one segmentation, for Nipype's scheduling under ``--mem``."""
    if weights_bytes is not None and weights_bytes < _OFFICIAL_SIZED_BYTES:
        base = _SYNTHSEG_BASE_GB["tiny"]
    else:
        base = _SYNTHSEG_BASE_GB["robust" if robust else "official"]
    if backend == "freesurfer":
        base += 2.0
    voxels = math.prod(int(n) for n in input_shape)
    return round(base + voxels * _SYNTHSEG_BYTES_PER_INPUT_VOXEL / 1024**3, 2)
