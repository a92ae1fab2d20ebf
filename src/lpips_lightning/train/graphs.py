"""Chunks of training steps captured as CUDA graphs and replayed from static buffers.

Forward, backward, Adam and the head clamp of several consecutive minibatches are recorded once
as one CUDA graph, then replayed: Lightning's own work per batch (about a millisecond of Python,
as long as a whole lin-alex step on an H100) is paid once per replay. The first whole chunk of a
shape runs eagerly on a side stream (it warms up cuDNN, cuBLAS and Adam's state), the second is
captured. Adam runs capturable while it is recorded, its learning rates as device tensors that
are refreshed before a replay when a scheduler changed them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from pytorch_lightning.core.optimizer import LightningOptimizer
from pytorch_lightning.utilities import rank_zero_info

from .cadence import count_optimizer_steps

Values = dict[str, torch.Tensor]


class _Graph:
    """One captured chunk of steps, the static buffers it reads and the outputs it writes."""

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: Values, outputs: tuple) -> None:
        self.graph, self.inputs, self.outputs = graph, inputs, outputs

    def replay(self, values: Values) -> tuple[torch.Tensor, ...]:
        for name, buffer in self.inputs.items():
            buffer.copy_(values[name], non_blocking=True)
        self.graph.replay()
        return tuple(t.clone() for t in self.outputs)  # the next replay overwrites them


class Graphs:
    """The captured chunks of one fit, one per input shape, sharing one memory pool.

    `broken` turns True when a chunk cannot be recorded (an operation that cannot be captured):
    the run says so in one line and its steps run eagerly from then on.
    """

    def __init__(self, optimizer: LightningOptimizer) -> None:
        self.optimizer = optimizer
        self.graphs: dict[tuple, _Graph] = {}
        self.warm: set[tuple] = set()
        self.pool = None
        self.lr: list[torch.Tensor] = []  # the learning rates as device tensors, read by captured Adam
        self.lr_host: list[float | None] = []  # the values last copied into them
        self.replays = 0
        self.broken = False

    def run(self, values: Values, body: Callable[[Values, bool], tuple], steps: int) -> tuple:
        """`body`'s outputs for a chunk of `steps` optimizer steps: warmed up, captured, then replayed.

        ``body(values, lightning)`` runs the steps, through Lightning's optimizer when
        `lightning`, else through the raw optimizer (inside a graph).
        """
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
                self.broken = True
                first_line = (str(error).splitlines() or [""])[0][:160]
                rank_zero_info(
                    f"capture: this step cannot be recorded as a CUDA graph ({type(error).__name__}: "
                    f"{first_line}); training with the eager step instead"
                )
                return body(values, True)
        self._sync_lr()
        outputs = entry.replay(values)
        self.replays += 1
        count_optimizer_steps(self.optimizer, steps)  # Lightning's step count (global_step)
        return outputs

    def _capture(self, values: Values, body: Callable[[Values, bool], tuple]) -> _Graph:
        optimizer = self.optimizer.optimizer
        inputs = {k: v.clone() for k, v in values.items()}
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        optimizer.zero_grad(set_to_none=True)
        device = inputs["judge"].device
        autocast = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type)
        with self._graph_optimizer(device), torch.autocast(device.type, dtype, enabled=autocast, cache_enabled=False):
            with torch.cuda.graph(graph, pool=self.pool):
                outputs = body(inputs, False)
        return _Graph(graph, inputs, outputs)

    @contextlib.contextmanager
    def _graph_optimizer(self, device: torch.device) -> Iterator[None]:
        """Adam as a graph needs it while capturing: capturable, its learning rates as device tensors.

        Outside the capture the param groups keep plain float rates (what schedulers and checkpoints
        expect); `_sync_lr` copies a changed rate into its tensor before a replay.
        """
        optimizer = self.optimizer.optimizer
        if not self.lr:
            self.lr = [torch.zeros((), device=device) for _ in optimizer.param_groups]
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
        optimizer = self.optimizer.optimizer
        for i, (group, lr) in enumerate(zip(optimizer.param_groups, self.lr)):
            if self.lr_host[i] != group["lr"]:
                lr.fill_(group["lr"])
                self.lr_host[i] = group["lr"]

    def release(self) -> None:
        """Let go of the graphs and their memory."""
        self.graphs, self.warm, self.pool, self.lr, self.lr_host = {}, set(), None, [], []
