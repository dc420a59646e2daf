"""The version comes from the top-level ``version`` file, via the installed package metadata."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("diffdeur")
except PackageNotFoundError:  # running from a source tree that is not installed
    _file = Path(__file__).resolve().parent.parent / "version"
    __version__ = _file.read_text().strip() if _file.is_file() else "0+unknown"
