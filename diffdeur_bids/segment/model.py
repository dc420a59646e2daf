"""SynthSeg networks (2.0, 1.0, robust 2.0) built from a weights file, plus safetensors conversion.

The kind of network is recognised from the layer names, as SynthSeg's own ``build_model``
would load them by name: ``unet`` alone is SynthSeg 1.0/2.0 (32/33 labels); ``unet`` ->
``l2l`` -> ``unet2`` is SynthSeg-robust 2.0, where each stage's softmax is turned into a
one-hot of its argmax before the next stage (exactly the Keras ``Lambda`` transitions), and
the last stage sees ``concat([image, one_hot])``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import labels as lab
from .errors import SegmentationUnavailable, WeightsError
from .keras_h5 import read_keras_weights
from .unet import SynthSegUNet, UNetSpec, infer_spec

SAFETENSORS_FORMAT = "diffdeur-synthseg"


def _one_hot_argmax(posteriors: torch.Tensor) -> torch.Tensor:
    n = posteriors.shape[1]
    return F.one_hot(posteriors.argmax(1), n).permute(0, 4, 1, 2, 3).to(posteriors.dtype)


class SynthSegNetwork(nn.Module):
    """A SynthSeg segmentation network: ``forward(image)`` -> final softmax posteriors.

    ``image`` is ``(N, 1, D, H, W)`` float32 in [0, 1] with sizes divisible by ``size_multiple``.
    """

    def __init__(self, specs: list[UNetSpec]):
        super().__init__()
        self.specs = tuple(specs)
        self.nets = nn.ModuleList(SynthSegUNet(s) for s in specs)
        self.robust = len(specs) == 3
        self.version = lab.version_for_channels(specs[-1].n_labels)
        if self.robust:
            groups = specs[0].n_labels
            if specs[1].in_channels != groups or specs[2].in_channels != 1 + (groups if groups > 2 else groups - 1):
                raise WeightsError("robust SynthSeg stages are not wired as unet -> l2l -> unet2")
        if specs[0].in_channels != 1:
            raise WeightsError(f"the first SynthSeg stage takes {specs[0].in_channels} channels, expected 1 (the image)")
        self.eval()

    @property
    def name(self) -> str:
        return f"SynthSeg{'-robust' if self.robust else ''} {self.version}"

    @property
    def size_multiple(self) -> int:
        return max(s.size_multiple for s in self.specs)

    @property
    def label_values(self) -> np.ndarray:
        return lab.label_values(self.version)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = image.new_empty((image.shape[0], self.specs[-1].n_labels) + tuple(image.shape[2:]))
        self.run(image, lambda a, b, p: out[:, :, a:b].copy_(p))
        return out

    def run(self, image: torch.Tensor, sink) -> None:
        """Final posteriors handed to ``sink(first_row, end_row, slab)``, without a full extra copy."""
        if not self.robust:
            self.nets[0].run(image, sink)
            return
        onehot = _one_hot_argmax(self.nets[0](image))
        onehot = _one_hot_argmax(self.stage2(onehot))
        self.nets[2].run(self.stage3_input(image, onehot), sink)

    def stage2(self, onehot1: torch.Tensor) -> torch.Tensor:
        """Robust denoiser ``l2l`` on the one-hot of stage 1."""
        return self.nets[1](onehot1)

    @staticmethod
    def stage3_input(image: torch.Tensor, onehot2: torch.Tensor) -> torch.Tensor:
        """What the robust final ``unet2`` reads: ``concat([image, one_hot(stage 2)])``."""
        if onehot2.shape[1] <= 2:  # as the Keras code: with 2 groups only the foreground channel is kept
            onehot2 = onehot2[:, 1:]
        return torch.cat([image, onehot2], dim=1)


def _specs_from_layers(layers: dict, source: str) -> list[UNetSpec]:
    names = set(layers)
    has = {p: f"{p}_likelihood" in names for p in ("unet", "l2l", "unet2", "unet_parc")}
    if has["unet"] and has["l2l"] and has["unet2"]:
        return [infer_spec(layers, p) for p in ("unet", "l2l", "unet2")]
    if has["unet"]:
        return [infer_spec(layers, "unet")]
    if has["unet_parc"]:
        raise WeightsError(f"{source} is the SynthSeg cortical parcellation network (synthseg_parc_2.0.h5); "
                           "pass the segmentation network synthseg_2.0.h5 or synthseg_robust_2.0.h5")
    if any(n.startswith("qc_") for n in names):
        raise WeightsError(f"{source} is the SynthSeg QC network (synthseg_qc_2.0.h5), not a segmentation network")
    raise WeightsError(f"{source} holds no SynthSeg segmentation network (no 'unet_likelihood' layer)")


def build_from_keras_layers(layers: dict, source: str = "weights") -> SynthSegNetwork:
    specs = _specs_from_layers(layers, source)
    try:
        net = SynthSegNetwork(specs)
    except ValueError as exc:  # wrong number of labels
        raise WeightsError(f"{source}: {exc}") from exc
    for module in net.nets:
        module.load_keras(layers)
    return net.eval()


def load_network(path: str | Path) -> SynthSegNetwork:
    """Load a SynthSeg network from the official Keras ``.h5`` or from a converted ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise SegmentationUnavailable(f"SynthSeg weights file not found: {path}")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    return build_from_keras_layers(read_keras_weights(path), str(path))


def _spec_to_json(spec: UNetSpec) -> dict:
    return dict(prefix=spec.prefix, in_channels=spec.in_channels, features=list(spec.features),
                kernel_size=spec.kernel_size, convs_per_level=spec.convs_per_level,
                concat=list(spec.concat), n_labels=spec.n_labels, batch_norm=spec.batch_norm)


def save_safetensors(net: SynthSegNetwork, path: str | Path, source: str = "") -> Path:
    """One-off conversion: the weights plus the architecture, loadable without h5py."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    meta = {"format": SAFETENSORS_FORMAT, "version": "1",
            "specs": json.dumps([_spec_to_json(s) for s in net.specs]), "source": source}
    save_file(state, str(path), metadata=meta)
    return path


def convert_keras_to_safetensors(h5_path: str | Path, out_path: str | Path) -> Path:
    h5_path = Path(h5_path)
    return save_safetensors(load_network(h5_path), out_path, source=h5_path.name)


def _load_safetensors(path: Path) -> SynthSegNetwork:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != SAFETENSORS_FORMAT:
                raise WeightsError(f"{path} is a safetensors file but not a converted SynthSeg network")
            specs = [UNetSpec(**{**s, "features": tuple(s["features"]), "concat": tuple(s["concat"])})
                     for s in json.loads(meta["specs"])]
            state = {k: handle.get_tensor(k) for k in handle.keys()}
    except WeightsError:
        raise
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
        raise WeightsError(f"cannot read {path} ({type(exc).__name__}: {exc}); truncated or corrupt?") from exc
    net = SynthSegNetwork(specs)
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise WeightsError(f"{path} does not match its architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net.eval()
