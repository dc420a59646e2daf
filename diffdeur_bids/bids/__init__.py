"""Everything BIDS: finding input scans, naming derivatives, sidecars and the dataset's top-level files.

Imported as ``diffdeur_bids.bids``; inside it ``import bids`` still means pybids (absolute imports).
"""

from .discovery import Discovery, Scan, Skipped, discover
from .naming import MODALITIES, SourceName, derivative_relpath, enhanced_relpath

__all__ = ["Discovery", "MODALITIES", "Scan", "Skipped", "SourceName", "derivative_relpath",
           "discover", "enhanced_relpath"]
