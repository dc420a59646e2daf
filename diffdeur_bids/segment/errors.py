"""Typed exceptions of the segmentation step, so the CLI can fail early with a useful message."""

WEIGHTS_HELP = (
    "SynthSeg needs either FreeSurfer >= 7.3 (mri_synthseg on the PATH, FREESURFER_HOME set and a "
    "FreeSurfer licence) or the official SynthSeg Keras weights for the built-in PyTorch port. "
    "The weights are not downloaded at run time: take `synthseg_2.0.h5` (or "
    "`synthseg_robust_2.0.h5` for --synthseg-robust) from a FreeSurfer >= 7.3 installation "
    "($FREESURFER_HOME/models/) or from the official SynthSeg distribution "
    "(https://github.com/BBillot/SynthSeg, README download link, files go into models/), "
    "and pass the file with `--synthseg-model PATH`. "
    "Expected sizes: synthseg_2.0.h5 53,079,152 bytes (sha256 f190bfd7...0c3e), "
    "synthseg_robust_2.0.h5 214,606,800 bytes (sha256 7bc30bf5...b01c)."
)


class SegmentationError(Exception):
    """Base class of every error the segmentation step raises on purpose."""


class SegmentationUnavailable(SegmentationError):
    """No usable backend: no FreeSurfer `mri_synthseg` and no weights file for the port."""

    def __init__(self, reason: str = ""):
        message = (reason.rstrip(". ") + ". " if reason else "") + WEIGHTS_HELP
        super().__init__(message)


class WeightsError(SegmentationError, ValueError):
    """A weights file exists but is corrupt, truncated, or not a SynthSeg segmentation network."""


class InvalidImageError(SegmentationError, ValueError):
    """The image cannot be segmented as given (not 3D, non-finite values, degenerate affine)."""


class BackendError(SegmentationError, RuntimeError):
    """An external backend (FreeSurfer `mri_synthseg`) failed."""
