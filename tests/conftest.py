"""Shared fixtures: an offline "ImageNet" cache of random weights, W&B forced offline, tiny data."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path

# Test processes running side by side (pytest-xdist, `make test`) share the cores: each gets its share of
# threads (torch's, and OpenMP's in processes the tests start), so that none waits on another's spinning threads.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# One folder per test session, removed when the session ends (fake ImageNet weights alone take ~1 GB).
# Processes started from the tests (DDP workers importing a test module) inherit and share it.
if "LPIPS_LIGHTNING_TESTS_TMP" not in os.environ:
    os.environ["LPIPS_LIGHTNING_TESTS_TMP"] = tempfile.mkdtemp(prefix="lpips-lightning-tests-")
    _OWNER_PID = os.getpid()
else:
    _OWNER_PID = None
_SESSION_TMP = Path(os.environ["LPIPS_LIGHTNING_TESTS_TMP"])
# Never reach a hub, never ask for a W&B login: everything lives in a temporary folder.
os.environ["TORCH_HOME"] = str(_SESSION_TMP / "torch")
os.environ["WANDB_MODE"] = "offline"
for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
    os.environ[var] = str(_SESSION_TMP / "wandb")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["LPIPS_LIGHTNING_CACHE"] = str(_SESSION_TMP / "cache")


def pytest_unconfigure(config) -> None:
    """Leave nothing behind in the temporary folder: each session's weights and caches go with it."""
    if _OWNER_PID == os.getpid():
        shutil.rmtree(_SESSION_TMP, ignore_errors=True)


def write_fake_imagenet(torch_home: Path, names=("alex", "vgg", "squeeze"), seed: int = 0) -> None:
    """Save randomly initialised torchvision state dicts under the file names the weights API expects."""
    from lpips_lightning.backbones.classic import BACKBONES

    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        entry = BACKBONES[name]
        target = folder / os.path.basename(entry.weights.url)
        if not target.exists():  # written beside and renamed: test processes running at once share the folder
            torch.manual_seed(seed)
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            torch.save(entry.constructor(weights=None).state_dict(), tmp)
            os.replace(tmp, target)


@pytest.fixture(scope="session")
def imagenet_cache() -> Path:
    """A TORCH_HOME whose hub cache holds random "ImageNet" weights for every backbone."""
    home = Path(os.environ["TORCH_HOME"])
    write_fake_imagenet(home)
    return home


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is faster, and on a busy 2-core machine far faster (no spinning workers).

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")`` in a module.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def harmless_sigint():
    """SIGINT and SIGTERM do nothing unless the code under test handles them (never a KeyboardInterrupt into pytest)."""
    import signal

    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def default_sigint() -> None:
    """`preexec_fn` of a child that a test interrupts: SIGINT as a terminal delivers it.

    A test run started in the background by a shell ignores SIGINT, and its children would
    inherit that: the Ctrl-C under test would never arrive.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_pack(source: Path, out: Path, *extra: str):
    """`pack SOURCE OUT` in a process group of its own (as a shell job), once it is writing its temporary file."""
    import subprocess
    import sys
    import time

    pack = [sys.executable, "-m", "lpips_lightning.cli", "pack"]
    proc = subprocess.Popen(
        [*pack, str(source), str(out), "--quiet", "--workers", "2", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 30
    while not list(out.parent.glob(f".{out.name}.tmp-*")):  # the output is being written
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "pack never started writing"
        time.sleep(0.02)
    time.sleep(0.2)  # inside the decoding loop, workers busy
    assert proc.poll() is None, "pack finished before it could be interrupted: make the source slower"
    return proc


def children(pid: int) -> set[int]:
    """The child processes of `pid` (all its threads'), from /proc."""
    found: set[int] = set()
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            found.update(int(c) for c in Path(path).read_text().split())
        except OSError:
            pass
    return found


def alive(pid: int) -> bool:
    """`pid` exists and is not a zombie."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def assert_cache_matches_full(model, dataset, index) -> None:
    """The feature cache's distances and head gradients equal the full path's for training items `index`."""
    batch = dataset.read_images(index)
    batch["judge"] = dataset.targets[index]
    heads = [h.weight for h in model.lpips.heads]
    model.train()
    cd0, cd1 = model.steps.cached_distances(index)
    grads_cache = torch.autograd.grad(model.rank_head(cd0, cd1, batch["judge"]), heads)
    fd0, fd1 = model.triplet_distances(batch)
    grads_full = torch.autograd.grad(model.rank_head(fd0, fd1, batch["judge"]), heads)
    torch.testing.assert_close(cd0, fd0, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(cd1, fd1, rtol=1e-5, atol=1e-8)
    for a, b in zip(grads_cache, grads_full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


def make_bapps(root: Path, n: int = 6, size: int = 32, seed: int = 0, jnd: bool = True) -> dict:
    """A tiny BAPPS-like tree with random PNGs; files are created in shuffled order.

    Returns {group: {"ref"/"p0"/"p1": uint8 (n, 3, size, size), "judge"/"same": float32 (n,)}}
    in stem order, as the packed file should hold them.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    layout = {"2afc/train/trad": ("ref", "p0", "p1", "judge"), "2afc/val/cnn": ("ref", "p0", "p1", "judge")}
    if jnd:
        layout["jnd/val/cnn"] = ("p0", "p1", "same")
    expected = {}
    for group, folders in layout.items():
        stems = [f"{i:06d}" for i in range(n)]
        data = {f: rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8) for f in folders[:-1]}
        target = rng.random(n).astype(np.float32)
        order = rng.permutation(n)
        for f in folders:
            (root / group / f).mkdir(parents=True, exist_ok=True)
        for i in order:
            for f in folders[:-1]:
                Image.fromarray(data[f][i]).save(root / group / f / f"{stems[i]}.png")
            np.save(root / group / folders[-1] / f"{stems[i]}.npy", np.array([target[i]], np.float32))
        expected[group] = {f: v.transpose(0, 3, 1, 2) for f, v in data.items()}
        expected[group][folders[-1]] = target
    return expected


SAMPLES_16 = [[0, 1000, 30000, 65535], [128, 129, 32896, 65000]]  # (2, 4) 16-bit test samples


def rgb16_samples():
    """(2, 4, 3) uint16: `SAMPLES_16` in three different arrangements, one per channel."""
    import numpy as np

    s = np.array(SAMPLES_16, np.uint16)
    return np.stack([s, s[::-1], np.roll(s, 1, axis=1)], axis=-1)


def write_png16(path: Path, samples, color_type: int) -> None:
    """A 16-bit PNG written by hand (PIL cannot write 16-bit colour): gray 0, RGB 2, gray+alpha 4, RGBA 6."""
    import struct
    import zlib

    h, w = samples.shape[:2]
    rows = samples.reshape(h, -1).astype(">u2")
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


@pytest.fixture
def bapps_h5(tmp_path) -> Path:
    """A packed tiny BAPPS file (2afc train/val, jnd val)."""
    from lpips_lightning.pack.pack import pack

    make_bapps(tmp_path / "bapps", n=12)
    return pack(tmp_path / "bapps", tmp_path / "bapps.h5", size=32, workers=1, progress=False)


@pytest.fixture(scope="module")
def module_bapps_h5(tmp_path_factory) -> Path:
    """`bapps_h5` made once per test module: for module-scoped fixtures that train on it once."""
    from lpips_lightning.pack.pack import pack

    root = tmp_path_factory.mktemp("bapps")
    make_bapps(root / "bapps", n=12)
    return pack(root / "bapps", root / "bapps.h5", size=32, workers=1, progress=False)


def write_judgments(path: Path, groups: dict[str, dict[str, np.ndarray]]) -> Path:
    """A judgments file of the given groups ({name: {array key: array}}), through the project's writer."""
    from lpips_lightning.data import judgments

    with judgments.write(path) as w:
        for name, arrays in groups.items():
            arrays = dict(arrays)
            better = bool(arrays.pop("higher_is_better", True))  # MOS groups: False for DMOS
            n, _, h, wd = arrays[judgments.image_keys(judgments.kind_of(name))[0]].shape
            g = w.create_group(name, n, (h, wd), std="std" in arrays, higher_is_better=better)
            w.fill(g, 0, arrays)
    return path


def random_group(kind: str, n: int = 6, size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays of one group of `kind` ("2afc", "jnd" or "mos"): random images and judgments (MOS: scores 1..5)."""
    from lpips_lightning.data import judgments

    rng = np.random.default_rng(seed)
    arrays = {k: rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8) for k in judgments.image_keys(kind)}
    arrays[judgments.TARGET[kind]] = rng.random(n).astype(np.float32) * (4 if kind == "mos" else 1) + (kind == "mos")
    return arrays


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    """A folder holding the three synthetic BAPPS archives (built once per test module)."""
    from bapps_mirror import build_bapps_archives

    folder = tmp_path_factory.mktemp("mirror")
    build_bapps_archives(folder)
    return folder


@pytest.fixture
def mirror(served):
    """`served` on a local HTTP server (`bapps_mirror.serve`)."""
    from bapps_mirror import serve

    with serve(served) as m:
        yield m


@pytest.fixture
def pngs(tmp_path) -> list[Path]:
    """Two random 44 x 52 RGB PNG files, a.png and b.png."""
    from PIL import Image

    rng = np.random.default_rng(3)
    files = []
    for n in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (44, 52, 3), dtype=np.uint8)).save(tmp_path / f"{n}.png")
        files.append(tmp_path / f"{n}.png")
    return files


def parsed_trainer_options(**given):
    """Trainer options as `fit`'s command line parses them (Lightning's defaults, then `given`)."""
    from jsonargparse import Namespace

    options = dict(accelerator="auto", devices="auto", num_nodes=1, precision=None, fast_dev_run=False)
    options.update(limit_train_batches=None, val_check_interval=None, overfit_batches=0.0, callbacks=None)
    return Namespace(**{**options, **given})


def poison_loss_at_call(model, call: int) -> None:
    """The ranking head's `call`-th forward (counted from 1) returns NaN."""
    real = model.rank_head.forward
    calls = {"n": 0}

    def poisoned(d0, d1, judge):
        calls["n"] += 1
        loss = real(d0, d1, judge)
        return loss * float("nan") if calls["n"] == call else loss

    model.rank_head.forward = poisoned


def feature_cache_steps(path: Path, model, batch_size: int = 5):
    """`model.steps` for the feature cache outside a fit (no Trainer), on `path`'s training set; its data module."""
    from lpips_lightning.data.datamodule import JudgmentsDataModule
    from lpips_lightning.train.steps import Steps

    dm = JudgmentsDataModule(str(path), batch_size=batch_size, index_only=True)
    dm.setup("fit")
    model.steps = Steps(model.lpips, model.rank_head, model.backbone_pass, cache_from=dm.datasets["train"][0])
    return dm


def training_args(runs: Path, data: Path, *extra: str) -> list[str]:
    """Options of a tiny CPU `fit`/`validate`/`test` from configs/lin_alex.yaml on `data`, runs under `runs`."""
    root = Path(__file__).resolve().parents[1]
    return [
        "--config",
        str(root / "configs/lin_alex.yaml"),
        "--model.pretrained",
        "false",
        "--data.path",
        str(data),
        "--data.val",
        "[2afc/val/*, jnd/val/*]",
        "--data.batch_size",
        "4",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--runs_dir",
        str(runs),
        *extra,
    ]


def cpu_trainer(root=None, **overrides):
    """A quiet one-process CPU Trainer: no logger, checkpoints, progress bar or sanity check."""
    import pytorch_lightning as pl

    options = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    if root is not None:
        options["default_root_dir"] = root
    return pl.Trainer(**{**options, **overrides})


# --- bad input: the real CLI refuses cleanly -----------------------------------------------------
def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folders` (hidden ones included): path -> (size, mtime_ns)."""
    found = {}
    for folder in folders:
        for p in Path(folder).rglob("*"):
            if p.is_file():
                st = p.stat()
                found[str(p)] = (st.st_size, st.st_mtime_ns)
    return found


def assert_refused(argv: list[str], capfd, *watch: Path, code: int = 2) -> str:
    """Run the CLI's `main` on `argv` and assert a clean refusal; return the error line.

    Clean: exit status `code`, exactly one stderr line containing ``error:`` (argparse may add
    its usage line before it), no traceback on either stream, and no file created, changed or
    removed under the `watch` folders (temporary files included).
    """
    from lpips_lightning.cli.main import main

    before = snapshot(*watch)
    capfd.readouterr()
    try:
        status = main(argv)
    except SystemExit as done:  # argparse's own usage errors
        status = done.code
    out, err = capfd.readouterr()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in out + err, f"traceback for {argv}:\n{out}\n{err}"
    assert status == code, f"exit status {status} for {argv}:\n{out}\n{err}"
    assert len(errors) == 1, f"expected one error line for {argv}, got:\n{err}"
    noise = [
        line
        for line in err.splitlines()
        # a progress line ("exporting ... (this takes 20-50 s) ...") is not noise
        if line.strip() and "error:" not in line and not line.startswith(("usage:", " ")) and not line.endswith(" ...")
    ]
    assert not noise, f"more than the error line on stderr for {argv}:\n{err}"
    assert snapshot(*watch) == before, f"files changed by a refused {argv}"
    return errors[0]


# --- trained metrics and their exports (tests/export/, tests/test_evaluate.py) -----------------------
class MetricFiles(dict):
    """{suffix: file} of one trained checkpoint (``".ckpt"``) and its exports, each exported on first use.

    Exported with the real command (``lpips-lightning export CKPT m.SUFFIX``); what it printed is
    kept in `printed`. `model` is the checkpoint's metric as trained, in eval mode; `data` the
    judgments file it was trained on. ``".onnx"`` is slow to export: tests that ask for it are slow.
    """

    def __init__(self, ckpt: Path, model, data: Path) -> None:
        super().__init__({".ckpt": ckpt})
        self.model, self.data, self.printed = model, data, {}

    def __missing__(self, suffix: str) -> Path:
        import contextlib
        import io

        from lpips_lightning.cli.main import main

        out = self[".ckpt"].with_name(f"m{suffix}")
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            assert main(["export", str(self[".ckpt"]), str(out)]) == 0
        self.printed[suffix] = printed.getvalue()
        self[suffix] = out
        return out


class TrainedMetrics(dict):
    """{variant: MetricFiles}: ``lin`` over (fake) ImageNet alex, ``tune`` on squeeze, each trained on first use."""

    BACKBONES = {"lin": "alex", "tune": "squeeze"}

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        make_bapps(root / "b", n=8)
        from lpips_lightning.pack.pack import pack

        self.data = pack(root / "b", root / "d.h5", size=32, workers=1, progress=False)

    def __missing__(self, variant: str) -> MetricFiles:
        from lpips_lightning.data.datamodule import JudgmentsDataModule
        from lpips_lightning.train.module import LPIPSModule

        model = LPIPSModule(variant=variant, backbone=self.BACKBONES[variant])
        trainer = cpu_trainer(fast_dev_run=1)
        trainer.fit(model, JudgmentsDataModule(str(self.data), batch_size=4))
        with torch.no_grad():  # clearly non-trivial heads
            for h in model.lpips.heads:
                h.weight.uniform_(0.1, 1.0)
        folder = self.root / variant
        folder.mkdir()
        trainer.save_checkpoint(folder / f"{variant}.ckpt")
        self[variant] = MetricFiles(folder / f"{variant}.ckpt", model.lpips.eval(), self.data)
        return self[variant]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, imagenet_cache) -> TrainedMetrics:
    """Briefly trained checkpoints (``trained["lin"]``, ``trained["tune"]``), trained and exported once a session."""
    return TrainedMetrics(tmp_path_factory.mktemp("trained"))


# --- one finished run of `lpips-lightning fit` (tests/cli/) -----------------------------------------
@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> dict[str, Path]:
    """A packed tiny BAPPS (``data``) and a finished 2-epoch CLI run ``run`` (named r1) in ``runs``, made once."""
    from unittest import mock

    from lpips_lightning.cli.main import main
    from lpips_lightning.pack.pack import pack

    root = tmp_path_factory.mktemp("trained_run")
    make_bapps(root / "b", n=12)
    data = pack(root / "b", root / "d.h5", size=32, workers=1, progress=False)
    runs = root / "runs"
    with mock.patch.dict(os.environ, {"WANDB_MODE": "disabled"}):
        assert main(["fit", *training_args(runs, data, "--trainer.max_epochs", "2", "--run_name", "r1")]) == 0
    return {"root": root, "data": data, "runs": runs, "run": runs / "r1"}


# --- numpy references of the scores (the original's code), for tests/model/ and tests/test_evaluate.py ----------
def numpy_2afc(d0, d1, judge):
    """The original's 2AFC score: (d0<d1)(1-judge) + (d1<d0)judge + (d0==d1)/2, averaged."""
    import numpy as np

    return np.mean(np.where(d0 < d1, 1 - judge, np.where(d1 < d0, judge, 0.5)))


def numpy_voc_ap(d, same):
    """The original's score_jnd_dataset + voc_ap, with the distances flattened first."""
    import numpy as np

    order = np.argsort(d, kind="stable")
    s = same[order]
    tp, fp = np.cumsum(s), np.cumsum(1 - s)
    return voc_area(tp / np.sum(s), tp / (tp + fp))


def voc_area(rec, prec):
    """The original's voc_ap: area under the precision envelope."""
    import numpy as np

    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
