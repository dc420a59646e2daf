"""THE METHOD: DiffDeuR low-field enhancement, pure numpy/torch (no files, no BIDS, no Nipype).

One entry point, :func:`enhance`, used by the BIDS App, the benchmark and the tests::

    result = enhance(lf, lf_affine, EnhanceSettings.preset("default"), prior=None)
    result.image, result.affine, result.std, result.info
"""

from .devices import resolve_device
from .errors import CheckpointError, DeviceError, EnhanceError, InvalidInputError, MissingDependencyError
from .grids import Grid, output_grid
from .prior import Prior, PriorConfig, default_prior_path, load_prior, save_prior
from .settings import METHODS, PRESETS, EnhanceSettings
from .solver import EnhanceResult, enhance, load_default_prior

__all__ = [
    "CheckpointError", "DeviceError", "EnhanceError", "EnhanceResult", "EnhanceSettings", "Grid",
    "InvalidInputError", "METHODS", "MissingDependencyError", "PRESETS", "Prior", "PriorConfig",
    "default_prior_path", "enhance", "load_default_prior", "load_prior", "output_grid",
    "resolve_device", "save_prior",
]
