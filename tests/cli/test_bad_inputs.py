"""Trust: every command tried as a hostile user would, through the real CLI.

Each refusal: exit status 2, one ``error:`` line (no usage, no traceback), nothing created or
changed. (`pack` and the exports have their own files under tests/pack/ and tests/export/.)
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import assert_refused, random_group, training_args, write_judgments
from PIL import Image

from lpips_lightning.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


class Recorded:
    """`capfd` that also keeps what it read: to check that no usage text came before the error line."""

    def __init__(self, capfd) -> None:
        self.capfd, self.err = capfd, ""

    def readouterr(self):
        got = self.capfd.readouterr()
        self.err += got.err
        return got


def refused(argv: list[str], capfd, *watch: Path) -> str:
    """`assert_refused`, and no usage text on stderr; the error line."""
    recorded = Recorded(capfd)
    line = assert_refused(argv, recorded, *watch)
    assert "usage:" not in recorded.err, recorded.err
    return line


@pytest.fixture(scope="module")
def packed(module_bapps_h5) -> Path:
    """A packed tiny BAPPS (2afc train/val, jnd val): what the refusals are given as data."""
    return module_bapps_h5


def _binary(tmp: Path) -> Path:
    (tmp / "binary.yaml").write_bytes(bytes(range(256)))
    return tmp / "binary.yaml"


def _a_file(tmp: Path, name: str = "a_file", text: str = "x") -> Path:
    (tmp / name).write_text(text)
    return tmp / name


# --- one line for each bad option or file, before anything trains -------------------------------
# (case, options of `fit` on the packed file (a function of the test's folder), what the line says)
FIT_REFUSALS = [
    (
        "lr-text",
        lambda t: ["--model.lr", "abc"],
        ["Parser key \"model.lr\": Expected a <class 'float'>. Got value: abc"],
    ),
    ("lr-inf", lambda t: ["--model.lr", "inf"], ["Got value: inf"]),
    ("run-name-dash", lambda t: ["--run_name", "-dash"], ["argument --run_name: expected one argument"]),
    ("bogus", lambda t: ["--bogus", "1"], ["unrecognized arguments: --bogus 1"]),
    ("betas", lambda t: ["--model.betas", "[2, 3]"], ["betas must be two numbers in [0, 1)"]),
    ("epochs-decay", lambda t: ["--model.epochs_decay", "-3"], ["epochs_decay must be 0 or more epochs, got -3"]),
    ("taps", lambda t: ["--model.taps", "[]"], ["taps is empty"]),
    ("num-workers", lambda t: ["--data.num_workers", "-1"], ["--data.num_workers must be 0 (load in this process)"]),
    (
        "backbone",
        lambda t: ["--model.backbone", "resnet"],
        ["unknown backbone 'resnet'; choose one of: alex, vgg, squeeze"],
    ),
    ("variant", lambda t: ["--model.variant", "fine"], ["unknown variant 'fine'"]),
    (
        "no-group",
        lambda t: ["--data.train", "[2afc/train/nope]"],
        ["no group matches '2afc/train/nope'; the file has: 2afc/train/trad"],
    ),
    ("gone", lambda t: ["--data.path", str(t / "gone.h5")], ["gone.h5: no such judgments file"]),
    ("not-judgments", lambda t: ["--data.path", str(_a_file(t, "nj.h5"))], ["not a readable judgments file"]),
    ("name-long", lambda t: ["--run_name", "x" * 256], ["256 bytes long; a folder name holds at most 255"]),
    ("name-wide", lambda t: ["--run_name", "é" * 200], ["400 bytes long"]),
    ("name-control", lambda t: ["--run_name", "nul\x01x"], ["no '/', '\\' or control characters"]),
    ("name-backslash", lambda t: ["--run_name", "a\\b"], ["no '/', '\\' or control characters"]),
    *[
        (f"name-{n or 'empty'}", lambda t, n=n: ["--run_name", n], ["one folder name"])
        for n in ("", "r1/nested", "../escaped", ".hidden")
    ],  # fmt: skip
    ("runs-dir-file", lambda t: ["--runs_dir", str(_a_file(t))], ["is a file"]),
    ("binary-config", lambda t: ["--config", str(_binary(t))], ["not a YAML file"]),
    # Lightning's own refusals (the module takes its own steps: manual optimisation), and issue 21's
    ("devices-0", lambda t: ["--trainer.devices", "0"], [""]),
    ("clip", lambda t: ["--trainer.gradient_clip_val", "1.0"], [""]),
    ("accumulate", lambda t: ["--trainer.accumulate_grad_batches", "2"], [""]),
    (
        "val-check-interval",
        lambda t: ["--trainer.val_check_interval", "100"],
        ["--trainer.val_check_interval 100: more than the 3 training batches of an epoch"],
    ),
    ("precision-64", lambda t: ["--trainer.precision", "64"], ["--trainer.precision 64: double precision"]),
    ("precision-64-true", lambda t: ["--trainer.precision", "64-true"], ["double precision is not supported"]),
    (
        "gpu-overlay",
        lambda t: ["--config", str(ROOT / "configs/ddp.yaml")],
        ["ddp.yaml", "no CUDA GPU", "--trainer.accelerator cpu"],
        NO_GPU,
    ),
]


@pytest.mark.parametrize(
    ("options", "messages"), [pytest.param(*row[1:3], id=row[0], marks=row[3:]) for row in FIT_REFUSALS]
)
def test_fit_refusals_are_one_line_and_leave_no_folder(packed, tmp_path, capfd, options, messages):
    """jsonargparse prints its whole usage (77 lines) before a type error: only the error line is left."""
    err = refused(["fit", *training_args(tmp_path / "runs", packed, *options(tmp_path))], capfd, tmp_path)
    for message in messages:
        assert message in err, err
    assert not (tmp_path / "runs").exists()


def test_missing_imagenet_weights_are_one_line(packed, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setattr("torch.hub.download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    err = refused(["fit", *training_args(tmp_path / "runs", packed, "--model.pretrained", "true")], capfd)
    assert "alexnet-owt-7be5be79.pth is missing" in err
    # the command line's own options, not Python's arguments
    assert err.endswith("put the file there, or pass --model.backbone_weights PATH, or --model.pretrained false"), err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/*.ckpt"))


def test_an_unwritable_wandb_dir_is_one_line_and_leaves_no_run_folder(packed, tmp_path, capfd, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "a_file"))
    err = refused(["fit", *training_args(tmp_path / "runs", packed, "--run_name", "w")], capfd)
    assert f"WANDB_DIR {tmp_path / 'a_file'}: cannot make the folder W&B writes into" in err, err
    assert not (tmp_path / "runs" / "w").exists()  # the name stays free


def test_missing_imagenet_weights_name_each_tools_own_options(tmp_path, capfd, monkeypatch):
    """distance has --backbone-weights; evaluate has neither it nor a way to go without pretrained weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setattr("torch.hub.download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    err = refused(["distance", str(image), str(image)], capfd)
    assert err.endswith("put the file there, or pass --backbone-weights PATH"), err
    data = write_judgments(tmp_path / "d.h5", {"2afc/val/t": random_group("2afc", n=4, size=32)})
    err = refused(["evaluate", "official:alex", "--data", str(data), "--quiet"], capfd)
    assert err.endswith("could not be downloaded (OSError); put the file there"), err


# usage errors, argparse's words: (argv of a tool, what the line says before "(options: lpips-lightning CMD --help)")
USAGE_ERRORS = [
    (["pack"], "the following arguments are required: source, out"),
    (["pack", "src", "out.h5", "--bogus"], "unrecognized arguments: --bogus"),
    (["evaluate", "l2"], "the following arguments are required: --data"),
    (["evaluate"], "the following arguments are required: MODEL, --data"),
    (["download"], "the following arguments are required: dataset, DIR"),
    (["evaluate", "l2", "--data", "d.h5", "--batch-size", "text"], "argument --batch-size: invalid int value"),
    (["distance", "a.png", "b.png", "--resize", "0"], "must be a number of pixels from 1 to 4096, got 0"),
    (["distance", "a.png", "b.png", "--resize", "x"], "argument --resize: expected a number of pixels, got 'x'"),
    (["export", "a.ckpt", "b.pt", "--size", "abc"], "argument --size: invalid int value: 'abc'"),
    (["export", "a.ckpt", "b.pt", "--format", "pt"], "argument --format: invalid choice: 'pt'"),
    (["download", "bapps", "dir", "--timeout", "soon"], "argument --timeout: invalid float value: 'soon'"),
    (["demo-data"], "the following arguments are required: out"),
]


@pytest.mark.parametrize(("argv", "message"), USAGE_ERRORS)
def test_tool_usage_errors_are_one_line(tmp_path, capfd, argv, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = refused(argv, capfd, tmp_path)
    assert err.startswith("error: ") and message in err and f"(options: lpips-lightning {argv[0]} --help)" in err


# (argv of a command, what the line says; "DATA" is the packed file)
TOOL_REFUSALS = [
    (["evaluate", "l2", "--data", "DATA", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["demo-data", "d.h5", "--val", "-1"], "--val -1: must be from 1 to 100000"),
    (["demo-data", "d.h5", "--train", "100000000"], "--train 100000000: must be from 1 to 1000000"),
    (["demo-data", "d.h5", "--seed", "-1"], "--seed -1: must be from 0 to 4294967295"),
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["evaluate", "l2", "--data", "DATA", "--device", "cuda:7"], "GPU"),
    (["evaluate", "l2", "--data", "DATA", "--device", "tpu"], "device"),
    (["evaluate", "l2", "--data", "DATA", "--device", "banana"], "unknown device"),
    pytest.param(["evaluate", "l2", "--data", "DATA", "--device", "cuda"], "no usable CUDA GPU", marks=NO_GPU),
]


@pytest.mark.parametrize(("argv", "message"), TOOL_REFUSALS)
def test_tool_refusals_are_one_line(packed, tmp_path, capfd, argv, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = refused([str(packed) if a == "DATA" else a for a in argv], capfd, tmp_path)
    assert err.startswith("error: ") and message in err, err


def test_images_too_small_for_the_backbone(tmp_path, capfd, imagenet_cache):
    groups = {"2afc/train/t": random_group("2afc", size=1), "2afc/val/t": random_group("2afc", size=1)}
    tiny = write_judgments(tmp_path / "tiny.h5", groups)
    err = refused(["fit", *training_args(tmp_path / "runs", tiny, "--data.val", "[2afc/val/*]")], capfd, tmp_path)
    assert "1x1" in err and "minimum" in err and "alex" in err
    err = refused(["evaluate", "baseline:alex", "--data", str(tiny), "--quiet"], capfd, tmp_path)
    assert "1x1" in err and "minimum" in err
    err = refused(["evaluate", "ssim", "--data", str(tiny), "--quiet"], capfd, tmp_path)
    assert "1x1" in err and "6x6 minimum of ssim" in err and "Padding" not in err
    # l2 needs no minimum: one pixel is an image
    assert main(["evaluate", "l2", "--data", str(tiny), "--quiet"]) == 0


def test_evaluate_never_replaces_its_input(packed, tmp_path, capfd):
    data = tmp_path / "results.json"
    data.write_bytes(packed.read_bytes())
    err = refused(
        ["evaluate", "l2", "--data", str(data), "--out", str(tmp_path), "--overwrite", "--quiet"], capfd, tmp_path
    )
    assert "input" in err


def test_evaluate_leaves_no_out_folder_when_it_refuses(packed, tmp_path, capfd):
    refused(["evaluate", "l3", "--data", str(packed), "--out", str(tmp_path / "a" / "b" / "res")], capfd, tmp_path)
    assert not (tmp_path / "a").exists()


# --- HDF5 files whose data cannot be trusted to read back ------------------------------------------
@pytest.fixture
def small_judgments(tmp_path) -> Path:
    return write_judgments(tmp_path / "ok.h5", {"2afc/val/t": random_group("2afc", n=8, size=32)})


def _copyrandom_group(src: Path, dst: Path, tweak) -> Path:
    """A copy of judgments file `src` with 2afc/val/t's p1 rewritten by `tweak(group, array)`."""
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        g = f["2afc/val/t"]
        p1 = g["p1"][()]
        del g["p1"]
        tweak(g, p1)
    return dst


def test_a_damaged_compressed_chunk_is_one_line(small_judgments, tmp_path, capfd):
    def gzip(g, p1):
        g.create_dataset("p1", data=p1, compression="gzip", chunks=p1.shape)

    bad = _copyrandom_group(small_judgments, tmp_path / "gz.h5", gzip)
    with h5py.File(bad, "r") as f:
        offset = f["2afc/val/t/p1"].id.get_chunk_info(0).byte_offset
    raw = bytearray(bad.read_bytes())
    raw[offset + 10 : offset + 30] = bytes(20)
    bad.write_bytes(bytes(raw))
    out = tmp_path / "res"
    err = refused(["evaluate", "l2", "--data", str(bad), "--quiet", "--out", str(out)], capfd, tmp_path)
    assert f"{bad}: group 2afc/val/t: p1 cannot be read" in err and "damaged" in err
    assert not out.exists()  # the --out folder made for the results goes again


@pytest.mark.parametrize("storage", ["virtual", "external"])
def test_datasets_kept_in_other_files_are_refused(small_judgments, tmp_path, capfd, storage):
    """HDF5 fills a virtual dataset's missing source with zeros: it would be scored as black images."""

    def elsewhere(g, p1):
        if storage == "external":
            raw = tmp_path / "p1.raw"
            raw.write_bytes(p1.tobytes())
            g.create_dataset("p1", shape=p1.shape, dtype=p1.dtype, external=[(str(raw), 0, h5py.h5f.UNLIMITED)])
        else:
            side = tmp_path / "side.h5"
            with h5py.File(side, "w") as s:
                s["p1"] = p1
            layout = h5py.VirtualLayout(shape=p1.shape, dtype=p1.dtype)
            layout[...] = h5py.VirtualSource(str(side), "p1", shape=p1.shape)
            g.create_virtual_dataset("p1", layout)

    bad = _copyrandom_group(small_judgments, tmp_path / "v.h5", elsewhere)
    err = refused(["evaluate", "l2", "--data", str(bad), "--quiet"], capfd, tmp_path)
    assert f"{bad}: group 2afc/val/t: p1 keeps its data in other files" in err and storage in err


def test_a_damaged_chunk_read_by_a_loader_worker_is_one_line(small_judgments, tmp_path, capfd):
    """Training reads lazily in worker processes: torch re-raises the worker's error with its whole
    traceback as the message; the CLI still prints the one line."""

    def gzip(g, p1):
        g.create_dataset("p1", data=p1, compression="gzip", chunks=(1, *p1.shape[1:]))

    bad = _copyrandom_group(small_judgments, tmp_path / "gz.h5", gzip)
    with h5py.File(bad, "r+") as f:  # a training group beside the damaged one, same images
        f.copy(f["2afc/val/t"], "2afc/train/t")
        info = f["2afc/train/t/p1"].id.get_chunk_info(3)
    raw = bytearray(bad.read_bytes())
    raw[info.byte_offset : info.byte_offset + info.size] = bytes(info.size)
    bad.write_bytes(bytes(raw))
    options = ["--data.in_memory", "false", "--data.num_workers", "1", "--data.val", "[2afc/val/*]"]
    args = training_args(tmp_path / "runs", bad, *options, "--trainer.max_epochs", "1")
    err = refused(["fit", *args], capfd)  # the run had started: its folder stays, as after a crash
    assert err.startswith(f"error: {bad}: group 2afc/train/t: p1 cannot be read"), err


# --- checkpoints: a trained run's, and damaged ones (slow: they need the trained run) -------------
class NotAPlainValue:
    pass


def _bad_checkpoints(folder: Path, good: Path) -> dict[str, Path]:
    from safetensors.torch import save_file

    folder.mkdir(exist_ok=True)
    made = {"truncated": folder / "truncated.ckpt", "safetensors": folder / "weights.safetensors"}
    made["truncated"].write_bytes(good.read_bytes()[:5000])
    save_file({"a": torch.zeros(2)}, str(made["safetensors"]))
    made["pickled"] = folder / "pickled.ckpt"
    ckpt = torch.load(good, weights_only=True)
    ckpt["hyper_parameters"]["trap"] = NotAPlainValue()
    torch.save(ckpt, made["pickled"])
    made["empty"] = folder / "empty.ckpt"
    made["empty"].write_bytes(b"")
    made["foreign"] = folder / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, made["foreign"])
    made["folder"] = folder / "dir.ckpt"
    made["folder"].mkdir()
    made["onnx"] = folder / "model.onnx"
    made["onnx"].write_bytes(b"\x08\x08\x12\x07pytorch")  # how an ONNX model's protobuf starts
    return made


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["truncated", "safetensors", "pickled", "empty", "foreign", "missing", "folder", "onnx"]
)
@pytest.mark.parametrize("command", ["fit", "validate"])
def test_bad_checkpoint_is_one_line(trained_run, tmp_path, capfd, case, command):
    bad = _bad_checkpoints(tmp_path / "bad", trained_run["run"] / "last.ckpt")
    path = bad.get(case, tmp_path / "bad" / "gone.ckpt")
    args = training_args(tmp_path / "runs", trained_run["data"], "--ckpt_path", str(path))
    err = refused([command, *args], capfd, tmp_path)
    assert path.name in err
    assert "weights_only=False" not in err and "weights_only" not in err.replace("weights_only=True", "")
    expected = {"folder": "is a folder; give a checkpoint file", "onnx": "an ONNX model, not a checkpoint file"}
    assert expected.get(case, "") in err, err


@pytest.mark.slow
def test_checkpoint_with_misshapen_weights_is_one_line(trained_run, tmp_path, capfd):
    ckpt = torch.load(trained_run["run"] / "last.ckpt", weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.startswith("lpips.heads"))
    ckpt["state_dict"][key] = ckpt["state_dict"][key].reshape(-1)[:-1].clone()
    torch.save(ckpt, tmp_path / "shape.ckpt")
    args = training_args(tmp_path / "runs", trained_run["data"], "--ckpt_path", str(tmp_path / "shape.ckpt"))
    err = refused(["fit", *args], capfd, tmp_path)
    assert key.split(".", 1)[1] in err or key in err


@pytest.mark.slow
def test_a_runs_own_checkpoints_and_config_are_not_a_new_run(trained_run, capfd):
    """A run's saved config, an older checkpoint of it, and options that contradict its checkpoint."""
    runs, run, data = trained_run["runs"], trained_run["run"], trained_run["data"]
    err = refused(["fit", "--config", str(run / "config.yaml"), "--runs_dir", str(runs)], capfd, runs)
    assert "already holds a run" in err and "--ckpt_path last --run_name r1" in err
    (best,) = run.glob("best-*.ckpt")  # resuming r1 from it would rewind r1 and overwrite its history
    err = refused(["fit", *training_args(runs, data, "--ckpt_path", str(best))], capfd, run)
    assert "not the latest checkpoint" in err and "--run_name NEW" in err
    args = training_args(runs, data, "--ckpt_path", "last", "--run_name", "r1")
    err = refused(["fit", *args, "--model.backbone", "squeeze"], capfd, runs)
    assert "'squeeze'" in err and "'alex'" in err and "backbone" in err
    err = refused(["validate", *args, "--model.lr", "0.5"], capfd, runs)
    assert "0.5" in err and "0.0001" in err
    err = refused(["fit", *args, "--model.variant", "tune", "--model.backbone", "alex"], capfd, runs)
    assert "'tune'" in err and "'lin'" in err  # an explicit option equal to the default still conflicts


@pytest.mark.slow
def test_evaluate_refuses_a_model_that_gives_nan_distances(trained_run, tmp_path, capfd):
    ckpt = torch.load(trained_run["run"] / "last.ckpt", weights_only=True)
    ckpt["state_dict"]["lpips.heads.0.weight"][0, 0] = float("nan")
    broken = tmp_path / "broken.ckpt"
    torch.save(ckpt, broken)
    err = refused(["evaluate", str(broken), "--data", str(trained_run["data"]), "--quiet"], capfd, tmp_path)
    assert "model broken.ckpt gives NaN or infinite distances" in err and "nothing is scored" in err


@pytest.mark.slow
def test_export_never_writes_into_a_pipe(trained_run, tmp_path, capfd):
    os.mkfifo(tmp_path / "fifo.pth")
    err = refused(
        ["export", str(trained_run["run"] / "last.ckpt"), str(tmp_path / "fifo.pth"), "--overwrite"], capfd, tmp_path
    )
    assert "not a regular file" in err


@pytest.mark.slow
def test_version_0_0_is_not_exported_to_the_lpips_pth(trained_run, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    runs = tmp_path / "runs"
    options = ["--model.version", "0.0", "--trainer.max_epochs", "1", "--run_name", "v0"]
    assert main(["fit", *training_args(runs, trained_run["data"], *options)]) == 0
    err = refused(["export", str(runs / "v0/last.ckpt"), str(tmp_path / "v0.pth")], capfd, tmp_path)
    assert "version 0.0" in err and ".safetensors" in err
