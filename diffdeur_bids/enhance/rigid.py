"""Rigid transforms of the head between stacks: six parameters, differentiable, in world millimetres.

A stack's motion is ``w -> R (w - c) + c + t``: a rotation ``R`` about the centre ``c`` of the
reference stack's field of view, then a translation ``t``. The parameters are the rotation vector
in degrees and ``t`` in mm, so one optimiser step moves both by comparable amounts.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def rotation_matrix(rotvec_deg: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula; smooth at zero (the series is used below a tiny angle)."""
    v = rotvec_deg * (math.pi / 180.0)
    theta2 = (v * v).sum()
    zero = torch.zeros((), dtype=v.dtype)
    k = torch.stack([torch.stack([zero, -v[2], v[1]]), torch.stack([v[2], zero, -v[0]]),
                     torch.stack([-v[1], v[0], zero])])
    if float(theta2.detach()) < 1e-12:
        a, b = 1.0 - theta2 / 6.0, 0.5 - theta2 / 24.0
    else:
        theta = theta2.sqrt()
        a, b = torch.sin(theta) / theta, (1.0 - torch.cos(theta)) / theta2
    return torch.eye(3, dtype=v.dtype) + a * k + b * (k @ k)


def rigid_matrix(params: torch.Tensor, centre) -> torch.Tensor:
    """The 4 x 4 world transform (float64) of ``params = (rotation vector in degrees, translation in mm)``."""
    p = params.to(torch.float64)
    r = rotation_matrix(p[:3])
    c = torch.as_tensor(np.asarray(centre, dtype=float), dtype=torch.float64)
    top = torch.cat([r, (c - r @ c + p[3:]).unsqueeze(1)], dim=1)
    return torch.cat([top, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)], dim=0)


def rotation_deg(matrix) -> float:
    """The angle of the rotation part of a 4 x 4 transform, in degrees."""
    r = np.asarray(matrix, dtype=float)[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))


def translation_mm(matrix, centre) -> float:
    """How far a transform moves ``centre``, in mm."""
    m, c = np.asarray(matrix, dtype=float), np.asarray(centre, dtype=float)
    return float(np.linalg.norm(m[:3, :3] @ c + m[:3, 3] - c))
