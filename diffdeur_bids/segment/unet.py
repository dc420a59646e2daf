"""The SynthSeg U-Net (the ``unet`` of the ``neuron`` library) in PyTorch, shaped by the weights.

Every size is read from the weight arrays, never assumed: levels, convolutions per level,
kernel size, channels per level, number of labels, and whether a decoder level concatenates
the encoder skip (the robust denoiser ``l2l`` drops the last two skips). So the same code
loads the official files (24 features) and the reduced-width test files (1 or 4 features).

Keras layout reproduced here, per encoder level ``l``: conv -> ELU (x n), BatchNorm, then
2x2x2 max-pooling except at the deepest level; the skip is the last conv's output *before*
the BatchNorm. Per decoder level: nearest 2x upsampling of the previous BatchNorm output,
``concat([skip, up])``, conv -> ELU (x n), BatchNorm; then a 1x1x1 conv and a softmax.
BatchNorm uses Keras' epsilon 1e-3 (PyTorch's default 1e-5 changes the labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import WeightsError

KERAS_BN_EPS = 1e-3


@dataclass(frozen=True)
class UNetSpec:
    """Architecture of one sub-network, as found in the weights."""

    prefix: str
    in_channels: int
    features: tuple[int, ...]  # channels of each encoder level
    kernel_size: int
    convs_per_level: int
    concat: tuple[bool, ...]  # per decoder level (deepest first): concatenates the skip?
    n_labels: int
    batch_norm: bool = True

    @property
    def levels(self) -> int:
        return len(self.features)

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.levels - 1)


def _count(layers: dict, fmt: str) -> int:
    n = 0
    while fmt.format(n) in layers:
        n += 1
    return n


def infer_spec(layers: dict[str, dict[str, np.ndarray]], prefix: str) -> UNetSpec:
    """Read a sub-network's architecture from its Keras layer names and kernel shapes."""
    p = prefix
    levels = _count(layers, p + "_conv_downarm_{}_0")
    n_conv = _count(layers, p + "_conv_downarm_0_{}")
    if levels < 2 or n_conv < 1 or f"{p}_likelihood" not in layers:
        raise WeightsError(f"no complete '{p}' U-Net in the weights (levels={levels}, convs={n_conv})")
    features, kernel = [], None
    for level in range(levels):
        for conv in range(n_conv):
            name = f"{p}_conv_downarm_{level}_{conv}"
            k = layers.get(name, {}).get("kernel")
            if k is None or k.ndim != 5:
                raise WeightsError(f"layer {name} is missing or is not a 3D convolution")
            kernel = kernel or k.shape[0]
            if k.shape[:3] != (kernel,) * 3:
                raise WeightsError(f"layer {name} has kernel {k.shape[:3]}, expected {(kernel,) * 3}")
        features.append(int(layers[f"{p}_conv_downarm_{level}_{n_conv - 1}"]["kernel"].shape[-1]))
    concat, up = [], features[-1]
    for i in range(levels - 1):
        name = f"{p}_conv_uparm_{levels + i}_0"
        if name not in layers:
            raise WeightsError(f"layer {name} is missing from the weights")
        cin = int(layers[name]["kernel"].shape[3])
        skip = features[levels - 2 - i]
        if cin == skip + up:
            concat.append(True)
        elif cin == up:
            concat.append(False)
        else:
            raise WeightsError(f"layer {name} takes {cin} channels; expected {skip + up} or {up}")
        up = int(layers[f"{p}_conv_uparm_{levels + i}_{n_conv - 1}"]["kernel"].shape[-1])
    like = layers[f"{p}_likelihood"]["kernel"]
    if like.shape[:3] != (1, 1, 1) or like.shape[3] != up:
        raise WeightsError(f"{p}_likelihood has shape {like.shape}, expected (1, 1, 1, {up}, n_labels)")
    in_channels = int(layers[f"{p}_conv_downarm_0_0"]["kernel"].shape[3])
    return UNetSpec(p, in_channels, tuple(features), int(kernel), n_conv, tuple(concat),
                    int(like.shape[4]), batch_norm=f"{p}_bn_down_0" in layers)


class _Stage(nn.Module):
    """Convolutions (each followed by ELU) then an optional BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, n_conv: int, kernel: int, batch_norm: bool):
        super().__init__()
        channels = [in_channels] + [out_channels] * n_conv
        self.convs = nn.ModuleList(
            nn.Conv3d(channels[i], channels[i + 1], kernel, padding=kernel // 2) for i in range(n_conv))
        self.bn = nn.BatchNorm3d(out_channels, eps=KERAS_BN_EPS) if batch_norm else None
        self.halo = n_conv * (kernel // 2)  # rows a slab needs on each side to be exact

    def convolve(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Convs with ELU. With ``skip``, the first conv sees ``concat([skip, x])`` without building it."""
        first = self.convs[0]
        if skip is None:
            x = first(x)
        else:
            n_skip = skip.shape[1]
            w = first.weight
            x = F.conv3d(x, w[:, n_skip:], first.bias, padding=first.padding)
            x += F.conv3d(skip, w[:, :n_skip], None, padding=first.padding)
        x = F.elu(x, inplace=True)
        for conv in self.convs[1:]:
            x = F.elu(conv(x), inplace=True)
        return x

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x) if self.bn is not None else x


Sink = Callable[[int, int, torch.Tensor], None]  # (first row, end row, softmax slab)


def _slabs(rows: int, slab: int, halo: int):
    """``(a, b, lo, hi)``: output rows ``[a, b)`` computed from input rows ``[lo, hi)``."""
    for a in range(0, rows, slab):
        b = min(a + slab, rows)
        yield a, b, max(a - halo, 0), min(b + halo, rows)


def _pointwise(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1x1 convolution as a matrix product: one output buffer, no blocked-layout copies."""
    w = conv.weight[:, :, 0, 0, 0]
    out = torch.einsum("oc,ncs->nos", w, x.flatten(2)).add_(conv.bias[None, :, None])
    return out.reshape(x.shape[0], w.shape[0], *x.shape[2:])


def _softmax_(x: torch.Tensor) -> torch.Tensor:
    """Softmax over channels, in place (same max-subtracted formula as ``torch.softmax``)."""
    x.sub_(x.amax(dim=1, keepdim=True)).exp_()
    return x.div_(x.sum(dim=1, keepdim=True))


class SynthSegUNet(nn.Module):
    """One U-Net; ``forward`` returns softmax posteriors ``(N, n_labels, D, H, W)``.

    The full-resolution stages (first encoder level, last decoder level with the 1x1x1 conv
    and softmax) run in slabs along the first spatial axis with a halo of ``convs * (k // 2)``
    rows, which gives exactly the unsliced result while holding only a slab of their
    activations at once; these stages hold most of the memory of the whole network.
    """

    slab_rows = 32  # even, so 2x2x2 pooling never straddles two slabs

    def __init__(self, spec: UNetSpec):
        super().__init__()
        self.spec = spec
        f, k, n, bn = spec.features, spec.kernel_size, spec.convs_per_level, spec.batch_norm
        self.down = nn.ModuleList(
            _Stage(spec.in_channels if lv == 0 else f[lv - 1], f[lv], n, k, bn) for lv in range(spec.levels))
        up, stages = f[-1], []
        for i in range(spec.levels - 1):
            out = f[spec.levels - 2 - i]
            cin = up + (out if spec.concat[i] else 0)
            stages.append(_Stage(cin, out, n, k, bn))
            up = out
        self.up = nn.ModuleList(stages)
        self.likelihood = nn.Conv3d(up, spec.n_labels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_empty((x.shape[0], self.spec.n_labels) + tuple(x.shape[2:]))
        self.run(x, lambda a, b, p: out[:, :, a:b].copy_(p))
        return out

    def run(self, x: torch.Tensor, sink: Sink) -> None:
        """Compute the posteriors of ``x`` and hand them to ``sink`` slab by slab (rows of axis 2)."""
        rows = x.shape[2]
        keep_skip0 = self.spec.concat[-1]
        skip0, x = self._first_level(x, keep_skip0)
        skips = []
        for level in range(1, len(self.down)):
            stage = self.down[level]
            x = stage.convolve(x)
            if level < len(self.down) - 1:
                skips.append(x)
                x = F.max_pool3d(stage.normalise(x), 2, ceil_mode=True)
            else:
                x = stage.normalise(x)
        for i, stage in enumerate(self.up[:-1]):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            skip = skips.pop()
            x = stage.convolve(x, skip if self.spec.concat[i] else None)
            del skip
            x = stage.normalise(x)
        self._last_level(x, skip0, rows, sink)

    def _first_level(self, x: torch.Tensor, keep_skip: bool):
        stage, rows = self.down[0], x.shape[2]
        skip = pooled = None
        for a, b, lo, hi in _slabs(rows, self.slab_rows, stage.halo):
            y = stage.convolve(x[:, :, lo:hi])[:, :, a - lo:b - lo]
            if keep_skip:
                if skip is None:
                    skip = y.new_empty(y.shape[:2] + (rows,) + y.shape[3:])
                skip[:, :, a:b] = y
            z = F.max_pool3d(stage.normalise(y), 2, ceil_mode=True)
            if pooled is None:
                pooled = z.new_empty(z.shape[:2] + ((rows + 1) // 2,) + z.shape[3:])
            pooled[:, :, a // 2:a // 2 + z.shape[2]] = z
        return skip, pooled

    def _last_level(self, x: torch.Tensor, skip: torch.Tensor | None, rows: int, sink: Sink) -> None:
        stage = self.up[-1]
        for a, b, lo, hi in _slabs(rows, self.slab_rows, stage.halo):
            up = F.interpolate(x[:, :, lo // 2:(hi + 1) // 2], scale_factor=2, mode="nearest")
            up = up[:, :, lo % 2:lo % 2 + hi - lo]
            y = stage.convolve(up, skip[:, :, lo:hi] if skip is not None else None)[:, :, a - lo:b - lo]
            del up
            logits = _pointwise(self.likelihood, stage.normalise(y))
            del y
            sink(a, b, _softmax_(logits))


    def load_keras(self, layers: dict[str, dict[str, np.ndarray]]) -> None:
        """Copy Keras arrays in: kernels (kx,ky,kz,cin,cout) -> (cout,cin,kx,ky,kz), no spatial flip."""
        p, lv = self.spec.prefix, self.spec.levels

        def conv(module: nn.Conv3d, name: str) -> None:
            w = layers[name]
            module.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(w["kernel"].transpose(4, 3, 0, 1, 2))))
            module.bias.data.copy_(torch.from_numpy(w["bias"]))

        def norm(module: nn.BatchNorm3d | None, name: str) -> None:
            if module is None:
                return
            w = layers[name]
            module.weight.data.copy_(torch.from_numpy(w["gamma"]))
            module.bias.data.copy_(torch.from_numpy(w["beta"]))
            module.running_mean.copy_(torch.from_numpy(w["moving_mean"]))
            module.running_var.copy_(torch.from_numpy(w["moving_variance"]))

        try:
            for level, stage in enumerate(self.down):
                for c, module in enumerate(stage.convs):
                    conv(module, f"{p}_conv_downarm_{level}_{c}")
                norm(stage.bn, f"{p}_bn_down_{level}")
            for i, stage in enumerate(self.up):
                for c, module in enumerate(stage.convs):
                    conv(module, f"{p}_conv_uparm_{lv + i}_{c}")
                norm(stage.bn, f"{p}_bn_up_{i}")
            conv(self.likelihood, f"{p}_likelihood")
        except (KeyError, RuntimeError) as exc:
            raise WeightsError(f"weights of '{p}' do not fit the U-Net they describe: {exc}") from exc
