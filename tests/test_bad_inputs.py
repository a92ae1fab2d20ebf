"""Trust: training, evaluation and run folders, tried as a hostile user would, through the real CLI.

Each refusal: exit status 2, one ``error:`` line, no traceback, nothing created or changed.
(`pack` and the exports have their own files: test_trust_pack.py, test_trust_export.py.)
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_refused, default_sigint, make_bapps, snapshot, training_args

from lpips_lightning import judgments
from lpips_lightning.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def _args(runs: Path, data: Path, *extra: str) -> list[str]:
    return training_args(runs, data, *extra)


def _rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A packed tiny BAPPS and a finished 2-epoch run `r1` in a runs folder."""
    from lpips_lightning.pack import pack

    os.environ["WANDB_MODE"] = "disabled"
    root = tmp_path_factory.mktemp("trained")
    make_bapps(root / "b", n=12)
    data = pack(root / "b", root / "d.h5", size=32, workers=1, progress=False)
    runs = root / "runs"
    assert main(["fit", *_args(runs, data, "--trainer.max_epochs", "2", "--run_name", "r1")]) == 0
    return {"root": root, "data": data, "runs": runs, "run": runs / "r1"}


def _write_judgments(path: Path, groups: dict[str, dict[str, np.ndarray]]) -> Path:
    with judgments.write(path) as w:
        for name, arrays in groups.items():
            n, _, h, wd = arrays["p0"].shape
            g = w.create_group(name, n, (h, wd))
            w.fill(g, 0, arrays)
    return path


def _group(kind: str, n: int = 6, size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = judgments.image_keys(kind)
    arrays = {k: rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8) for k in keys}
    arrays[judgments.TARGET[kind]] = rng.random(n).astype(np.float32)
    return arrays


# --- run folders belong to one run ----------------------------------------------------------------
@pytest.mark.parametrize("command", ["validate", "test"])
def test_evaluating_a_run_writes_a_new_folder_inside_it(trained, command, capfd):
    run = trained["run"]
    before = snapshot(run)
    extra = ["--data.test", "[2afc/val/*, jnd/val/*]"] if command == "test" else []
    assert (
        main([command, *_args(trained["runs"], trained["data"], "--ckpt_path", "last", "--run_name", "r1", *extra)])
        == 0
    )
    after = snapshot(run)
    changed = {k for k in before if after.get(k) != before[k]}
    assert not changed, changed  # metrics.csv, config.yaml, chart and checkpoints untouched
    new = sorted({str(Path(k).parent) for k in after if k not in before})
    assert len(new) == 1 and Path(new[0]).parent == run and Path(new[0]).name.startswith(f"{command}-")
    assert _rows(Path(new[0]) / "metrics.csv")


def test_fit_with_a_runs_saved_config_is_refused(trained, capfd):
    err = assert_refused(
        ["fit", "--config", str(trained["run"] / "config.yaml"), "--runs_dir", str(trained["runs"])],
        capfd,
        trained["runs"],
    )
    assert "already holds a run" in err and "--ckpt_path last --run_name r1" in err


def test_explicit_option_conflicting_with_the_checkpoint_is_refused(trained, capfd):
    args = _args(trained["runs"], trained["data"], "--ckpt_path", "last", "--run_name", "r1")
    err = assert_refused(["fit", *args, "--model.backbone", "squeeze"], capfd, trained["runs"])
    assert "'squeeze'" in err and "'alex'" in err and "backbone" in err
    err = assert_refused(["validate", *args, "--model.lr", "0.5"], capfd, trained["runs"])
    assert "0.5" in err and "0.0001" in err


def test_resumed_run_keeps_its_earlier_log_rows(tmp_path, trained):
    runs = tmp_path / "runs"
    args = _args(runs, trained["data"], "--run_name", "cut")
    assert main(["fit", *args, "--trainer.max_epochs", "2"]) == 0
    first = _rows(runs / "cut/metrics.csv")
    config = (runs / "cut/config.yaml").read_text()
    assert main(["fit", *args, "--trainer.max_epochs", "3", "--ckpt_path", "last"]) == 0
    rows = _rows(runs / "cut/metrics.csv")
    epochs = sorted({int(r["epoch"]) for r in rows if r.get("val/2afc/mean")})
    assert epochs == [0, 1, 2], epochs  # the epochs before the interruption are still there
    assert [r["val/2afc/mean"] for r in rows[: len(first)] if r.get("val/2afc/mean")] == [
        r["val/2afc/mean"] for r in first if r.get("val/2afc/mean")
    ]
    assert (runs / "cut/config.yaml").read_text() == config
    assert list((runs / "cut").glob("config-resumed-*.yaml"))


def test_two_fits_in_the_same_second_get_two_folders(tmp_path, trained, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-000000")
    runs = tmp_path / "runs"
    for _ in range(2):
        assert main(["fit", *_args(runs, trained["data"], "--trainer.max_epochs", "1")]) == 0
    assert sorted(p.name for p in runs.iterdir()) == ["lin_alex-20260101-000000", "lin_alex-20260101-000000-2"]


# --- one clean line -----------------------------------------------------------------------------
class NotAPlainValue:
    pass


def _bad_checkpoints(folder: Path, good: Path) -> dict[str, Path]:
    from safetensors.torch import save_file

    folder.mkdir(exist_ok=True)
    made = {}
    made["truncated"] = folder / "truncated.ckpt"
    made["truncated"].write_bytes(good.read_bytes()[:5000])
    made["safetensors"] = folder / "weights.safetensors"
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


@pytest.mark.parametrize(
    "case", ["truncated", "safetensors", "pickled", "empty", "foreign", "missing", "folder", "onnx"]
)
@pytest.mark.parametrize("command", ["fit", "validate"])
def test_bad_checkpoint_is_one_line(trained, tmp_path, capfd, case, command):
    bad = _bad_checkpoints(tmp_path / "bad", trained["run"] / "last.ckpt")
    path = bad.get(case, tmp_path / "bad" / "gone.ckpt")
    err = assert_refused(
        [command, *_args(tmp_path / "runs", trained["data"], "--ckpt_path", str(path))], capfd, tmp_path
    )
    assert path.name in err
    assert "weights_only=False" not in err and "weights_only" not in err.replace("weights_only=True", "")
    expected = {"folder": "is a folder; give a checkpoint file", "onnx": "an ONNX model, not a checkpoint file"}
    assert expected.get(case, "") in err, err


def test_gpu_overlay_without_a_gpu_is_one_line(trained, tmp_path, capfd):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the overlay is valid here")
    args = _args(tmp_path / "runs", trained["data"], "--config", str(ROOT / "configs/ddp.yaml"))
    err = assert_refused(["fit", *args], capfd, tmp_path)
    assert "ddp.yaml" in err and "no CUDA GPU" in err and "--trainer.accelerator cpu" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize(
    "option",
    [
        ("--trainer.devices", "0"),
        ("--trainer.gradient_clip_val", "1.0"),  # the module takes its own steps (manual optimisation)
        ("--trainer.accumulate_grad_batches", "2"),
    ],
)
def test_lightnings_own_refusals_are_one_line_and_leave_no_folder(trained, tmp_path, capfd, option):
    args = _args(tmp_path / "runs", trained["data"], *option)
    assert_refused(["fit", *args], capfd, tmp_path)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--model.lr", "abc"), "Parser key \"model.lr\": Expected a <class 'float'>. Got value: abc"),
        (("--run_name", "-dash"), "argument --run_name: expected one argument"),
        (("--bogus", "1"), "unrecognized arguments: --bogus 1"),
        (("--model.betas", "[2, 3]"), "betas must be two numbers in [0, 1)"),
        (("--model.epochs_decay", "-3"), "epochs_decay must be 0 or more epochs, got -3"),
        (("--model.taps", "[]"), "taps is empty"),
        (("--model.lr", "inf"), "Got value: inf"),
    ],
)
def test_bad_options_are_one_line_without_the_usage(trained, tmp_path, capfd, option, message):
    """jsonargparse prints its whole usage (77 lines) before a type error: only the error line is left."""
    err = assert_refused(["fit", *_args(tmp_path / "runs", trained["data"], *option)], capfd, tmp_path)
    assert message in err, err
    assert "usage:" not in capfd.readouterr().err


def test_images_too_small_for_the_backbone(tmp_path, capfd, imagenet_cache):
    tiny = _write_judgments(
        tmp_path / "tiny.h5", {"2afc/train/t": _group("2afc", size=1), "2afc/val/t": _group("2afc", size=1)}
    )
    err = assert_refused(["fit", *_args(tmp_path / "runs", tiny, "--data.val", "[2afc/val/*]")], capfd, tmp_path)
    assert "1x1" in err and "minimum" in err and "alex" in err
    err = assert_refused(["evaluate", "baseline:alex", "--data", str(tiny), "--quiet"], capfd, tmp_path)
    assert "1x1" in err and "minimum" in err
    err = assert_refused(["evaluate", "ssim", "--data", str(tiny), "--quiet"], capfd, tmp_path)
    assert "1x1" in err and "6x6 minimum of ssim" in err and "Padding" not in err
    # l2 needs no minimum: one pixel is an image
    assert main(["evaluate", "l2", "--data", str(tiny), "--quiet"]) == 0


@pytest.mark.parametrize(
    ("device", "expected"),
    [("cuda", "no usable CUDA GPU"), ("cuda:7", "GPU"), ("tpu", "device"), ("banana", "unknown device")],
)
def test_evaluate_device_the_machine_lacks(trained, tmp_path, capfd, device, expected):
    if torch.cuda.is_available() and device == "cuda":
        pytest.skip("this machine has a GPU")
    err = assert_refused(["evaluate", "l2", "--data", str(trained["data"]), "--device", device], capfd, tmp_path)
    assert expected in err


# --- the right numbers ----------------------------------------------------------------------------
def test_evaluate_scores_held_out_groups_by_default(trained, capfd, tmp_path):
    import json

    out = tmp_path / "ev"
    assert main(["evaluate", "l2", "--data", str(trained["data"]), "--quiet", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["groups"] == ["2afc/val/cnn", "jnd/val/cnn"]  # not 2afc/train/trad
    assert "2afc/train/trad" not in capfd.readouterr().out
    # rerunning into the same folder would replace results: refused without --overwrite
    assert_refused(["evaluate", "l2", "--data", str(trained["data"]), "--quiet", "--out", str(out)], capfd, tmp_path)
    assert main(["evaluate", "l2", "--data", str(trained["data"]), "--quiet", "--out", str(out), "--overwrite"]) == 0


@pytest.mark.parametrize("kinds", [("2afc",), ("jnd",)])
def test_evaluate_a_file_with_one_kind_only(tmp_path, capfd, kinds):
    groups = {f"{k}/val/only": _group(k) for k in kinds}
    data = _write_judgments(tmp_path / "one.h5", groups)
    assert main(["evaluate", "l2", "--data", str(data), "--quiet"]) == 0
    out = capfd.readouterr().out
    assert f"{kinds[0]}/val/only" in out


def test_evaluate_without_held_out_groups_scores_every_group(tmp_path, capfd):
    data = _write_judgments(tmp_path / "train_only.h5", {"2afc/train/mine": _group("2afc")})
    assert main(["evaluate", "l2", "--data", str(data), "--quiet"]) == 0
    assert "2afc/train/mine" in capfd.readouterr().out


# --- the terminal, W&B and several processes ------------------------------------------------------
def test_wandb_reachability_uses_the_port_of_the_base_url(monkeypatch):
    from lpips_lightning.cli.main import _wandb_online

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        assert _wandb_online()
        server.close()
        assert not _wandb_online()  # nothing listens there any more
    finally:
        server.close()


@pytest.mark.parametrize("tool", ["distance", "pack", "demo-data", "export", "evaluate", "download"])
def test_tool_help_does_not_import_torch(tool):
    code = (
        "import sys; from lpips_lightning.cli.main import main\n"
        f"try:\n    main([{tool!r}, '--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'LIGHT')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and result.stdout.strip().endswith("LIGHT"), result.stdout[-300:]


def test_multi_process_runs_agree_on_the_folder(tmp_path, monkeypatch):
    """Processes started by torchrun/SLURM name the run by the job id, or must be given --run_name."""
    from jsonargparse import Namespace

    from lpips_lightning.errors import ConfigError
    from lpips_lightning.runs import RunFolder

    def config():
        return Namespace(
            runs_dir=str(tmp_path), ckpt_path=None, run_name=None, model=Namespace(variant="lin", backbone="vgg")
        )

    for var in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "16")
    with pytest.raises(ConfigError, match="--run_name"):
        RunFolder("fit", config())
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job42")
    names = set()
    for rank in ("0", "9"):
        monkeypatch.setenv("RANK", rank)
        names.add(RunFolder("fit", config()).path)
    assert names == {tmp_path / "lin_vgg-job42"}
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("RANK")
    assert "job42" not in RunFolder("fit", config()).path.name  # one process: its own clock


def test_two_runs_started_at_once_never_share_a_named_folder(tmp_path, monkeypatch):
    """Both pass the "already holds a run" check before either creates the folder: the claim
    made when the folder is reserved lets exactly one of them have it."""
    from jsonargparse import Namespace

    from lpips_lightning.errors import ConfigError
    from lpips_lightning.runs import CLAIM, RunFolder

    for var in ("WORLD_SIZE", "SLURM_NTASKS", "RANK", "LOCAL_RANK", "NODE_RANK", "LPIPS_LIGHTNING_RUN_DIR"):
        monkeypatch.delenv(var, raising=False)

    def config():
        return Namespace(
            runs_dir=str(tmp_path), ckpt_path=None, run_name="dup", model=Namespace(variant="lin", backbone="alex")
        )

    first, second = RunFolder("fit", config()), RunFolder("fit", config())  # both checked: the name is free
    assert first.reserve() == tmp_path / "dup" and (tmp_path / "dup" / CLAIM).is_file()
    with pytest.raises(ConfigError, match="run folder .*dup already holds a run"):
        second.reserve()
    first.release()  # nothing but the claim was written: the name is free again
    assert not (tmp_path / "dup").exists()
    (tmp_path / "dup").mkdir()  # an empty folder of that name is still free to take
    third = RunFolder("fit", config())
    assert third.reserve() == tmp_path / "dup"
    # a run killed (SIGKILL) right after its claim: the claim of a process that is gone frees the name
    claim = tmp_path / "dup" / CLAIM
    assert claim.read_text().split() == [str(os.getpid())]
    claim.write_text("999999999\n")
    assert RunFolder("fit", config()).reserve() == tmp_path / "dup"
    with pytest.raises(ConfigError, match="already holds a run"):  # while its owner (this process) lives
        RunFolder("fit", config())


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("x" * 256, "256 bytes long; a folder name holds at most 255"),
        ("é" * 200, "400 bytes long"),
        ("nul\x01x", "no '/', '\\' or control characters"),
        ("a\\b", "no '/', '\\' or control characters"),
    ],
)
def test_run_names_that_cannot_be_a_folder_are_one_line(trained, tmp_path, capfd, name, message):
    err = assert_refused(["fit", *_args(tmp_path / "runs", trained["data"], "--run_name", name)], capfd, tmp_path)
    assert message in err, err


@pytest.mark.parametrize("variant", ["lin", "scratch"])
def test_gradient_strides_match_their_weights_for_ddp(variant):
    """DDP's buckets take each weight's strides: a gradient laid out otherwise makes DDP warn and copy."""
    from lpips_lightning.module import LPIPSModule
    from lpips_lightning.steps import Steps

    model = LPIPSModule(variant=variant, pretrained=False)
    model.configure_model()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    loss, _, _ = Steps(model).loss(x, x.flip(0), x.flip(1), torch.rand(2))
    loss.backward()
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trained
    for name, p in trained:
        assert p.grad.stride() == p.stride(), name


def test_subset_chart_is_labelled_with_chance_and_jnd():
    from lpips_lightning.callbacks import subset_chart

    fig = subset_chart({"2afc/cnn": 0.7, "2afc/mean": 0.7, "jnd/cnn": 0.6}, "validation after epoch 3")
    (ax,) = fig.axes
    assert ax.get_xlabel() and "epoch 3" in ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2afc/cnn", "2afc/mean", "jnd/cnn"]
    assert any(list(line.get_xdata()) == [0.5, 0.5] for line in ax.get_lines())  # the chance line


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "status"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_stops_fit_with_its_status_and_how_to_resume(trained, tmp_path, sig, status):
    """Lightning exits 0 after SIGTERM and 1 after Ctrl-C; a stopped run must say so and how to resume."""
    import signal

    runs = tmp_path / "runs"
    args = _args(runs, trained["data"], "--trainer.max_epochs", "100000", "--run_name", "long")
    env = dict(os.environ, WANDB_MODE="disabled")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lpips_lightning.cli", "fit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=default_sigint,
    )
    try:
        deadline = time.time() + 300
        while not (runs / "long/last.ckpt").is_file() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(0.5)
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == status, err[-2000:]
    assert "Traceback" not in err
    assert "--ckpt_path last --run_name long" in err.strip().splitlines()[-1]
    assert (runs / "long/last.ckpt").is_file() and _rows(runs / "long/metrics.csv")


# --- found by a hostile pass ------------------------------------------------------------------------
def test_resuming_from_an_older_checkpoint_of_a_run_is_refused(trained, tmp_path, capfd):
    """Resuming run r1 from its best (older) checkpoint would rewind r1 and overwrite its history."""
    (best,) = trained["run"].glob("best-*.ckpt")
    err = assert_refused(
        ["fit", *_args(trained["runs"], trained["data"], "--ckpt_path", str(best))], capfd, trained["run"]
    )
    assert "not the latest checkpoint" in err and "--run_name NEW" in err


def test_an_explicit_option_equal_to_the_default_still_conflicts(trained, capfd):
    args = _args(trained["runs"], trained["data"], "--ckpt_path", "last", "--run_name", "r1")
    err = assert_refused(["fit", *args, "--model.variant", "tune", "--model.backbone", "alex"], capfd, trained["runs"])
    assert "'tune'" in err and "'lin'" in err


@pytest.mark.parametrize("name", ["", "r1/nested", "../escaped", ".hidden"])
def test_run_names_are_one_folder_name(trained, tmp_path, capfd, name):
    err = assert_refused(["fit", *_args(tmp_path / "runs", trained["data"], "--run_name", name)], capfd, tmp_path)
    assert "one folder name" in err


def test_other_bad_training_inputs_are_one_line(trained, tmp_path, capfd):
    (tmp_path / "a_file").write_text("x")
    assert_refused(["fit", *_args(tmp_path / "a_file", trained["data"])], capfd, tmp_path)
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    assert "not a YAML file" in assert_refused(["fit", "--config", str(tmp_path / "binary.yaml")], capfd, tmp_path)
    assert "unknown command 'frobnicate'" in assert_refused(["frobnicate"], capfd, tmp_path)


def test_outputs_never_replace_devices_pipes_or_inputs(trained, tmp_path, capfd):
    os.mkfifo(tmp_path / "fifo.pth")
    err = assert_refused(
        ["export", str(trained["run"] / "last.ckpt"), str(tmp_path / "fifo.pth"), "--overwrite"], capfd, tmp_path
    )
    assert "not a regular file" in err
    data = tmp_path / "results.json"
    data.write_bytes(trained["data"].read_bytes())
    err = assert_refused(
        ["evaluate", "l2", "--data", str(data), "--out", str(tmp_path), "--overwrite", "--quiet"], capfd, tmp_path
    )
    assert "input" in err


@pytest.mark.parametrize("option", [["--val", "-1"], ["--train", "100000000"], ["--seed", "-1"]])
def test_demo_data_options_out_of_range(tmp_path, capfd, option):
    assert_refused(["demo-data", str(tmp_path / "d.h5"), *option], capfd, tmp_path)


def test_checkpoint_with_misshapen_weights_is_one_line(trained, tmp_path, capfd):
    ckpt = torch.load(trained["run"] / "last.ckpt", weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.startswith("lpips.heads"))
    ckpt["state_dict"][key] = ckpt["state_dict"][key].reshape(-1)[:-1].clone()
    torch.save(ckpt, tmp_path / "shape.ckpt")
    err = assert_refused(
        ["fit", *_args(tmp_path / "runs", trained["data"], "--ckpt_path", str(tmp_path / "shape.ckpt"))],
        capfd,
        tmp_path,
    )
    assert key.split(".", 1)[1] in err or key in err


def test_version_0_0_is_not_exported_to_the_lpips_pth(trained, tmp_path, capfd):
    runs = tmp_path / "runs"
    assert (
        main(
            [
                "fit",
                *_args(
                    runs, trained["data"], "--model.version", "0.0", "--trainer.max_epochs", "1", "--run_name", "v0"
                ),
            ]
        )
        == 0
    )
    err = assert_refused(["export", str(runs / "v0/last.ckpt"), str(tmp_path / "v0.pth")], capfd, tmp_path)
    assert "version 0.0" in err and ".safetensors" in err


# --- HDF5 files whose data cannot be trusted to read back ------------------------------------------
def _copy_group(src: Path, dst: Path, tweak) -> Path:
    """A copy of judgments file `src` with 2afc/val/t's p1 rewritten by `tweak(group, array)`."""
    import h5py

    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        g = f["2afc/val/t"]
        p1 = g["p1"][()]
        del g["p1"]
        tweak(g, p1)
    return dst


@pytest.fixture
def small_judgments(tmp_path) -> Path:
    return _write_judgments(tmp_path / "ok.h5", {"2afc/val/t": _group("2afc", n=8, size=32)})


def test_a_damaged_compressed_chunk_is_one_line(small_judgments, tmp_path, capfd):
    def gzip(g, p1):
        g.create_dataset("p1", data=p1, compression="gzip", chunks=p1.shape)

    bad = _copy_group(small_judgments, tmp_path / "gz.h5", gzip)
    with __import__("h5py").File(bad, "r") as f:
        offset = f["2afc/val/t/p1"].id.get_chunk_info(0).byte_offset
    raw = bytearray(bad.read_bytes())
    raw[offset + 10 : offset + 30] = bytes(20)
    bad.write_bytes(bytes(raw))
    out = tmp_path / "res"
    err = assert_refused(["evaluate", "l2", "--data", str(bad), "--quiet", "--out", str(out)], capfd, tmp_path)
    assert f"{bad}: group 2afc/val/t: p1 cannot be read" in err and "damaged" in err
    assert not out.exists()  # the --out folder made for the results goes again


@pytest.mark.parametrize("storage", ["virtual", "external"])
def test_datasets_kept_in_other_files_are_refused(small_judgments, tmp_path, capfd, storage):
    """HDF5 fills a virtual dataset's missing source with zeros: it would be scored as black images."""
    import h5py

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

    bad = _copy_group(small_judgments, tmp_path / "v.h5", elsewhere)
    err = assert_refused(["evaluate", "l2", "--data", str(bad), "--quiet"], capfd, tmp_path)
    assert f"{bad}: group 2afc/val/t: p1 keeps its data in other files" in err and storage in err


def test_evaluate_leaves_no_out_folder_when_it_refuses(small_judgments, tmp_path, capfd):
    out = tmp_path / "a" / "b" / "res"
    assert_refused(["evaluate", "l3", "--data", str(small_judgments), "--out", str(out)], capfd, tmp_path)
    assert not (tmp_path / "a").exists()


def test_a_damaged_chunk_read_by_a_loader_worker_is_one_line(small_judgments, tmp_path, capfd):
    """Training reads lazily in worker processes: torch re-raises the worker's error with its whole
    traceback as the message; the CLI still prints the one line."""

    def gzip(g, p1):
        g.create_dataset("p1", data=p1, compression="gzip", chunks=(1, *p1.shape[1:]))

    bad = _copy_group(small_judgments, tmp_path / "gz.h5", gzip)
    import h5py

    with h5py.File(bad, "r+") as f:  # a training group beside the damaged one, same images
        f.copy(f["2afc/val/t"], "2afc/train/t")
        info = f["2afc/train/t/p1"].id.get_chunk_info(3)
    raw = bytearray(bad.read_bytes())
    raw[info.byte_offset : info.byte_offset + info.size] = bytes(info.size)
    bad.write_bytes(bytes(raw))
    args = _args(
        tmp_path / "runs",
        bad,
        "--data.in_memory",
        "false",
        "--data.num_workers",
        "1",
        "--data.val",
        "[2afc/val/*]",
        "--trainer.max_epochs",
        "1",
    )
    err = assert_refused(["fit", *args], capfd)  # the run had started: its folder stays, as after a crash
    assert err.startswith(f"error: {bad}: group 2afc/train/t: p1 cannot be read"), err


def test_evaluate_refuses_a_model_that_gives_nan_distances(trained, tmp_path, capfd):
    ckpt = torch.load(trained["run"] / "last.ckpt", weights_only=True)
    ckpt["state_dict"]["lpips.heads.0.weight"][0, 0] = float("nan")
    broken = tmp_path / "broken.ckpt"
    torch.save(ckpt, broken)
    err = assert_refused(["evaluate", str(broken), "--data", str(trained["data"]), "--quiet"], capfd, tmp_path)
    assert "model broken.ckpt gives NaN or infinite distances" in err and "nothing is scored" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pack"], "the following arguments are required: source, out"),
        (["evaluate", "l2", "--data", "d.h5", "--batch-size", "text"], "argument --batch-size: invalid int value"),
        (["distance", "a.png", "b.png", "--resize", "0"], "must be a number of pixels from 1 to 4096, got 0"),
        (["export", "a.ckpt", "b.pt", "--size", "abc"], "argument --size: invalid int value: 'abc'"),
    ],
)
def test_tool_usage_errors_are_one_line(tmp_path, capfd, argv, message):
    err = assert_refused(argv, capfd, tmp_path)
    assert err.startswith("error: ") and message in err and f"(options: lpips-lightning {argv[0]} --help)" in err
    assert "usage:" not in capfd.readouterr().err
