"""Training values kept on the device and read back only when logged or checked: the loss and the NaN watch.

Reading a value back synchronises the device with the host; a step that reads its own loss
is launch-bound on a GPU. So each step's loss, distances and judgments stay where they were
computed, and are brought back together at most every `CHECK_EVERY` steps and whenever a value
is logged; a NaN or infinite loss still stops the run, naming its step.
"""

from __future__ import annotations

import math

import torch

from ..errors import TrainingError
from ..model.metrics import two_afc

CHECK_EVERY = 128  # at most this many steps between two reads of the training values (NaN watch)
NAN_ADVICE = "lower lr, check the data, or train in precision 32 or bf16-mixed"


class Tally:
    """Running training values: each step's loss, distances and judgments, kept on the device until read.

    `add` only keeps references (no device work, nothing to capture); `read` brings everything
    back in one transfer: the mean loss, the first step whose loss was NaN or infinite, and the
    2AFC agreement.
    """

    def __init__(self, first_step: int) -> None:
        self.first_step = first_step  # the trainer's global step when the count was 0
        self.steps = 0  # optimizer steps recorded
        self.epoch_steps = 0  # of them in this epoch
        self.pending: list[tuple[torch.Tensor, ...]] = []  # (losses, d0, d1, judge) not read yet
        self.unread_steps = 0
        self.loss_sum = 0.0  # since the last `loss_mean`
        self.loss_steps = 0
        self.agreement = 0.0  # sum of 2AFC agreements this epoch
        self.triplets = 0

    def add(self, losses: torch.Tensor, d0: torch.Tensor, d1: torch.Tensor, judge: torch.Tensor) -> None:
        self.pending.append((losses.detach(), d0.detach(), d1.detach(), judge))
        self.steps += len(losses)
        self.epoch_steps += len(losses)
        self.unread_steps += len(losses)

    def due(self) -> bool:
        return self.unread_steps >= CHECK_EVERY

    def read(self) -> int | None:
        """Bring the pending values back; the global step of the first NaN/inf loss among them, or None."""
        if not self.pending:
            return None
        losses, d0, d1, judge = (torch.cat(t) for t in zip(*self.pending))
        agreement = two_afc(d0, d1, judge).double().sum()
        values = torch.cat([agreement.view(1), losses.double()]).tolist()
        first = self.steps - self.unread_steps
        self.pending, self.unread_steps = [], 0
        self.agreement += values[0]
        self.triplets += len(judge)
        for i, loss in enumerate(values[1:]):
            if not math.isfinite(loss):
                return self.first_step + first + i
            self.loss_sum += loss
            self.loss_steps += 1
        return None

    def check(self, epoch: int, trained: list[torch.Tensor] | None = None, step: int = 0) -> None:
        """`read`, and stop at a NaN or infinite loss, naming its step.

        With the `trained` weights (before anything may save them, at global step `step`) they are
        checked too: the last step's update can turn them NaN while its own loss was still finite.
        """
        bad = self.read()
        if bad is None and trained and not bool(torch.stack([torch.isfinite(p).all() for p in trained]).all()):
            raise TrainingError(
                f"the trained weights became NaN or infinite by step {step - 1} (epoch {epoch}); {NAN_ADVICE}"
            )
        if bad is not None:
            raise TrainingError(f"the training loss became NaN or infinite at step {bad} (epoch {epoch}); {NAN_ADVICE}")

    def loss_mean(self) -> float:
        """The mean loss per step since the last call (after a `read`)."""
        mean = self.loss_sum / max(self.loss_steps, 1)
        self.loss_sum, self.loss_steps = 0.0, 0
        return mean

    def end_epoch(self) -> tuple[int, float]:
        """This epoch's optimizer steps and training 2AFC score (after a `read`); then a fresh epoch."""
        done = self.epoch_steps, self.agreement / max(self.triplets, 1)
        self.epoch_steps, self.agreement, self.triplets = 0, 0.0, 0
        return done
