"""Ranking heads: turn the distances of a triplet into a loss against the human judgment."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check_choice

LOSSES = ("bce_rank", "hinge")


class BCERankingHead(nn.Module):
    """The paper's ranking head: a small network predicts the judgment from (d0, d1); BCE loss.

    Input features (d0, d1, d0-d1, d0/(d1+eps), d1/(d0+eps)) -> 32 -> 32 -> 1 with LeakyReLU(0.2),
    as the original's 1x1 convolutions (here `Linear`, the same map on (N, 5)). The sigmoid
    is folded into the loss (BCE with logits: the same value, stable, and autocast-safe).
    """

    def __init__(self, hidden: int = 32, eps: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.net = nn.Sequential(
            nn.Linear(5, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1)
        )

    def logit(self, d0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
        d = torch.stack([d0, d1], dim=1)
        ratios = d / (d.flip(1) + self.eps)  # d0 / (d1 + eps), d1 / (d0 + eps): one op each way, not two
        x = torch.cat([d, (d0 - d1).unsqueeze(1), ratios], dim=1)
        return self.net(x).squeeze(1)

    def forward(self, d0: torch.Tensor, d1: torch.Tensor, judge: torch.Tensor) -> torch.Tensor:
        logit = self.logit(d0.float(), d1.float())
        return F.binary_cross_entropy_with_logits(logit, judge.float())


class HingeHead(nn.Module):
    """Hinge ranking loss, as DreamSim trains: mean(relu(margin - t (d0 - d1))), t = 2 judge - 1."""

    def __init__(self, margin: float = 0.05) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, d0: torch.Tensor, d1: torch.Tensor, judge: torch.Tensor) -> torch.Tensor:
        t = 2 * judge.float() - 1
        return F.relu(self.margin - t * (d0.float() - d1.float())).mean()


def make_head(loss: str, margin: float = 0.05) -> nn.Module:
    """The ranking head for `loss` (``bce_rank`` or ``hinge``)."""
    check_choice("loss", loss, LOSSES)
    return BCERankingHead() if loss == "bce_rank" else HingeHead(margin)
