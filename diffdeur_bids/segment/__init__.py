"""SynthSeg segmentation of the enhanced images: a verified PyTorch port and a FreeSurfer backend.

Pure numpy/torch (h5py only to read the official ``.h5`` weights); no BIDS, no Nipype::

    backend, weights = choose_backend(model_path, robust)         # fails early, with where to get weights
    result = segment(image, affine, weights, robust=False)         # torch port
    result = segment_freesurfer(image, affine, robust=False)       # FreeSurfer's mri_synthseg
    result.labels, result.affine, result.volumes, result.tiv_mm3, result.volume_rows()
    dseg_lookup_rows()                                             # desc-synthseg_dseg.tsv rows
"""

from .backends import (OFFICIAL_WEIGHTS, available_backends, choose_backend, default_weights, identify_weights,
                       inspect_weights)
from .errors import (BackendError, InvalidImageError, SegmentationError, SegmentationUnavailable,
                     WeightsError)
from .freesurfer import freesurfer_lut_rows, freesurfer_status, mri_synthseg_command, segment_freesurfer
from .labels import dseg_lookup_rows, label_infos, label_values, volume_rows
from .model import SynthSegNetwork, convert_keras_to_safetensors, load_network
from .pipeline import SegResult, segment

__all__ = [
    "BackendError", "InvalidImageError", "OFFICIAL_WEIGHTS", "SegResult", "SegmentationError",
    "SegmentationUnavailable", "SynthSegNetwork", "WeightsError", "available_backends", "choose_backend",
    "convert_keras_to_safetensors", "default_weights", "dseg_lookup_rows", "freesurfer_lut_rows", "freesurfer_status",
    "identify_weights", "inspect_weights", "label_infos", "label_values", "load_network", "mri_synthseg_command",
    "segment", "segment_freesurfer", "volume_rows",
]
