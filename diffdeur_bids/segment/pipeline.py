"""``segment()``: SynthSeg on one image with the PyTorch port, from array in to labels and volumes out.

Order of work (SynthSeg's ``predict`` for one image): 1 mm resampling -> RAS axis order ->
percentile rescaling -> network (+ blur and flip averaging for 2.0) -> clean-up -> labels and
soft volumes at 1 mm -> back to the input axis order -> nearest neighbour onto the input grid.
The network runs on a box around the head (``crop="head"``, the geometry of ``mri_synthseg
--autocrop`` around a noise-robust head mask) to bound its memory; ``crop="auto"`` is exactly
``--autocrop`` and ``crop=None`` SynthSeg's default whole field of view.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

from . import labels as lab
from . import postprocess as post
from . import preprocess as pre
from .errors import InvalidImageError, WeightsError
from .model import SynthSegNetwork, load_network


@dataclass
class SegResult:
    """A segmentation on the input grid, with SynthSeg's 1 mm result and its volumes."""

    labels: np.ndarray  # int16, shape of the input image, FreeSurfer label values
    affine: np.ndarray  # the input affine
    volumes: dict[int, float]  # label -> mm3 (soft, from the 1 mm posteriors, as SynthSeg)
    tiv_mm3: float | None  # total intracranial volume (None for SynthSeg 1.0, which has no CSF label)
    labels_1mm: np.ndarray | None = None  # SynthSeg's own output grid
    affine_1mm: np.ndarray | None = None
    model: str = ""
    backend: str = "torch"
    info: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return "1.0" if self.tiv_mm3 is None else "2.0"

    def volume_rows(self) -> list[dict]:
        return lab.volume_rows(self.volumes, self.tiv_mm3, self.version)


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    if not threads:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _network_posteriors(net: SynthSegNetwork, window_image: np.ndarray, device: torch.device,
                        smooth_and_flip: bool) -> np.ndarray:
    """Posteriors ``(C, X, Y, Z)`` on the window: bare network for robust, flip average + blur for 2.0.

    SynthSeg blurs each pass then averages it with the flipped-back pass; the blur is linear and
    left-right symmetric, so averaging first and blurring once is the same, and lets the flipped
    pass be added slab by slab into the one posterior array.
    """
    x = torch.from_numpy(window_image)[None, None].to(device)
    rows = x.shape[2]
    out = x.new_empty((1, net.specs[-1].n_labels) + tuple(x.shape[2:]))
    with torch.inference_mode():
        net.run(x, lambda a, b, p: out[:, :, a:b].copy_(p))
        if smooth_and_flip:
            index = torch.as_tensor(lab.flip_indices(net.version), device=device)

            def add_flipped_back(a: int, b: int, p: torch.Tensor) -> None:
                target = out[:, :, rows - b:rows - a]
                for c, source in enumerate(index.tolist()):  # channel by channel: no slab-sized copies
                    target[:, c].add_(torch.flip(p[:, source], dims=[1]))

            net.run(torch.flip(x, dims=[2]), add_flipped_back)
            out.mul_(0.5)
            post.blur_posteriors(out)
    return out[0].cpu().numpy()


def segment(image, affine, model_path, robust: bool = False, device: str | torch.device = "cpu",
            threads: int | None = None, *, fast: bool = False, crop: str | None = "head") -> SegResult:
    """Segment a 3D image with SynthSeg 2.0 (or robust 2.0) using the PyTorch port.

    ``model_path`` is the official Keras ``.h5``, a converted ``.safetensors``, or an already
    loaded network. ``robust`` must match the weights (robust needs ``synthseg_robust_2.0.h5``).
    ``fast`` skips flip averaging and the topology clean-up, as ``mri_synthseg --fast``; robust
    implies it, as in SynthSeg. ``crop``: ``"head"`` runs the network on a box around the head
    only (memory), ``"auto"`` is ``mri_synthseg --autocrop``, ``None`` the whole field of view.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InvalidImageError("affine must be a finite, invertible 4x4 matrix")
    volume = pre.as_volume(image)
    net = model_path if isinstance(model_path, SynthSegNetwork) else load_network(model_path)
    if robust != net.robust:
        want = "synthseg_robust_2.0.h5" if robust else "synthseg_2.0.h5"
        raise WeightsError(f"the weights are {net.name} but robust={robust} was asked for; use {want}")
    device = torch.device(device)
    fast = fast or net.robust

    # SynthSeg pre-processing
    if pre.needs_resampling(affine):
        vol1, aff1 = pre.resample_to_1mm(volume, affine)
    else:
        vol1, aff1 = volume, affine
    voxel_volume = float(np.prod(pre.voxel_sizes(aff1)))
    orient = pre.Orientation.from_affine(aff1)
    aligned = pre.rescale_intensities(orient.apply(vol1))
    del vol1
    windows = {"head": pre.head_window, "auto": pre.autocrop_window, None: lambda v: pre.full_window(v.shape)}
    if crop not in windows:
        raise ValueError(f"crop must be 'head', 'auto' or None, not {crop!r}")
    window = windows[crop](aligned)
    aligned_shape = aligned.shape
    vol_slices, win_slices = window.inside(aligned_shape)
    net_input = window.extract(aligned)
    del aligned

    with _torch_threads(threads):
        net.to(device)
        posteriors = _network_posteriors(net, net_input, device, smooth_and_flip=not fast)
    del net_input

    topology = None if fast else lab.topology_classes(net.version)
    posteriors = post.clean_posteriors(posteriors, topology, fast, crop=win_slices)
    values = net.label_values
    patch = post.hard_labels(posteriors, values)
    volumes, tiv = post.soft_volumes(posteriors, values, voxel_volume)
    del posteriors

    full = np.zeros(aligned_shape, dtype=np.int16)
    full[vol_slices] = patch
    labels_1mm = orient.invert(full)
    labels = pre.nearest_to_grid(labels_1mm, aff1, volume.shape, affine) if aff1 is not affine else labels_1mm
    return SegResult(
        labels=labels.astype(np.int16, copy=False), affine=affine, volumes=volumes,
        tiv_mm3=tiv if net.version == "2.0" else None, labels_1mm=labels_1mm, affine_1mm=aff1,
        model=net.name, backend="torch",
        info={"window_start": window.start, "window_shape": window.shape, "fast": fast,
              "device": str(device), "voxel_volume_mm3": voxel_volume})

