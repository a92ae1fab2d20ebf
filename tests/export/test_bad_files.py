"""Every file that is not a model, or not ours, is refused in one line by `load`, `distance`, `evaluate`, `export`.

Table-driven: each bad file is made by `_bad_file` from its name; the tables say what the one
line must say besides the file's name.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_refused

from lpips_lightning import load
from lpips_lightning.cli.main import main
from lpips_lightning.errors import ExportError, LPIPSLightningError
from lpips_lightning.export.core import Core, example
from lpips_lightning.model.checkpoint import model_from_checkpoint, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lin(trained):
    return trained["lin"]


def _bad_file(name: str, folder: Path, lin) -> Path:
    """Write the bad file `name` into `folder` (see BAD_MODELS)."""
    import onnx
    from onnx import TensorProto, helper
    from safetensors.torch import save_file

    path = folder / name
    stem = name.split(".")[0]
    if stem == "trunc":
        data = Path(lin[path.suffix]).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif stem == "garbage":
        path.write_bytes(b"this is not a model\n" * 20)
    elif stem == "empty":
        path.write_bytes(b"")
    elif stem == "folder":
        path.mkdir()
    elif stem == "textzip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes/readme.txt", "hello")
            z.writestr("notes/data.txt", "1 2 3")
    elif stem == "dict":
        torch.save({"weights": torch.zeros(3), "step": 4}, path)
    elif stem == "plain":
        save_file({"w": torch.zeros(3)}, str(path))
    elif stem == "pickled":
        hp = {"variant": "lin", "backbone": "alex", "mean": np.zeros(3)}
        torch.save({"state_dict": {"lpips.heads.0.weight": torch.zeros(1)}, "hyper_parameters": hp}, path)
    elif stem == "script":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    elif stem == "headlike":  # the metric's traced core without our metadata: its state dict has heads
        metric = model_from_checkpoint(lin[".ckpt"])[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.trace(Core(metric), example(), check_trace=False).save(str(path))
    elif stem == "foreign":
        node = helper.make_node("Identity", ["x"], ["y"])
        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
        onnx.save(helper.make_model(helper.make_graph([node], "g", [io[0]], [io[1]])), str(path))
    elif stem == "nometa":  # our inputs, but none of our metadata: not ours, whatever it computes
        node = helper.make_node("Sub", ["x0", "x1"], ["distance"])
        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, "H", "W"]) for n in ("x0", "x1", "distance")]
        onnx.save(helper.make_model(helper.make_graph([node], "g", io[:2], io[2:])), str(path))
    else:
        raise AssertionError(name)
    return path


NOT_OURS = "a TorchScript module, but not an lpips-lightning metric export"
# file -> what the one line must say (besides the file's name)
BAD_MODELS = {
    "garbage.onnx": "not a loadable ONNX model",
    "trunc.onnx": "not a loadable ONNX model",
    "foreign.onnx": "inputs ['x'], not an lpips-lightning metric",
    "nometa.onnx": "not an lpips-lightning metric (metadata format != lpips-lightning/metric)",
    "textzip.pt": "a zip archive that torch did not write, not a model file",
    "dict.pt": "not a checkpoint of lpips-lightning, an export, or lpips-format weights (holds a dict with keys w",
    "script.pt": NOT_OURS,
    "headlike.pt": NOT_OURS,  # refused, never run as a metric (it would compute a distance)
    "trunc.pt": "truncated or damaged",
    "trunc.ckpt": "truncated or damaged",
    "trunc.pth": "truncated or damaged",
    "trunc.safetensors": "truncated or damaged, not a readable safetensors file",
    "empty.pt": "empty file, not a model file",
    "folder.pt": "is a folder, not a model file",
    "plain.safetensors": "not an lpips-lightning metric",
    "pickled.ckpt": "refused: holds pickled Python objects (numpy",
}
NEEDS_ONNX_EXPORT = {"trunc.onnx"}
BAD_MODEL_NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in NEEDS_ONNX_EXPORT else n for n in BAD_MODELS]


def _check_line(line: str, path: Path, expected: str) -> None:
    assert str(path) in line and expected in line, line
    assert "weights_only" not in line and "Traceback" not in line, line


@pytest.mark.parametrize("name", BAD_MODEL_NAMES)
def test_load_refuses_each_bad_model_file_in_one_line(lin, tmp_path, name):
    path = _bad_file(name, tmp_path, lin)
    with pytest.raises(ExportError) as refused:
        load(path)
    _check_line(str(refused.value), path, BAD_MODELS[name])
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("name", BAD_MODEL_NAMES)
def test_distance_and_evaluate_refuse_each_bad_model_file(lin, pngs, tmp_path, capfd, name):
    path = _bad_file(name, tmp_path, lin)
    line = assert_refused(["distance", *map(str, pngs), "--model", str(path)], capfd, tmp_path)
    _check_line(line, path, BAD_MODELS[name])
    line = assert_refused(["evaluate", str(path), "--data", str(lin.data), "--quiet"], capfd, tmp_path)
    _check_line(line, path, BAD_MODELS[name])


# file given as the checkpoint to export (and to read_checkpoint, the --ckpt_path pre-check)
BAD_CHECKPOINTS = {
    "trunc.ckpt": "truncated or damaged (its zip archive has no directory), not a readable checkpoint file",
    "trunc.pt": "truncated or damaged",
    "empty.pt": "empty file, not a checkpoint file",
    "folder.pt": "is a folder, not a checkpoint file",
    "garbage.onnx": "not a checkpoint file",
    "textzip.pt": "a zip archive that torch did not write, not a checkpoint file",
    "dict.pt": "not a checkpoint of lpips-lightning",
    "script.pt": "a TorchScript export, not a checkpoint file",
    "plain.safetensors": "a safetensors file, not a checkpoint file",
    "pickled.ckpt": "refused: holds pickled Python objects (numpy",
}


@pytest.mark.parametrize("name", list(BAD_CHECKPOINTS))
def test_export_and_read_checkpoint_refuse_each_bad_checkpoint(lin, tmp_path, capfd, name):
    path = _bad_file(name, tmp_path, lin)
    line = assert_refused(["export", str(path), str(tmp_path / "out.pth")], capfd, tmp_path)
    _check_line(line, path, BAD_CHECKPOINTS[name])
    with pytest.raises(ExportError) as refused:
        read_checkpoint(path)
    _check_line(str(refused.value), path, BAD_CHECKPOINTS[name])


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "no model file given (an empty path)"),
        ("/dev/null", "/dev/null: not a regular file (a device, pipe or socket)"),
        ("TEXT", "not a model file (neither a torch file, safetensors, TorchScript nor ONNX)"),
    ],
)
def test_load_names_what_a_path_is_not(tmp_path, path, message):
    if path == "TEXT":
        path = tmp_path / "notes.pt"
        path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(ExportError) as err:
        load(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_load_refuses_foreign_files(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"junk")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(LPIPSLightningError, match="list.pth: not a checkpoint of lpips-lightning"):
        load(tmp_path / "list.pth")


# --- export's output ----------------------------------------------------------------------------------
def test_export_onto_its_own_input_is_refused(lin, tmp_path, capfd):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(Path(lin[".ckpt"]).read_bytes())
    for extra in (["--format", "lpips", "--overwrite"], ["--format", "torchscript", "--overwrite"]):
        line = assert_refused(["export", str(ckpt), str(ckpt), *extra], capfd, tmp_path)
        assert "last.ckpt is also an input of this command" in line
    hp, _, _ = read_checkpoint(ckpt)  # still the checkpoint
    assert hp["variant"] == "lin"


def test_export_bad_targets_one_line(lin, tmp_path, capfd, monkeypatch):
    ckpt = str(lin[".ckpt"])
    (tmp_path / "sub").mkdir()
    cases = [
        ([str(tmp_path / "sub")], "sub is a folder"),
        ([str(tmp_path / "sub"), "--format", "onnx"], "sub is a folder"),
        ([str(tmp_path / "m.bin")], "cannot tell the format from the extension"),
        ([str(tmp_path / "m.pth"), "--format", "onnx"], "--format onnx contradicts the extension .pth (lpips format)"),
        ([str(tmp_path / "m.onnx"), "--format", "lpips"], "extension .onnx (onnx format); name the file m.pth"),
        ([str(tmp_path / "missing" / "m.pth")], "folder " + str(tmp_path / "missing") + " does not exist"),
    ]
    for target, message in cases:
        assert message in assert_refused(["export", ckpt, *target], capfd, tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # root may write anywhere: make the folder read-only as check_output sees it
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    line = assert_refused(["export", ckpt, str(locked / "m.pth")], capfd, tmp_path)
    assert "locked is not writable" in line


def test_bad_export_inputs_one_line_nothing_written(lin, tmp_path, capsys):
    ckpt = lin[".ckpt"]
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.ckpt")
    cases = [
        (["export", str(tmp_path / "other.ckpt"), str(tmp_path / "o.pth")], "other.ckpt: not a checkpoint of lpips"),
        (["export", str(tmp_path / "nope.ckpt"), str(tmp_path / "o.pth")], "nope.ckpt: no such checkpoint file"),
        (["export", str(ckpt), str(tmp_path / "o.bin")], "cannot tell the format from the extension"),
    ]
    (tmp_path / "exists.pth").write_text("keep")
    cases.append((["export", str(ckpt), str(tmp_path / "exists.pth")], "exists.pth already exists"))
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.pth").exists() and not (tmp_path / "o.bin").exists()
    assert (tmp_path / "exists.pth").read_text() == "keep"
    assert not list(tmp_path.glob(".*tmp*"))


# --- distance with a model file: options that contradict it ------------------------------------------
@pytest.mark.parametrize("suffix", [".ckpt", ".pth", pytest.param(".onnx", marks=pytest.mark.slow)])
def test_distance_refuses_options_that_contradict_the_model(lin, pngs, tmp_path, capfd, suffix):
    a, b, model = *map(str, pngs), str(lin[suffix])
    cases = [
        (["--backbone", "vgg"], f"--backbone vgg contradicts --model {model}, a metric over backbone alex"),
        (["--version", "0.0"], f"--version 0.0 contradicts --model {model}, a version 0.1 metric"),
        (["--heads", "none"], f"--heads cannot be combined with --model {model}"),
        (["--backbone-weights", "w.pth"], "--backbone-weights cannot be combined with --model"),
    ]
    if suffix == ".pth":  # the lpips format records neither: --backbone names the network (checked by its keys)
        cases = cases[2:]
    for extra, message in cases:
        line = assert_refused(["distance", a, b, "--model", model, *extra], capfd, tmp_path)
        assert message in line, (extra, line)
    assert main(["distance", a, b, "--model", model, "--backbone", "alex", "--version", "0.1"]) == 0
