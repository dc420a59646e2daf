"""THE METHOD: DiffDeuR low-field enhancement, pure numpy/torch (no files, no BIDS, no Nipype).

One entry point, :func:`enhance`, used by the BIDS App, the benchmark and the tests::

    prior = diffdeur_bids.priors.load_prior()        # the shipped prior (files are read there)
    result = enhance(lf, lf_affine, EnhanceSettings.preset("default"), prior=prior)
    result.image, result.affine, result.std, result.info

Imports run one way: ``problem`` <- ``hqs`` <- ``baselines``, ``start``, ``diffdeur`` <-
``methods`` <- ``api``; below them the building blocks (``grids``, ``forward``, ``inr``,
``prior``, ``linalg``, ``settings``).
"""

from .api import EnhanceResult, enhance
from .devices import resolve_device
from .errors import (CheckpointError, DeviceError, EnhanceError, InvalidInputError, MissingDependencyError,
                     RegistrationError)
from .grids import Grid, output_grid
from .methods import METHODS, Method, check_settings, get_method
from .prior import Prior, PriorConfig
from .problem import MAX_OUTPUT_VOXELS
from .settings import PRESETS, EnhanceSettings

__all__ = [
    "CheckpointError", "DeviceError", "EnhanceError", "EnhanceResult", "EnhanceSettings", "Grid",
    "InvalidInputError", "MAX_OUTPUT_VOXELS", "METHODS", "Method", "MissingDependencyError", "PRESETS", "Prior",
    "PriorConfig", "RegistrationError", "check_settings", "enhance", "get_method", "output_grid", "resolve_device",
]
