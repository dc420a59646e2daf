"""Nipype interfaces: thin wrappers (load, call a pure function, save); no algorithm lives here."""

import os

os.environ["NIPYPE_NO_ET"] = "1"  # never let Nipype phone home for a version check (offline HPC, containers)

from .enhance import EnhanceImage, EnhanceStacks  # noqa: E402
from .reorient import Reorient  # noqa: E402
from .sink import DerivativesSink, SegmentationSink, StacksSink  # noqa: E402
from .synthseg import SynthSeg  # noqa: E402

__all__ = ["DerivativesSink", "EnhanceImage", "EnhanceStacks", "Reorient", "SegmentationSink", "StacksSink", "SynthSeg"]
