"""Evaluation, apart from the method and the app: the sim-lf-v1 simulation and the quality metrics.

Used by ``diffdeur-simulate``, the demo dataset, the benchmarks and the tests; the app's
enhancement never imports it.
"""

from .metrics import score_volume
from .protocol import TRACKS, normalise_ground_truth, simulate_lowfield

__all__ = ["TRACKS", "normalise_ground_truth", "score_volume", "simulate_lowfield"]
