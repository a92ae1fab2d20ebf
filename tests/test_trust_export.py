"""Every loaded model gives the same numbers; every bad input to load/distance/evaluate/export is one line.

One briefly trained lin-alex checkpoint per module, exported once to every format. The right
number is the checkpoint's own LPIPS (itself checked against the `lpips` package here).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import lpips as lpips_pkg
import numpy as np
import pytest
import torch
from conftest import assert_refused, cpu_trainer
from PIL import Image

from lpips_lightning import load
from lpips_lightning.cli.main import main
from lpips_lightning.errors import ConfigError, ExportError
from lpips_lightning.export import export, model_from_checkpoint, read_checkpoint

FORMATS = [".ckpt", ".pth", ".safetensors", ".pt", ".onnx"]
MIN_ALEX = "smaller than the 31x31 minimum of backbone alex"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, imagenet_cache):
    """{suffix: file} for one lin-alex checkpoint (".ckpt") and its export in every format; plus the data."""
    from conftest import make_bapps

    from lpips_lightning.datamodules import JudgmentsDataModule
    from lpips_lightning.module import LPIPSModule
    from lpips_lightning.pack import pack

    root = tmp_path_factory.mktemp("trust")
    make_bapps(root / "b", n=4)
    data = pack(root / "b", root / "d.h5", size=32, workers=1, progress=False)
    model = LPIPSModule(variant="lin", backbone="alex")
    cpu_trainer(fast_dev_run=1).fit(model, JudgmentsDataModule(str(data), batch_size=4))
    with torch.no_grad():  # clearly non-trivial heads
        for h in model.lpips.heads:
            h.weight.uniform_(0.1, 1.0)
    files = {".ckpt": root / "m.ckpt"}
    model.trainer.save_checkpoint(files[".ckpt"])
    for suffix in FORMATS[1:]:
        files[suffix] = root / f"m{suffix}"
        export(files[".ckpt"], files[suffix])
    files["data"] = data
    return files


@pytest.fixture(scope="module")
def reference(exported):
    """The checkpoint's own metric, in eval mode."""
    return model_from_checkpoint(exported[".ckpt"])[0]


def _uint8_pair(n=3, h=40, w=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g) for _ in range(2))


# --- 1. the same numbers from every format ------------------------------------------------------
def test_reference_is_the_lpips_package(exported, reference):
    u0, u1 = _uint8_pair()
    x0, x1 = (u.float() / 127.5 - 1 for u in (u0, u1))
    pkg = lpips_pkg.LPIPS(net="alex", version="0.1", model_path=str(exported[".pth"]), verbose=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(reference(u0, u1), pkg(x0, x1).flatten(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("suffix", FORMATS)
def test_every_format_takes_every_input_range_and_gives_the_same_distance(exported, reference, suffix):
    u0, u1 = _uint8_pair()
    with torch.no_grad():
        expected = reference(u0, u1)
        model = load(exported[suffix])
        assert not model.training
        inputs = {
            "uint8": ((u0, u1), {}),
            "[-1, 1]": (tuple(u.float() / 127.5 - 1 for u in (u0, u1)), {}),
            "[0, 1] normalize": (tuple(u.float() / 255 for u in (u0, u1)), {"normalize": True}),
        }
        for label, (args, kwargs) in inputs.items():
            got = model(*args, **kwargs).flatten()
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5, msg=lambda m, label=label: f"{label}: {m}")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated: still what users call
def test_torchscript_file_alone_takes_uint8_and_normalize(exported, reference):
    u0, u1 = _uint8_pair(h=64, w=48, seed=1)
    scripted = torch.jit.load(str(exported[".pt"]))
    with torch.no_grad():
        expected = reference(u0, u1)
        torch.testing.assert_close(scripted(u0, u1), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(scripted(u0.float() / 255, u1.float() / 255, True), expected, rtol=0, atol=1e-5)
        with pytest.raises(Exception, match=MIN_ALEX):
            scripted(u0[..., :30, :], u1[..., :30, :])


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_export_of_0_1_0_still_loads_with_every_input_range(reference, tmp_path):
    from lpips_lightning.export import _example, _parts

    old = torch.jit.trace(_parts().Core(reference), _example(), check_trace=False)  # [-1, 1] only, no metadata
    old.save(str(tmp_path / "old.pt"))
    model = load(tmp_path / "old.pt")
    u0, u1 = _uint8_pair(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(model(u0, u1), reference(u0, u1), rtol=0, atol=1e-5)
        torch.testing.assert_close(model(u0 / 255, u1 / 255, normalize=True), reference(u0, u1), rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match=MIN_ALEX):
        model(u0[..., :8], u1[..., :8])


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def pngs(tmp_path):
    rng = np.random.default_rng(3)
    return [_png(tmp_path / f"{n}.png", rng.integers(0, 256, (44, 52, 3), dtype=np.uint8)) for n in ("a", "b")]


@pytest.mark.parametrize("suffix", FORMATS)
def test_distance_prints_the_same_number_for_every_format(exported, reference, pngs, capsys, suffix):
    assert main(["distance", *map(str, pngs), "--model", str(exported[suffix])]) == 0
    out, err = capsys.readouterr()
    assert not err.strip(), err  # no warnings either (NumPy's "not writable", torch.jit's notices)
    images = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1)[None] for p in pngs]
    with torch.no_grad():
        expected = reference(*images).item()
    assert float(out.strip()) == pytest.approx(expected, abs=2e-6)


# --- 2. images too small for the backbone -------------------------------------------------------
@pytest.mark.parametrize("suffix", FORMATS)
def test_loaded_models_refuse_images_below_the_minimum(exported, suffix):
    model = load(exported[suffix])
    assert model.min_size == 31 and model.backbone_name == "alex"
    tiny = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)
    with pytest.raises(ConfigError, match="images of 1x1 pixels are " + MIN_ALEX):
        model(tiny, tiny)
    wide = torch.zeros(2, 3, 30, 200)  # one side too small is enough (ONNX returns 0 for it, silently)
    with pytest.raises(ConfigError, match="images of 30x200 pixels are " + MIN_ALEX):
        model(wide, wide)
    with pytest.raises(ConfigError, match="a.png: images of 5x40"):
        model.check_size(5, 40, where="a.png")
    model.check_size(31, 31)
    edge = torch.zeros(1, 3, 31, 31, dtype=torch.uint8)
    assert torch.isfinite(model(edge, edge + 1)).all()


def test_distance_refuses_tiny_images(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))  # refused before any weights are needed
    a = _png(tmp_path / "a.png", np.zeros((1, 1, 3), np.uint8))
    b = _png(tmp_path / "b.png", np.full((1, 1, 3), 9, np.uint8))
    line = assert_refused(["distance", str(a), str(b)], capfd, tmp_path)
    assert "a.png" in line and "images of 1x1 pixels are " + MIN_ALEX in line and "--resize N with N >= 31" in line
    line = assert_refused(["distance", str(a), str(b), "--backbone", "vgg", "--resize", "15"], capfd, tmp_path)
    assert "images of 15x15 pixels are smaller than the 16x16 minimum of backbone vgg" in line


# --- 3. files that are not models -----------------------------------------------------------------
def _bad_file(name: str, folder: Path, exported: dict) -> Path:
    """Write the bad file `name` into `folder` (see BAD_MODELS)."""
    import onnx
    from onnx import TensorProto, helper
    from safetensors.torch import save_file

    path = folder / name
    stem = name.split(".")[0]
    if stem == "trunc":
        data = Path(exported[path.suffix]).read_bytes()
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
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    elif stem == "foreign":
        node = helper.make_node("Identity", ["x"], ["y"])
        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
        onnx.save(helper.make_model(helper.make_graph([node], "g", [io[0]], [io[1]])), str(path))
    else:
        raise AssertionError(name)
    return path


# file -> what the one line must say (besides the file's name)
BAD_MODELS = {
    "garbage.onnx": "not a loadable ONNX model",
    "trunc.onnx": "not a loadable ONNX model",
    "foreign.onnx": "inputs ['x'], not an lpips-lightning metric",
    "textzip.pt": "a zip archive that torch did not write, not a model file",
    "dict.pt": "not a checkpoint of lpips-lightning, an export, or lpips-format weights (holds a dict with keys w",
    "script.pt": "a TorchScript module, but not an lpips-lightning metric export",
    "trunc.pt": "truncated or damaged",
    "trunc.ckpt": "truncated or damaged",
    "trunc.pth": "truncated or damaged",
    "trunc.safetensors": "truncated or damaged, not a readable safetensors file",
    "empty.pt": "empty file, not a model file",
    "folder.pt": "is a folder, not a model file",
    "plain.safetensors": "not an lpips-lightning metric",
    "pickled.ckpt": "refused: holds pickled Python objects (numpy",
}


def _check_line(line: str, path: Path, expected: str) -> None:
    assert str(path) in line and expected in line, line
    assert "weights_only" not in line and "Traceback" not in line, line


@pytest.mark.parametrize("name", list(BAD_MODELS))
def test_load_refuses_each_bad_model_file_in_one_line(exported, tmp_path, name):
    path = _bad_file(name, tmp_path, exported)
    with pytest.raises(ExportError) as refused:
        load(path)
    _check_line(str(refused.value), path, BAD_MODELS[name])
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("name", list(BAD_MODELS))
def test_distance_and_evaluate_refuse_each_bad_model_file(exported, pngs, tmp_path, capfd, name):
    path = _bad_file(name, tmp_path, exported)
    line = assert_refused(["distance", *map(str, pngs), "--model", str(path)], capfd, tmp_path)
    _check_line(line, path, BAD_MODELS[name])
    line = assert_refused(["evaluate", str(path), "--data", str(exported["data"]), "--quiet"], capfd, tmp_path)
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
def test_export_and_read_checkpoint_refuse_each_bad_checkpoint(exported, tmp_path, capfd, name):
    path = _bad_file(name, tmp_path, exported)
    line = assert_refused(["export", str(path), str(tmp_path / "out.pth")], capfd, tmp_path)
    _check_line(line, path, BAD_CHECKPOINTS[name])
    with pytest.raises(ExportError) as refused:
        read_checkpoint(path)
    _check_line(str(refused.value), path, BAD_CHECKPOINTS[name])


def test_read_checkpoint_of_the_real_thing(exported):
    hp, weights, _ = read_checkpoint(exported[".ckpt"])
    assert hp["backbone"] == "alex" and "heads.0.weight" in weights


# --- 4. export's output -----------------------------------------------------------------------------
def test_export_onto_its_own_input_is_refused(exported, tmp_path, capfd):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(Path(exported[".ckpt"]).read_bytes())
    for extra in (["--format", "lpips", "--overwrite"], ["--format", "torchscript", "--overwrite"]):
        line = assert_refused(["export", str(ckpt), str(ckpt), *extra], capfd, tmp_path)
        assert "last.ckpt is also an input of this command" in line
    hp, _, _ = read_checkpoint(ckpt)  # still the checkpoint
    assert hp["variant"] == "lin"


def test_export_bad_targets_one_line(exported, tmp_path, capfd, monkeypatch):
    ckpt = str(exported[".ckpt"])
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


def test_load_tells_an_onnx_file_by_its_content(exported, reference, tmp_path):
    """An ONNX export under another name (``export m.model --format onnx``) loads as ONNX, and a
    loader of weights names it instead of failing on unreadable pickle data."""
    from lpips_lightning.weights import WeightsError, load_torch_file

    renamed = tmp_path / "m.model"
    renamed.write_bytes(Path(exported[".onnx"]).read_bytes())
    u0, u1 = _uint8_pair()
    with torch.no_grad():
        torch.testing.assert_close(load(renamed)(u0, u1), reference(u0, u1), rtol=1e-5, atol=1e-6)
    with pytest.raises(WeightsError, match="an ONNX model, not a weights file"):
        load_torch_file(renamed, "weights")


def test_export_leaves_no_temporary_file(exported, tmp_path, capsys):
    assert main(["export", str(exported[".ckpt"]), str(tmp_path / "m.pt")]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


# --- 5. distance's other bad input ----------------------------------------------------------------
def test_distance_bad_input_one_line(pngs, tmp_path, capfd, imagenet_cache):
    a, b = map(str, pngs)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    cases = [
        (["distance", a, str(tmp_path / "nope.png")], "nope.png: no such image file"),
        (["distance", a, str(tmp_path / "broken.png")], "broken.png: image does not decode"),
        (["distance", a, b, "--backbone", "resnet"], "unknown backbone 'resnet'; choose one of: alex, vgg, squeeze"),
        (["distance", a, b, "--version", "0.0"], "--version 0.0 has no official heads"),
        (["distance", a, b, "--version", "0.2", "--heads", "none"], "unknown version '0.2'"),
        (["distance", a, b, "--resize", "0"], "must be a number of pixels from 1 to 4096, got 0"),
        (["distance", a, b, "--resize", "-3"], "must be a number of pixels from 1 to 4096, got -3"),
        (["distance", a, b, "--resize", "100000"], "must be a number of pixels from 1 to 4096, got 100000"),
        (["distance", a, b, "--model", str(tmp_path / "nope.pt")], "nope.pt: no such model file"),
        (["distance", a, b, "--heads", str(tmp_path / "nope.pth")], "nope.pth: no such weights file"),
    ]
    for argv, message in cases:
        line = assert_refused(argv, capfd, tmp_path)
        assert message in line, (argv, line)


@pytest.mark.parametrize("suffix", [".ckpt", ".pth", ".onnx"])
def test_distance_refuses_options_that_contradict_the_model(exported, pngs, tmp_path, capfd, suffix):
    a, b, model = *map(str, pngs), str(exported[suffix])
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


def test_distance_works_without_warnings(pngs, capfd, imagenet_cache):
    assert main(["distance", *map(str, pngs), "--resize", "32"]) == 0
    out, err = capfd.readouterr()
    assert float(out) >= 0 and not err.strip(), err


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


def test_a_safetensors_file_whose_header_length_looks_like_onnx_is_safetensors(tmp_path):
    """A safetensors file starts with its header's length: one ending in byte 0x08 began like an ONNX model."""
    import struct

    from safetensors.torch import save_file

    from lpips_lightning.weights import sniff

    path = tmp_path / "w.safetensors"
    for pad in range(300):  # metadata long enough that the header's length ends in 0x08
        save_file({"w": torch.zeros(3)}, str(path), metadata={"note": "x" * pad})
        head = path.read_bytes()[:16]
        if head[0] == 0x08:
            break
    (length,) = struct.unpack("<Q", head[:8])
    assert length % 256 == 8 and 0 < head[1] < 0x80
    assert sniff(path) == "safetensors"
    renamed = tmp_path / "w.bin"
    renamed.write_bytes(path.read_bytes())
    assert sniff(renamed) == "safetensors"
