"""The step engine: what a training batch does to the weights (eager, compiled, captured or cached).

A training batch holds `per_call` minibatches; each is one optimizer step, in order:

* One lean computation serves every path (`Steps.vectors`): one backbone pass over ref|p0|p1,
  each tap normalised once, both squared differences at once, and the spatial mean taken
  before the head weights (`model.lpips.pair_means`). A head is a 1x1 convolution, linear in its
  input, so ``mean(w . diff) == w . mean(diff)``: each pair becomes one vector of channel means and
  the two distances are one matrix product with the heads' weights (`model.lpips.head_distances`).
  The ranking head turns them
  into the loss; backward, Adam, and the heads clamped to >= 0, as the paper keeps them.
* ``eager``: those ops in plain PyTorch through Lightning's optimizer and strategy (manual
  optimisation): CPUs, DDP, ``16-mixed`` with its gradient scaler, whatever cannot be captured.
  With ``compile`` the loss is `torch.compile`'d.
* ``captured`` (CUDA, on by default): a whole batch of `CAPTURED_STEPS_PER_CALL` steps is one
  CUDA graph replay (`graphs.Graphs`); a shorter last batch runs eagerly.
* ``cached`` (lin with the feature cache): one pass of the frozen backbone over the training set
  turns every pair into its vector of channel means (`build_cache`); steps are then a product of
  cached vectors with the head weights, `CACHE_STEPS_PER_CALL` of them per batch.

Images that a batch does not carry (only indices) come from `images`, the data module's
device-resident store. What the steps return goes to the `tally.Tally`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from pytorch_lightning.core.optimizer import LightningOptimizer
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from ..data.dataset import JudgmentsDataset
from ..model.embedding import EmbeddingDistance
from ..model.lpips import LPIPS, dropout_half, head_distances, pair_means
from .graphs import Graphs, Values

CACHE_STEPS_PER_CALL = 64  # feature-cache minibatch steps per training batch (and per graph replay)
CAPTURED_STEPS_PER_CALL = 8  # full steps per batch when captured: Lightning's per-batch work is paid once for 8


def capture_refusal(world_size: int, precision: str) -> str | None:
    """Why a run cannot take the captured step (None: it can): said in one line, never silently slower."""
    if world_size > 1:
        return "DDP's gradient all-reduce runs outside a captured graph"
    if precision in ("16-mixed", "16"):
        return "16-mixed's gradient scaler checks every step for infinite gradients on the host"
    return None


def takes_capture(wanted: bool | str, device: torch.device, world_size: int, precision: str) -> bool:
    """Whether a fit takes the captured step (`wanted`: the model's ``capture``); says why not where it was asked."""
    capture = device.type == "cuda" and wanted in (True, "auto")
    reason = capture_refusal(world_size, precision) if capture else None
    if reason:
        capture = False
        rank_zero_info(f"capture: {reason}; training with the eager step instead (capture: false hides this)")
    if wanted is True and device.type != "cuda":
        rank_zero_info("capture: CUDA graphs need a CUDA device; training with the eager step on the CPU")
    return capture


def compile_mode(compile: bool | str, capture: bool) -> str | None:
    """`torch.compile`'s mode for the step's loss (``compile`` given); with `capture` its CUDA graphs give way."""
    mode = None if compile in (True, "default") else str(compile)
    if capture and mode is not None:  # the whole step is one graph already
        mode = mode.replace("reduce-overhead", "default").replace("max-autotune", "max-autotune-no-cudagraphs")
        mode = None if mode == "default" else mode
    return mode


class Steps:
    """The training steps of one fit: made at fit start from what they use, let go of at fit end.

    Args:
        lpips: the metric being trained (its heads, its dropout; in training mode while training).
        rank_head: turns the two distances and the judgments into the loss.
        taps: images (uint8) -> the backbone's taps, as the fit runs the backbone.
        optimizer: Lightning's optimizer (its `step` goes through the strategy and precision); None for
            steps that only compute (the loss, the cache).
        backward: the strategy's backward pass of a loss.
        images: the images of training items given by index (the data module's device store).
        per_call: minibatches per training batch (`size` triplets each); 1 without `size`.
        capture: take whole batches as CUDA graph replays.
        compile: ``torch.compile`` the loss (``false``, ``true`` or a mode); not with the cache.
        cache_from: the training set whose pair vectors the feature cache holds (None: no cache).
        device: where the cache is built.
        forward_context: the precision's context for the cache's backbone pass.
    """

    def __init__(
        self,
        lpips: LPIPS,
        rank_head: nn.Module,
        taps: Callable[[torch.Tensor], list[torch.Tensor]],
        optimizer: LightningOptimizer | None = None,
        backward: Callable[[torch.Tensor], None] | None = None,
        images: Callable[[torch.Tensor], Values] | None = None,
        per_call: int = 1,
        size: int | None = None,
        capture: bool = False,
        compile: bool | str = False,
        cache_from: JudgmentsDataset | None = None,
        device: torch.device | None = None,
        forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        self.lpips, self.rank_head, self.taps = lpips, rank_head, taps
        self.embedding = isinstance(lpips, EmbeddingDistance)  # its distance is 1 - cos, its head is not clamped
        self.optimizer, self.backward, self.gather = optimizer, backward, images
        self.per_call, self.size = per_call, size
        self.capture = capture
        self.graphs = Graphs(optimizer)
        self.cache_from, self.device, self.forward_context = cache_from, device, forward_context
        self.cache: torch.Tensor | None = None  # (2, N, channels): the feature cache's pair vectors
        self.cache_shape: tuple[int, ...] | None = None  # kept after `release`
        self.loss_fn: Callable = self.loss
        if compile and cache_from is None:
            self.loss_fn = torch.compile(self.loss, mode=compile_mode(compile, capture))

    @property
    def replays(self) -> int:
        """Graph replays this fit (kept after `release`)."""
        return self.graphs.replays

    def release(self) -> None:
        """Let go of what only this fit needs on the device: graphs and their memory, the cache."""
        self.graphs.release()
        self.cache = None

    # --- the computation ----------------------------------------------------------------------
    def vectors(self, ref: torch.Tensor, p0: torch.Tensor, p1: torch.Tensor, dropout: bool) -> torch.Tensor:
        """(2, N, channels): per pair (ref-p0, ref-p1), every tap's channel means of the squared difference."""
        feats = self.taps(torch.cat([ref, p0, p1]))
        return torch.cat([pair_means(f, ref.shape[0], dropout) for f in feats], dim=2)

    def loss(self, ref, p0, p1, judge) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training loss of a batch of triplets and its two distances."""
        if self.embedding:
            d0, d1 = self.lpips.triplet_distances(self.taps(torch.cat([ref, p0, p1])), ref.shape[0])
            return self.rank_head(d0, d1, judge), d0, d1
        d0, d1 = head_distances(self.vectors(ref, p0, p1, self.lpips.dropout and self.lpips.training), self.lpips.heads)
        return self.rank_head(d0, d1, judge), d0, d1

    def cached_distances(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """d(ref, p0) and d(ref, p1) of training items `index` from the feature cache."""
        assert self.cache is not None
        v = self.cache[:, index]
        if self.lpips.dropout and self.lpips.training:
            v = dropout_half(v)
        return head_distances(v, self.lpips.heads)

    @torch.no_grad()
    def build_cache(self, chunk: int | None = None) -> torch.Tensor:
        """One pass of the frozen backbone over the training set: (2, N, channels) pair vectors."""
        dataset, device = self.cache_from, self.device or torch.device("cpu")
        assert dataset is not None, "the feature cache needs its training set (cache_from)"
        chunk = chunk or (2048 if device.type == "cuda" else 256)
        parts = []
        with self.forward_context():
            for start in range(0, len(dataset), chunk):
                images = dataset.read_images(range(start, min(start + chunk, len(dataset))))
                images = {k: v.to(device, non_blocking=True) for k, v in images.items()}
                parts.append(self.vectors(images["ref"], images["p0"], images["p1"], dropout=False).float())
        self.cache = torch.cat(parts, dim=1)
        self.cache_shape = tuple(self.cache.shape)
        return self.cache

    # --- the steps ----------------------------------------------------------------------------
    def full_loss(self, values: Values) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss and distances of a minibatch of triplets (its images, or indices into the device store)."""
        images = values if "ref" in values else self.gather(values["index"])
        return self.loss_fn(images["ref"], images["p0"], images["p1"], values["judge"])

    def cached_loss(self, values: Values) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss and distances of training items ``values["index"]`` from their cached pair vectors."""
        d0, d1 = self.cached_distances(values["index"])
        return self.rank_head(d0, d1, values["judge"]), d0, d1

    def step(self, loss_of: Callable, values: Values, lightning: bool) -> tuple[torch.Tensor, ...]:
        """One optimizer step on a minibatch: backward, Adam, the head clamp; what the tally keeps of it.

        Through Lightning's optimizer and the strategy's backward (eager), or the raw optimizer (in a graph).
        """
        loss, d0, d1 = loss_of(values)
        if lightning:
            self.optimizer.zero_grad(set_to_none=True)
            self.backward(loss)
            self.optimizer.step()
        else:
            loss.backward()
            self.optimizer.optimizer.step()
        if not self.embedding:  # the heads stay non-negative, as the paper keeps them
            with torch.no_grad():
                torch._foreach_clamp_min_([h.weight for h in self.lpips.heads], 0.0)
        return loss.detach().view(1), d0.detach(), d1.detach(), values["judge"]

    def chunk(self, loss_of: Callable, values: Values, size: int, lightning: bool = True) -> tuple:
        """A `step` on each minibatch of `size` triplets of a batch, in order; the tally's values of all of them."""
        if len(values["judge"]) <= size:
            return self.step(loss_of, values, lightning)
        parts = {k: v.split(size) for k, v in values.items()}
        outputs = []
        for k in range(len(parts["judge"])):
            if not lightning and k:  # inside a graph: the first backward allocates the gradients
                self.optimizer.optimizer.zero_grad(set_to_none=False)
            outputs.append(self.step(loss_of, {name: p[k] for name, p in parts.items()}, lightning))
        losses, d0, d1 = (torch.cat(column) for column in list(zip(*outputs))[:3])
        return losses, d0, d1, values["judge"]  # the batch's judgments are its minibatches' in order

    def run(self, batch: Values, steps_left: int | None = None) -> tuple[torch.Tensor, ...]:
        """Every optimizer step of one training batch (at most `steps_left`); (losses, d0, d1, judge) of them."""
        n = len(batch["judge"])
        per_call, size = (self.per_call, self.size) if self.size else (1, n)
        if self.cache_from is not None:
            names, loss_of = ("index", "judge"), self.cached_loss
        else:
            names = ("ref", "p0", "p1", "judge") if "ref" in batch else ("index", "judge")
            loss_of = self.full_loss
        values = {k: batch[k] for k in names}
        if steps_left is not None and 0 < steps_left < -(-n // size):  # the run ends inside this batch
            values = {k: v[: steps_left * size] for k, v in values.items()}
            n = len(values["judge"])

        def body(v: Values, lightning: bool) -> tuple:
            return self.chunk(loss_of, v, size, lightning)

        if self.capture and n == size * per_call:  # one graph: whole batches only
            outputs = self.graphs.run(values, body, per_call)
            self.capture = not self.graphs.broken
            return outputs
        return body(values, True)
