"""JSON sidecars of the derivatives: what the file is, where it came from, and how it was made.

``SkullStripped`` is REQUIRED for image derivatives (the validator errors without it); ``Sources``
are BIDS URIs resolved through ``DatasetLinks.raw``; acquisition metadata that stays true for the
enhanced image is copied from the source; the ``DiffDeuR`` object is the provenance record.
"""

from __future__ import annotations

from .naming import bids_uri

# Source metadata that still describes the enhanced image: scanner, contrast and timing. Keys about
# the sampling grid (slice thickness, matrix sizes, bandwidth per voxel...) no longer apply.
ACQUISITION_KEYS = (
    "MagneticFieldStrength", "Manufacturer", "ManufacturersModelName", "DeviceSerialNumber",
    "StationName", "SoftwareVersions", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "ReceiveCoilName", "ReceiveCoilActiveElements",
    "ScanningSequence", "SequenceVariant", "ScanOptions", "SequenceName", "PulseSequenceType",
    "PulseSequenceDetails", "MRAcquisitionType", "EchoTime", "RepetitionTime", "InversionTime",
    "FlipAngle", "EchoTrainLength", "ContrastBolusIngredient", "BodyPart",
)

PROVENANCE_KEY = "DiffDeuR"
SYNTHSEG_KEY = "SynthSeg"
# Shared by every dseg sidecar and the top-level desc-synthseg_dseg.json, which they inherit from;
# what differs per scan (model, robust, parcellation) is in the ``SynthSeg`` object and ``Sources``.
SYNTHSEG_DESCRIPTION = (
    "SynthSeg segmentation of the DiffDeuR-enhanced image named in Sources, with FreeSurfer label values "
    "listed in the top-level desc-synthseg_dseg.tsv; resampled from SynthSeg's 1 mm grid onto the enhanced "
    "image's grid by nearest neighbour")


def _mm(values) -> str:
    return "x".join(f"{float(v):g}" for v in values) + " mm"


def propagated_metadata(source_metadata: dict) -> dict:
    return {k: source_metadata[k] for k in ACQUISITION_KEYS if k in source_metadata}


def enhanced_sidecar(source_relpath, source_metadata: dict, provenance: dict,
                     input_zooms, output_zooms) -> dict:
    """Sidecar of ``desc-enhanced_<suffix>`` (and of its ``desc-preproc`` copy)."""
    uri = bids_uri(source_relpath)
    return {
        "Description": "Low-field scan reoriented to RAS+ (world coordinates unchanged), then denoised "
                       "and super-resolved by DiffDeuR (diffusion prior + implicit neural representation)",
        "Sources": [uri],
        "SpatialReference": uri,
        "SkullStripped": False,
        "Resolution": f"{_mm(output_zooms)} (input {_mm(input_zooms)})",
        **propagated_metadata(source_metadata),
        PROVENANCE_KEY: provenance,
    }


def fused_sidecar(sources, source_metadata: dict, provenance: dict, input_zooms, output_zooms) -> dict:
    """Sidecar of a ``desc-enhanced`` image fused from several stacks (``sources``, the reference first)."""
    uris = [bids_uri(s) for s in sources]
    return {
        **enhanced_sidecar(sources[0], source_metadata, provenance, input_zooms, output_zooms),
        "Description": f"{len(uris)} thick-slice stacks of one contrast, each reoriented to RAS+ (world coordinates "
                       "unchanged), rigidly aligned to the first (SpatialReference) and fused into one denoised, "
                       "super-resolved volume by DiffDeuR (diffusion prior + one implicit neural representation "
                       "through every stack); it covers the reference's field of view",
        "Sources": uris,
    }


def stacks_record(stacks: list[dict], sources, transforms) -> list[dict]:
    """The provenance's ``Stacks``: each stack's noise and registration (the method's record), its source and
    its transform file (a BIDS URI into this dataset)."""
    return [{"Source": bids_uri(src), "Transform": bids_uri(xfm, dataset=""),
             **{_INFO_NAMES.get(k, _camel(k)): v for k, v in entry.items()}}
            for entry, src, xfm in zip(stacks, sources, transforms)]


def std_sidecar(source_relpath, enhanced_relpath, source_metadata: dict, provenance: dict,
                output_zooms, num_samples: int) -> dict:
    """Sidecar of the uncertainty map written when ``--num-samples`` > 1."""
    return {
        "Description": f"Voxel-wise standard deviation across {num_samples} DiffDeuR posterior samples "
                      "(uncertainty of the enhanced image, in its units)",
        "Sources": [bids_uri(source_relpath)],
        "SpatialReference": bids_uri(enhanced_relpath, dataset=""),
        "SkullStripped": False,
        "Resolution": _mm(output_zooms),
        PROVENANCE_KEY: provenance,  # no acquisition metadata: field strength or echo time do not describe a std map
    }


# The method's info keys, as they appear in the provenance object; unknown keys pass through.
_INFO_NAMES = {
    "method": "Method", "weights_sha256": "WeightsSHA256", "upsampler_sha256": "UpsamplerSHA256", "settings": "Settings",
    "device": "Device", "device_name": "DeviceName", "torch": "TorchVersion", "cuda": "CUDAVersion",
    "threads": "Threads", "noise_sigma_estimated": "NoiseSigmaEstimated", "noise_sigma_used": "NoiseSigma",
    "intensity_scale": "IntensityScale", "input_shape": "InputShape", "output_shape": "OutputShape",
    "output_voxel_size_mm": "OutputVoxelSize", "subdivision": "Subdivision", "elapsed_seconds": "EnhanceSeconds",
    "acquired_voxel_size_mm": "AcquiredVoxelSize", "snr_input": "SNRInput", "snr_output": "SNROutput",
    # each fused stack's registration (``Stacks``)
    "ncc": "NCC", "edges": "EdgeCorrelation", "translation_mm": "TranslationMM",
}


def _camel(key: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in key.split("_"))


def provenance(info: dict, app: dict) -> dict:
    """The ``DiffDeuR`` sidecar object: the app run (version, run id, command) plus the method's record.

    ``info`` is ``EnhanceResult.info``; ``Seed`` is lifted out of the settings because it is the first
    thing asked when two runs differ. GPU and CPU results are not bit-identical, hence ``Device``.
    """
    record = {_INFO_NAMES.get(k, _camel(k)): v for k, v in info.items()}
    seed = (info.get("settings") or {}).get("seed")
    return {**app, **({"Seed": seed} if seed is not None else {}), **record}


# The segmentation node's info keys, as they appear in the dseg sidecar's ``SynthSeg`` object.
_SEG_NAMES = {
    "backend": "Backend", "model": "Model", "model_file": "ModelFile", "model_sha256": "ModelSHA256",
    "official_file": "OfficialModelFile", "robust": "Robust", "parc": "Parcellation", "fast": "Fast",
    "crop": "Crop", "device": "Device", "threads": "Threads", "torch": "TorchVersion",
    "freesurfer": "FreeSurferVersion", "command": "Command", "tiv_mm3": "TotalIntracranialVolume",
    "elapsed_seconds": "SegmentSeconds", "labels_grid": "LabelsGrid",
}


def synthseg_record(info: dict) -> dict:
    """The ``SynthSeg`` sidecar object from the segmentation node's info (unknown keys pass through)."""
    return {_SEG_NAMES.get(k, _camel(k)): v for k, v in info.items()}


def synthseg_sidecar(enhanced_relpath, app: dict, info: dict, zooms) -> dict:
    """Sidecar of ``desc-synthseg_dseg``: made from, and aligned with, the enhanced image.

    ``Sources`` and ``SpatialReference`` are BIDS URIs into this dataset (``bids::``); the labels are
    listed in the top-level ``desc-synthseg_dseg.tsv``.
    """
    uri = bids_uri(enhanced_relpath, dataset="")
    return {
        "Description": SYNTHSEG_DESCRIPTION,
        "Sources": [uri],
        "SpatialReference": uri,
        "Resolution": _mm(zooms),
        PROVENANCE_KEY: dict(app),
        SYNTHSEG_KEY: synthseg_record(info),
    }
