"""diffdeur: low-field MRI enhancement (DiffDeuR) as a BIDS App."""

from ._version import __version__

__all__ = ["__version__"]
