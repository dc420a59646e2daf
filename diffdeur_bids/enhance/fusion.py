"""The data term of several stacks fused into one volume, for the INR's fidelity step.

    sum_j ||A_j f - y_j||^2 / sigma_j^2  +  rho ||f - z||^2

on the output grid, where ``A_j`` is stack ``j``'s operator (``stacks.StackOperator``, through its
motion) and ``sigma_j`` its noise. The INR is rendered once on the output grid; the gradient
with respect to that image comes from autograd through every operator and is then pushed into
the INR, as for one stack (``inr.FidelityProblem``). When the motions are being
refined (:meth:`StacksFidelity.refine_motion`), the same backward pass gives their gradients.
"""

from __future__ import annotations

import torch

from .forward import MIN_NOISE_SIGMA
from .grids import Grid
from .inr import FeatureGridINR, render_on
from .stacks import StackOperator


class StacksFidelity:
    def __init__(self, ys: list[torch.Tensor], operators: list[StackOperator], noise_sigmas: list[float],
                 out_grid: Grid, base: torch.Tensor | None = None):
        self.ys, self.ops = ys, operators
        self.base = base  # ``f`` is this image plus the INR: the INR fits only a correction of it
        self.inv_vars = [1.0 / max(float(s), MIN_NOISE_SIGMA) ** 2 for s in noise_sigmas]
        self.out_grid = out_grid
        self.scale = 1.0 / ys[0].numel()  # as for the reference stack alone

    def refine_motion(self, optimizer: torch.optim.Optimizer, lr: float) -> None:
        """From now on, ``optimizer`` also moves every stack's motion but the reference's (the first)."""
        params = []
        for op in self.ops[1:]:
            op.params = op.params.detach().clone().requires_grad_(True)
            params.append(op.params)
        optimizer.add_param_group({"params": params, "lr": lr})

    def data_loss(self, f: torch.Tensor) -> torch.Tensor:
        return sum(((op(f) - y).pow(2).sum() * w) for op, y, w in zip(self.ops, self.ys, self.inv_vars))

    def step(self, inr: FeatureGridINR, z: torch.Tensor | None, rho: float) -> float:
        """One gradient evaluation (accumulated into ``.grad``); returns the objective."""
        features = inr.features(self.out_grid)
        decoded = inr.decode(features).requires_grad_(True)
        with torch.enable_grad():
            f = render_on(decoded, self.base)
            loss = self.data_loss(f)
            if z is not None and rho > 0:
                loss = loss + rho * (f - z).pow(2).sum()
            (loss * self.scale).backward()
        inr.backprop(features, decoded.grad)
        return float(loss.detach()) * self.scale
