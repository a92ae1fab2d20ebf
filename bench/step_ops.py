"""Compute operators per optimizer step of the project's training loop, on the CPU.

A device-free proxy for kernel launches on a GPU (where a batch-50 step is launch-bound):
counts the leaf aten operators (those that call no other aten operator) that torch.profiler
records during steady-state steps of Trainer.fit, for lin-alex batch 50 on the full path
and with the feature cache. Prints `full=N cached=M` ops per optimizer step.
Writes its random judgments with `lpips_lightning.data.judgments`; the data module is told what
the model needs as `lpips-lightning fit` links it (`lpips_lightning.train.links`). The project's
copy of ../shared/bench/step_ops.py, adapted to the package layout.
"""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
import warnings

warnings.filterwarnings("ignore")
import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from jsonargparse import Namespace  # noqa: E402
from torch.profiler import profile  # noqa: E402

from lpips_lightning.data import judgments  # noqa: E402
from lpips_lightning.data.datamodule import JudgmentsDataModule  # noqa: E402
from lpips_lightning.train import links  # noqa: E402
from lpips_lightning.train.module import LPIPSModule  # noqa: E402

torch.set_num_threads(1)


class Window(pl.Callback):
    def __init__(self, start, stop):
        self.start, self.stop, self.prof, self.steps = start, stop, None, 0

    def on_train_batch_start(self, trainer, *a):
        if trainer.global_step == self.start and self.prof is None:
            self.prof = profile()
            self.prof.__enter__()
            self.first = trainer.global_step

    def on_train_batch_end(self, trainer, *a):
        if self.prof is not None and self.steps == 0 and trainer.global_step >= self.stop:
            self.prof.__exit__(None, None, None)
            self.steps = trainer.global_step - self.first
            trainer.should_stop = True


# operators that only describe or allocate memory: no kernel runs for them on a GPU
METADATA = {
    "view",
    "reshape",
    "_reshape_alias",
    "_unsafe_view",
    "empty",
    "empty_strided",
    "empty_like",
    "as_strided",
    "t",
    "transpose",
    "permute",
    "expand",
    "slice",
    "select",
    "unsqueeze",
    "squeeze",
    "detach",
    "alias",
    "resize_",
    "set_",
    "lift_fresh",
    "unbind",
    "split",
    "split_with_sizes",
    "chunk",
    "narrow",
    "result_type",
    "is_nonzero",
    "numpy_T",
    "expand_as",
    "view_as",
    "flatten",
    "unflatten",
    "_has_compatible_shallow_copy_type",
    "stride",
    "size",
    "dim",
    "is_same_size",
    "to",
    "_to_copy_meta",
    "lift",
    "resolve_conj",
    "resolve_neg",
    "_nested_tensor_from_mask",
    "pin_memory",
    "is_pinned",
    "contiguous",
    "type_as",
    "new_empty",
    "new_empty_strided",
    "zeros_like_meta",
}


def leaf_ops(prof):
    n = 0
    for e in prof.events():
        if not e.name.startswith("aten::") or e.name[6:] in METADATA:
            continue
        if not any(c.name.startswith("aten::") and c.name[6:] not in METADATA for c in e.cpu_children):
            n += 1
    return n


with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "d.h5"
    rng = np.random.default_rng(0)
    with judgments.write(path, overwrite=True) as w:
        for group, n in (("2afc/train/r", 6400), ("2afc/val/r", 8)):
            g = w.create_group(group, n, (64, 64), "bench")
            w.fill(
                g,
                0,
                {
                    **{k: rng.integers(0, 256, (n, 3, 64, 64), dtype=np.uint8) for k in ("ref", "p0", "p1")},
                    "judge": rng.random(n).astype(np.float32),
                },
            )
    out = {}
    for name, cache, start, stop in (("full", False, 3, 9), ("cached", True, 64, 192)):
        model = LPIPSModule(variant="lin", backbone="alex", pretrained=False, feature_cache=cache)
        trainer = Namespace(
            accelerator="cpu",
            devices=1,
            num_nodes=1,
            precision=None,
            fast_dev_run=False,
            limit_train_batches=None,
            val_check_interval=None,
            overfit_batches=0.0,
            callbacks=None,
        )
        dm = JudgmentsDataModule(
            str(path),
            val=["2afc/val/*"],
            batch_size=50,
            in_memory=True,
            index_only=links.index_only(cache),
            steps_per_batch=links.steps_per_batch(cache, "auto", trainer),
        )
        win = Window(start, stop)
        pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=3,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[win],
        ).fit(model, dm)
        out[name] = leaf_ops(win.prof) / max(win.steps, 1)
    print(f"full={out['full']:.0f} cached={out['cached']:.0f}")
