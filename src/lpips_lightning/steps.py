"""How `LPIPSModule` takes its optimizer steps: eager, compiled, captured as CUDA graphs, or cached.

The module says what is trained and how it is scored; this file says how a step runs fast.

* One lean computation serves every path (`Steps.vectors`): one backbone pass over ref|p0|p1,
  each tap normalised once, both squared differences at once, and the spatial mean taken
  before the head weights. A head is a 1x1 convolution, linear in its input, so
  ``mean(w . diff) == w . mean(diff)``: each pair becomes one vector of channel means and the
  two distances are one matrix product with the heads' weights. A frozen backbone runs in the
  compute dtype (a bf16 copy under bf16-mixed, made once) instead of being cast by autocast at
  every step.
* ``eager``: the step as plain PyTorch ops through Lightning's manual optimisation: CPUs, DDP,
  ``16-mixed`` with its gradient scaler, and whatever cannot be captured.
* ``captured`` (CUDA, on by default): forward, backward, Adam and the head clamp of
  `CAPTURED_STEPS_PER_CALL` consecutive minibatches recorded once as one CUDA graph, then
  replayed from static buffers that the device-resident gather fills: Lightning's own work per
  batch (about a millisecond of Python, as long as a whole lin-alex step on an H100) is paid
  once per replay. The first full chunk runs eagerly (on a side stream: it warms up cuDNN,
  cuBLAS and Adam's state), the second is captured; a shorter last chunk runs eagerly.
* ``cached`` (lin with the feature cache): minibatch steps on cached pair vectors; on CUDA a
  whole chunk of `CACHE_STEPS_PER_CALL` minibatch steps is one graph replay.

Training values (the loss, the 2AFC agreement, each step's loss for the NaN watch) stay on the
device in a `Tally` and are read back only when they are logged or checked.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable, Iterator

import torch
from pytorch_lightning.utilities import rank_zero_info

from .errors import TrainingError
from .lpips import dropout_half, normalize_tensor
from .metrics import two_afc

CACHE_STEPS_PER_CALL = 64  # feature-cache minibatch steps per `training_step` call (and per graph replay)
CAPTURED_STEPS_PER_CALL = 8  # full steps per call when captured: Lightning's per-batch work is paid once for 8
PREPACK_KEY = "lpips_lightning_prepacked"  # in checkpoints: whether the run's CPU backbone was the prepacked copy
TIMED_IMAGES = 150  # the prepacked CPU copy is timed against the plain backbone on this many images (a batch of 50)
_USER_LOG_EVERY = "_lpips_lightning_log_every_n_steps"  # the Trainer attribute that keeps the user's value
CHECK_EVERY = 128  # at most this many steps between two reads of the training values (NaN watch)
NAN_ADVICE = "lower lr, check the data, or train in precision 32 or bf16-mixed"


def pair_means(f: torch.Tensor, n: int, dropout: bool) -> torch.Tensor:
    """One tap of a ref|p0|p1 batch: (2, n, C) spatial means of the squared normalised differences."""
    f = normalize_tensor(f.float())
    diff = (f[n:].unflatten(0, (2, n)) - f[:n]) ** 2
    if dropout:
        diff = dropout_half(diff)
    return diff.mean(dim=(3, 4))


def prepacked_copy(net: torch.nn.Module, x: torch.Tensor, timed: bool = True) -> torch.nn.Module:
    """A frozen CPU backbone with its convolutions prepacked for oneDNN, or `net` where that does not serve.

    torch.fx's `optimize_for_inference` folds batch norms into convolutions and keeps the
    weights in oneDNN's blocked layout: on 64x64 images (2 cores) AlexNet's float32 pass takes
    about 20 % less time, ResNet-18's and SqueezeNet's about half, while ConvNeXt's gets slower
    (layout changes around its layer norms). So the copy is kept only where it gives `net`'s
    taps on the first two images of `x` and, when `timed`, is faster on its first `TIMED_IMAGES`
    (`runs_faster`); backbones that torch.fx cannot trace (most ViTs) keep `net`. Which one is
    faster depends on the network, the memory layout and the CPU (SqueezeNet is faster
    prepacked in one layout and slower in the other), hence the timing rather than a table.
    """
    if not torch.backends.mkldnn.is_available() or x.dtype != torch.float32 or net.training:
        return net
    from torch.fx.experimental.optimization import fuse, optimize_for_inference

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            # A deep copy of a torch.fx-built body (torchvision's feature extractor makes them) comes back in
            # train mode, and fx's passes copy: batch norms are folded in place, and eval mode is set again after.
            folded = fuse(copy.deepcopy(net).train(False), inplace=True)
            fast = optimize_for_inference(folded, {"conv_bn_fuse": False}).train(False)
            same = all(  # equal up to float rounding, relative to each tap's scale
                a.shape == b.shape and bool((a - b).abs().max() <= 1e-4 * a.abs().max() + 1e-6)
                for a, b in zip(net(x[:2]), fast(x[:2]), strict=True)
            )
            keep = same and (not timed or runs_faster(fast, net, x[:TIMED_IMAGES]))
    except Exception:  # noqa: BLE001 -- any failure to trace or run means: keep the plain network
        return net
    return fast if keep else net


def runs_faster(fast: Callable, plain: Callable, x: torch.Tensor, margin: float = 0.9) -> bool:
    """Whether `fast(x)` takes under `margin` of `plain(x)`'s time: each warmed up, then the best of three runs.

    On a busy machine the answer can differ from run to run; either network gives the same taps.
    """
    seconds = {}
    for name, fn in (("fast", fast), ("plain", plain)):
        fn(x)  # oneDNN builds its kernels for a shape on the first call
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
        seconds[name] = min(times)
    return seconds["fast"] < margin * seconds["plain"]


def counts_batches(trainer) -> bool:
    """Whether the run counts training batches itself (so that a batch must stay one optimizer step)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    if trainer is None:
        return False
    if isinstance(trainer.limit_train_batches, int) or isinstance(trainer.val_check_interval, int):
        return True
    return any(isinstance(c, ModelCheckpoint) and c._every_n_train_steps for c in trainer.callbacks)


def logs_this_step(trainer) -> bool:
    """Whether Lightning writes logged values at this training batch (its `log_every_n_steps` rule)."""
    connector = getattr(trainer, "_logger_connector", None)
    if connector is not None and hasattr(connector, "should_update_logs"):
        return bool(connector.should_update_logs)
    return True


def capture_refusal(world_size: int, precision: str) -> str | None:
    """Why a run cannot take the captured step (None: it can): said in one line, never silently slower."""
    if world_size > 1:
        return "DDP's gradient all-reduce runs outside a captured graph"
    if precision in ("16-mixed", "16"):
        return "16-mixed's gradient scaler checks every step for infinite gradients on the host"
    return None


class Tally:
    """Running training values: each step's loss, distances and judgments, kept on the device until read.

    `add` only keeps references (no device work, nothing to capture); `read`, at most every
    `CHECK_EVERY` steps and whenever a value is logged, brings everything back in one transfer:
    the mean loss, the first step whose loss was NaN or infinite, and the 2AFC agreement.
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


class _Graph:
    """One captured step (or chunk of steps), the static buffers it reads and the outputs it writes."""

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: dict[str, torch.Tensor], outputs: tuple) -> None:
        self.graph, self.inputs, self.outputs = graph, inputs, outputs

    def replay(self, values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        for name, buffer in self.inputs.items():
            buffer.copy_(values[name], non_blocking=True)
        self.graph.replay()
        return tuple(t.clone() for t in self.outputs)  # the next replay overwrites them


class Steps:
    """The training steps of one `LPIPSModule` fit (made at fit start; see the module docstring)."""

    def __init__(self, module) -> None:
        self.module = module
        self.lpips = module.lpips
        self.tally: Tally | None = None
        self.cache: torch.Tensor | None = None  # (2, N, channels): the feature cache's pair vectors
        self.graphs: dict[tuple, _Graph] = {}
        self.warm: set[tuple] = set()
        self.pool = None
        self.lr: list[torch.Tensor] = []  # the learning rates as device tensors, read by captured Adam
        self.lr_host: list[float | None] = []  # the values last copied into them
        self._frozen: tuple[torch.dtype, torch.nn.Module] | None = None
        self.capture = False
        self.per_call = 1  # minibatches per training batch, fixed at fit start (the loader's batches hold them)
        self.loss_fn: Callable = self.loss
        # what a fit did, kept after `release`: graph replays, the cache's shape, the frozen copy's dtype
        self.replays = 0
        self.cache_shape: tuple[int, ...] | None = None
        self.frozen_dtype: torch.dtype | None = None
        # the choice of that copy: a resumed run's (from its checkpoint), else made by timing at the first batch
        self.prepack: bool | None = module.prepack
        self.log_every: int | None = None  # the Trainer's log_every_n_steps while batches take several steps

    @property
    def prepacked(self) -> bool:
        """Whether this fit's frozen backbone ran as its oneDNN-prepacked copy (CPU); kept after `release`."""
        return self.prepack is True and self.frozen_dtype is not None

    # --- set-up -------------------------------------------------------------------------------
    def start(self) -> None:
        """Decide the path for this fit (capture, compile) and say so where it is not the fast one."""
        m = self.module
        wanted = m.hparams.capture
        self.capture = m.device.type == "cuda" and wanted in (True, "auto")
        if self.capture:
            reason = capture_refusal(m.trainer.world_size, str(m.trainer.precision))
            if reason:
                self.capture = False
                rank_zero_info(f"capture: {reason}; training with the eager step instead (capture: false hides this)")
        if wanted is True and m.device.type != "cuda":
            rank_zero_info("capture: CUDA graphs need a CUDA device; training with the eager step on the CPU")
        # several minibatches per batch, except where the run counts batches itself (an integer
        # `limit_train_batches` or `val_check_interval`, checkpoints every N steps): those keep their meaning
        if not counts_batches(m.trainer):
            self.per_call = CACHE_STEPS_PER_CALL if m.feature_cache else CAPTURED_STEPS_PER_CALL if self.capture else 1
        if self.per_call > 1:
            # `log_every_n_steps` counts optimizer steps: `logs` turns Lightning's writing on (1) for a batch or
            # off (0). The user's value is kept on the Trainer too, so that a fit after a failed one starts from it.
            trainer = m.trainer
            self.log_every = getattr(trainer, _USER_LOG_EVERY, trainer.log_every_n_steps)
            setattr(trainer, _USER_LOG_EVERY, self.log_every)
            trainer.log_every_n_steps = 0
        mode = m.hparams.compile
        if mode and not m.feature_cache:
            mode = None if mode in (True, "default") else mode
            if self.capture and mode is not None:  # the whole step is one graph already
                mode = mode.replace("reduce-overhead", "default").replace("max-autotune", "max-autotune-no-cudagraphs")
                mode = None if mode == "default" else mode
            self.loss_fn = torch.compile(self.loss, mode=mode)

    def begin_training(self) -> None:
        """At train start, after a resumed run's step count is restored: count steps from there."""
        self.tally = Tally(self.module.global_step)

    def release(self) -> None:
        """Let go of what only this fit needs on the device: graphs and their memory, the cache, the bf16 copy."""
        self.graphs, self.warm, self.pool, self.lr, self.lr_host = {}, set(), None, [], []
        self.cache, self._frozen = None, None
        if self.log_every is not None:  # the Trainer's own setting back
            trainer = self.module.trainer
            trainer.log_every_n_steps, self.log_every = self.log_every, None
            if hasattr(trainer, _USER_LOG_EVERY):
                delattr(trainer, _USER_LOG_EVERY)

    def logs(self, before: int) -> bool:
        """Whether the batch that took the run from optimizer step `before` to now logs its training values.

        One step per batch: Lightning's rule (every `log_every_n_steps` batches). Several (the
        feature cache, the captured step): when the batch crossed a multiple of
        `log_every_n_steps` optimizer steps; Lightning's batch counter, which its loggers and
        callbacks take for the step, is kept equal to the optimizer step count.
        """
        m = self.module
        if self.log_every is None:
            return logs_this_step(m.trainer)
        m.trainer.fit_loop.epoch_loop._batches_that_stepped = m.global_step - 1  # Lightning adds the batch's 1
        every = self.log_every
        crossed = every > 0 and m.global_step // every > before // every
        m.trainer.log_every_n_steps = int(crossed)  # Lightning writes this batch's values, or none of them
        return crossed

    def frozen_backbone(self, x: torch.Tensor) -> tuple[torch.nn.Module, torch.Tensor]:
        """The network and input for a backbone pass: a frozen backbone's fast copy, made once per fit.

        Under autocast, a copy in the autocast dtype; in float32 on the CPU, a copy with its
        convolutions prepacked for oneDNN (`prepacked_copy`) where it computes the same taps to
        float rounding and runs faster. Like cuDNN's benchmark mode, that choice is made by timing,
        so two seeded runs may differ by rounding: ``trainer.deterministic: true`` keeps the plain
        network. A resumed run keeps the choice its checkpoint records (under ``deterministic``
        too: it continues the run exactly); a run where the choice does not arise records none.
        """
        net = self.lpips.net
        device = x.device.type
        autocast = torch.is_autocast_enabled(device)
        if self.module.variant != "lin" or net.lora_rank or not (autocast or device == "cpu"):
            self.prepack = None  # e.g. a CPU run resumed on a GPU
            return net, x
        dtype = torch.get_autocast_dtype(device) if autocast else x.dtype
        if self._frozen is None or self._frozen[0] != dtype:
            if autocast:
                copied, self.prepack = copy.deepcopy(net).to(dtype).requires_grad_(False).train(net.training), None
            elif self.loss_fn == self.loss:
                if self.prepack is None and torch.are_deterministic_algorithms_enabled():
                    self.prepack = False
                copied = net if self.prepack is False else prepacked_copy(net, x, timed=self.prepack is None)
                self.prepack = copied is not net
            else:  # a compiled step takes the plain backbone (the compiler cannot trace oneDNN's prepacked one)
                copied, self.prepack = net, None
            self._frozen = (dtype, copied)
            self.frozen_dtype = dtype
        return self._frozen[1], x.to(dtype)

    # --- the computation ----------------------------------------------------------------------
    def vectors(self, ref: torch.Tensor, p0: torch.Tensor, p1: torch.Tensor, dropout: bool) -> torch.Tensor:
        """(2, N, channels): per pair (ref-p0, ref-p1), every tap's channel means of the squared difference."""
        feats = self.module.taps(torch.cat([ref, p0, p1]))
        return torch.cat([pair_means(f, ref.shape[0], dropout) for f in feats], dim=2)

    def head_vector(self) -> torch.Tensor:
        """All head weights as one vector, in `vectors` order."""
        return torch.cat([h.weight.flatten() for h in self.lpips.heads])

    def distances(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """d(ref, p0) and d(ref, p1) from pair vectors: one product with the head weights, in float32."""
        with torch.autocast(v.device.type, enabled=False):
            d = v @ self.head_vector()
        return d.unbind(0)

    def loss(self, ref, p0, p1, judge) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training loss of a batch of triplets and its two distances."""
        d0, d1 = self.distances(self.vectors(ref, p0, p1, self.lpips.dropout and self.module.training))
        return self.module.rank_head(d0, d1, judge), d0, d1

    def cached_distances(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """d(ref, p0) and d(ref, p1) of training items `index` from the feature cache."""
        assert self.cache is not None
        v = self.cache[:, index]
        if self.lpips.dropout and self.module.training:
            v = dropout_half(v)
        return self.distances(v)

    @torch.no_grad()
    def build_cache(self, chunk: int | None = None) -> torch.Tensor:
        """One pass of the frozen backbone over the training set: (2, N, channels) pair vectors."""
        m = self.module
        dataset = m.trainer.datamodule.datasets["train"][0]
        chunk = chunk or (2048 if m.device.type == "cuda" else 256)
        parts = []
        with m.trainer.precision_plugin.forward_context():
            for start in range(0, len(dataset), chunk):
                images = dataset.read_images(range(start, min(start + chunk, len(dataset))))
                images = {k: v.to(m.device, non_blocking=True) for k, v in images.items()}
                parts.append(self.vectors(images["ref"], images["p0"], images["p1"], dropout=False).float())
        self.cache = torch.cat(parts, dim=1)
        self.cache_shape = tuple(self.cache.shape)
        return self.cache

    # --- the steps ----------------------------------------------------------------------------
    def images(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ref, p0, p1 of a batch: carried by it, or gathered from the device-resident store by index."""
        return batch if "ref" in batch else self.module.trainer.datamodule.gather_images(batch["index"])

    def _optimizer_step(self, loss: torch.Tensor, lightning: bool) -> None:
        """Backward, Adam and the head clamp: through Lightning (eager) or the raw optimizer (in a graph)."""
        m = self.module
        optimizer = m.optimizers()
        if lightning:
            optimizer.zero_grad(set_to_none=True)
            m.manual_backward(loss)
            optimizer.step()
        else:
            loss.backward()
            optimizer.optimizer.step()
        with torch.no_grad():  # the heads stay non-negative, as the paper keeps them
            torch._foreach_clamp_min_([h.weight for h in self.lpips.heads], 0.0)

    def full_loss(self, values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss and distances of a batch of triplets (images, or indices into the device store)."""
        images = self.images(values)
        return self.loss_fn(images["ref"], images["p0"], images["p1"], values["judge"])

    def cached_loss(self, values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss and distances of training items ``values["index"]`` from their cached pair vectors."""
        d0, d1 = self.cached_distances(values["index"])
        return self.module.rank_head(d0, d1, values["judge"]), d0, d1

    def step(self, loss_of: Callable, values: dict[str, torch.Tensor], lightning: bool) -> tuple[torch.Tensor, ...]:
        """One optimizer step on the loss `loss_of` gives for a minibatch; what the tally keeps of it."""
        loss, d0, d1 = loss_of(values)
        self._optimizer_step(loss, lightning)
        return loss.detach().view(1), d0.detach(), d1.detach(), values["judge"]

    def chunk(self, loss_of: Callable, values: dict[str, torch.Tensor], size: int, lightning: bool = True) -> tuple:
        """A `step` on each minibatch of `size` triplets of a chunk, in order; the tally's values of all of them."""
        if len(values["judge"]) <= size:
            return self.step(loss_of, values, lightning)
        optimizer = self.module.optimizers().optimizer
        parts = {k: v.split(size) for k, v in values.items()}
        outputs = []
        for k in range(len(parts["judge"])):
            if not lightning and k:  # inside a graph: the first backward allocates the gradients
                optimizer.zero_grad(set_to_none=False)
            outputs.append(self.step(loss_of, {name: p[k] for name, p in parts.items()}, lightning))
        losses, d0, d1 = (torch.cat(column) for column in list(zip(*outputs))[:3])
        return losses, d0, d1, values["judge"]  # the chunk's judgments are its minibatches' in order

    def run(self, batch: dict[str, torch.Tensor]) -> None:
        """Every optimizer step of one training batch: a chunk of minibatches, captured when it is whole."""
        m = self.module
        n = len(batch["judge"])
        size = getattr(m.trainer.datamodule, "batch_size", None)
        # the minibatch size: our data module's (its batches hold `per_call` of them), else the batch itself
        per_call, size = (self.per_call, size) if size else (1, n)
        if m.feature_cache:
            names, loss_of = ("index", "judge"), self.cached_loss
        else:
            names = ("ref", "p0", "p1", "judge") if "ref" in batch else ("index", "judge")
            loss_of = self.full_loss
        values = {k: batch[k] for k in names}
        left = m.trainer.max_steps - m.global_step
        if m.trainer.max_steps >= 0 and 0 < left < -(-n // size):  # the run ends inside this chunk: its first steps
            values = {k: v[: left * size] for k, v in values.items()}
            n = len(values["judge"])
        body = lambda v, lightning: self.chunk(loss_of, v, size, lightning)  # noqa: E731
        if self.capture and n == size * per_call:  # one graph: whole chunks only (a last, shorter one runs eagerly)
            outputs = self.captured(values, body, per_call)
        else:
            outputs = body(values, True)
        self.tally.add(*outputs)

    # --- CUDA graphs --------------------------------------------------------------------------
    def captured(self, values: dict[str, torch.Tensor], body: Callable, steps: int) -> tuple:
        """Replay `body`'s graph (`steps` optimizer steps); warm up on the first whole chunk, capture on the second."""
        key = tuple((k, tuple(v.shape)) for k, v in values.items())
        entry = self.graphs.get(key)
        if entry is None:
            if key not in self.warm:
                self.warm.add(key)
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    outputs = body(values, True)
                torch.cuda.current_stream().wait_stream(side)
                return outputs
            try:
                entry = self.graphs[key] = self._capture(values, body)
            except Exception as error:  # an operation that cannot be captured: say so, and go on eagerly
                self.capture = False
                first_line = (str(error).splitlines() or [""])[0][:160]
                rank_zero_info(
                    f"capture: this step cannot be recorded as a CUDA graph ({type(error).__name__}: "
                    f"{first_line}); training with the eager step instead"
                )
                return body(values, True)
        self._sync_lr()
        outputs = entry.replay(values)
        self.replays += 1
        optimizer = self.module.optimizers()
        for _ in range(steps):  # Lightning's step count (global_step), as its optimizer would
            optimizer._on_before_step()
            optimizer._on_after_step()
        return outputs

    def _capture(self, values: dict[str, torch.Tensor], body: Callable) -> _Graph:
        optimizer = self.module.optimizers().optimizer
        inputs = {k: v.clone() for k, v in values.items()}
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        optimizer.zero_grad(set_to_none=True)
        device = self.module.device.type
        autocast = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device)
        with self._graph_optimizer(optimizer), torch.autocast(device, dtype, enabled=autocast, cache_enabled=False):
            with torch.cuda.graph(graph, pool=self.pool):
                outputs = body(inputs, False)
        return _Graph(graph, inputs, outputs)

    @contextlib.contextmanager
    def _graph_optimizer(self, optimizer: torch.optim.Optimizer) -> Iterator[None]:
        """Adam as a graph needs it while capturing: capturable, its learning rates as device tensors.

        Outside the capture the param groups keep plain float rates (what schedulers and checkpoints
        expect); `_sync_lr` copies a changed rate into its tensor before a replay.
        """
        if not self.lr:
            self.lr = [torch.zeros((), device=self.module.device) for _ in optimizer.param_groups]
            self.lr_host = [None for _ in optimizer.param_groups]
        saved = [(g["lr"], g["capturable"]) for g in optimizer.param_groups]
        self._sync_lr()
        try:
            for group, lr in zip(optimizer.param_groups, self.lr):
                group["lr"], group["capturable"] = lr, True
            yield
        finally:
            for group, (lr, capturable) in zip(optimizer.param_groups, saved):
                group["lr"], group["capturable"] = lr, capturable

    def _sync_lr(self) -> None:
        optimizer = self.module.optimizers().optimizer
        for i, (group, lr) in enumerate(zip(optimizer.param_groups, self.lr)):
            if self.lr_host[i] != group["lr"]:
                lr.fill_(group["lr"])
                self.lr_host[i] = group["lr"]

    # --- reading back -------------------------------------------------------------------------
    def check(self, weights: bool = False) -> None:
        """Read the training values back; stop at a NaN or infinite loss, naming its step.

        With `weights` (before anything may save them) the trained weights are checked too: the
        last step's update can turn them NaN while its own loss was still finite.
        """
        if self.tally is None:  # before training started (a sanity check)
            return
        bad = self.tally.read()
        if bad is None and weights:
            trained = [p.detach() for p in self.module.parameters() if p.requires_grad]
            if trained and not bool(torch.stack([torch.isfinite(p).all() for p in trained]).all()):
                raise TrainingError(
                    f"the trained weights became NaN or infinite by step {self.module.global_step - 1} "
                    f"(epoch {self.module.current_epoch}); {NAN_ADVICE}"
                )
        if bad is not None:
            raise TrainingError(
                f"the training loss became NaN or infinite at step {bad} (epoch {self.module.current_epoch}); "
                f"{NAN_ADVICE}"
            )
