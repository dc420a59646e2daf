"""Reading and writing volumes, and reorienting to RAS+ without moving anything in the world.

Kept apart from the Nipype interfaces so tests and the plan can use the same functions.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def ras_grid(shape, affine) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine a volume will have after :func:`reorient_to_ras`, from its header alone."""
    ornt = nib.io_orientation(affine)
    new_shape = [0, 0, 0]
    for old_axis, (new_axis, _flip) in enumerate(ornt):
        new_shape[int(new_axis)] = int(shape[old_axis])
    return tuple(new_shape), affine @ nib.orientations.inv_ornt_aff(ornt, shape[:3])


def reorient_to_ras(in_file: str | Path, out_file: str | Path) -> Path:
    """Voxel axes permuted/flipped to RAS+; the affine changes with them, so world coordinates do not.

    The data are read here, so a truncated or corrupt file fails with :class:`UnreadableScanError`.
    """
    import zlib

    from .errors import UnreadableScanError

    img = nib.load(str(in_file))
    try:
        if img.ndim == 4 and img.shape[3] == 1:
            img = img.slicer[..., 0]
        ras = nib.as_closest_canonical(img)
        np.asanyarray(ras.dataobj)  # in memory once reoriented; an image already RAS+ is read here to check it
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise UnreadableScanError(f"cannot read the image data of {Path(in_file).name} ({e}): the file is truncated "
                                  "or corrupt; copy or convert it again") from e
    ras.header.set_xyzt_units("mm")
    nib.save(ras, str(out_file))
    return Path(out_file)


def load_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """A 3D float32 array in the file's intensity units (scaling applied), its affine and header."""
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    return data, img.affine.copy(), img.header


def space_code(header: nib.Nifti1Header) -> int:
    """The NIfTI space code to write outputs with: the input's sform code, else its qform code, else scanner (1)."""
    return int(header["sform_code"]) or int(header["qform_code"]) or 1


def save_volume(path: str | Path, data: np.ndarray, affine: np.ndarray, qform_code: int = 1) -> Path:
    """Save float32 with both qform and sform set (scanner space unless told otherwise), units mm."""
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=qform_code)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return Path(path)


def save_labels(path: str | Path, labels: np.ndarray, affine: np.ndarray, qform_code: int = 1) -> Path:
    """Save a label map as int16 (qform and sform as :func:`save_volume`, no intensity scaling)."""
    img = nib.Nifti1Image(np.asarray(labels, dtype=np.int16), affine)
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(1.0, 0.0)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=qform_code)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return Path(path)
