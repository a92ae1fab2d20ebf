"""Every format gives the distances of the checkpoint's own metric (itself checked against `lpips`).

One briefly trained lin-alex checkpoint (and a tune-squeeze one, whose files hold the backbone)
per session, exported once to every format by the real command (`conftest.trained`). Tests
that need the ONNX export are slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import lpips as lpips_pkg
import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

from lpips_lightning import load
from lpips_lightning.cli.main import main
from lpips_lightning.errors import ConfigError, WeightsError
from lpips_lightning.export import export, load_into_torchmetrics
from lpips_lightning.model.checkpoint import model_from_checkpoint, read_checkpoint
from lpips_lightning.weights import load_torch_file, sniff

ONNX = pytest.param(".onnx", marks=pytest.mark.slow)
FORMATS = [".ckpt", ".pth", ".safetensors", ".pt", ONNX]
MIN_ALEX = "smaller than the 31x31 minimum of backbone alex"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lin(trained):
    """The lin-alex checkpoint and its exports."""
    return trained["lin"]


@pytest.fixture(scope="module")
def reference(lin):
    """The checkpoint's own metric, in eval mode."""
    return model_from_checkpoint(lin[".ckpt"])[0]


def _uint8_pair(n=3, h=40, w=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g) for _ in range(2))


def _images(n=3, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1, torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_reference_is_the_lpips_package(lin, reference):
    u0, u1 = _uint8_pair()
    x0, x1 = (u.float() / 127.5 - 1 for u in (u0, u1))
    pkg = lpips_pkg.LPIPS(net="alex", version="0.1", model_path=str(lin[".pth"]), verbose=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(reference(u0, u1), pkg(x0, x1).flatten(), rtol=1e-5, atol=1e-7)


def test_model_from_checkpoint_is_the_trained_metric_and_names_its_missing_backbone_file(
    lin, reference, tmp_path, monkeypatch
):
    rebuilt, hp, _ = model_from_checkpoint(lin[".ckpt"])
    x0, x1 = _images()
    torch.testing.assert_close(rebuilt(x0, x1), lin.model(x0, x1))
    torch.testing.assert_close(reference(x0, x1), lin.model(x0, x1))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))  # a lin checkpoint names its backbone file
    with pytest.raises(WeightsError, match=r"rebuilt from alexnet-owt-.*missing"):
        model_from_checkpoint(lin[".ckpt"])
    torch.testing.assert_close(load(lin[".safetensors"])(x0, x1), lin.model(x0, x1))  # exports need no file


def test_read_checkpoint_of_the_real_thing(lin):
    hp, weights, _ = read_checkpoint(lin[".ckpt"])
    assert hp["backbone"] == "alex" and "heads.0.weight" in weights


@pytest.mark.parametrize("suffix", FORMATS)
def test_every_format_takes_every_input_range_and_gives_the_same_distance(lin, reference, suffix):
    u0, u1 = _uint8_pair()
    with torch.no_grad():
        expected = reference(u0, u1)
        model = load(lin[suffix])
        assert not model.training
        inputs = {
            "uint8": ((u0, u1), {}),
            "[-1, 1]": (tuple(u.float() / 127.5 - 1 for u in (u0, u1)), {}),
            "[0, 1] normalize": (tuple(u.float() / 255 for u in (u0, u1)), {"normalize": True}),
        }
        for label, (args, kwargs) in inputs.items():
            got = model(*args, **kwargs).flatten()
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5, msg=lambda m, label=label: f"{label}: {m}")


@pytest.mark.parametrize("variant", ["lin", "tune"])
@pytest.mark.parametrize(
    ("suffix", "rtol"),
    [(".pth", 1e-5), (".safetensors", 1e-5), (".pt", 1e-5), pytest.param(".onnx", 1e-4, marks=pytest.mark.slow)],
)
def test_round_trip_each_format(trained, variant, suffix, rtol):
    files = trained[variant]
    out = files[suffix]
    printed = files.printed[suffix]
    assert f"wrote {out}" in printed and "load it with:" in printed
    assert not list(out.parent.glob(".m*"))
    x0, x1 = _images(size=48 if suffix == ".onnx" else 64)
    expected = files.model(x0, x1)
    reloaded = load(out)
    assert not reloaded.training
    torch.testing.assert_close(reloaded(x0, x1).flatten(), expected, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("variant", ["lin", "tune"])
def test_lpips_export_loads_in_the_lpips_package_and_torchmetrics(trained, variant):
    files = trained[variant]
    model, out = files.model, files[".pth"]
    with_backbone = variant == "tune"
    assert ("pnet_rand=True" in files.printed[".pth"]) == with_backbone
    state = torch.load(out, weights_only=True)
    assert any(k.startswith("net.slice") for k in state) == with_backbone
    x0, x1 = _images()
    ref = lpips_pkg.LPIPS(
        net=model.backbone_name, version="0.1", model_path=str(out), pnet_rand=with_backbone, verbose=False
    )
    torch.testing.assert_close(ref(x0, x1).flatten(), model(x0, x1), rtol=1e-5, atol=1e-8)
    tm = LearnedPerceptualImagePatchSimilarity(net_type=model.backbone_name, reduction="none")
    load_into_torchmetrics(tm, out)
    torch.testing.assert_close(tm(x0, x1), model(x0, x1), rtol=1e-4, atol=1e-8)


def test_safetensors_metadata_rebuilds_the_model(trained):
    from safetensors import safe_open

    with safe_open(str(trained["tune"][".safetensors"]), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["backbone"] == "squeeze" and meta["variant"] == "tune" and meta["version"] == "0.1"
    assert json.loads(meta["config"])["variant"] == "tune"
    assert "shift" not in " ".join(keys) and len(keys) == len(set(keys))


def test_exports_without_a_backbone_spec_still_load(trained, tmp_path):
    """A classic backbone is named enough: metadata without backbone_spec and input_size loads."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    files = trained["tune"]
    with safe_open(str(files[".safetensors"]), "pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k not in ("backbone_spec", "input_size")}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    x0, x1 = _images()
    torch.testing.assert_close(load(tmp_path / "old.safetensors")(x0, x1), files.model(x0, x1))


def test_load_lpips_pth_infers_backbone_and_refuses_mismatches(lin, tmp_path):
    loaded = load(lin[".pth"])
    assert loaded.backbone_name == "alex"
    with pytest.raises(WeightsError, match="m.pth: does not fit this model"):
        load(lin[".pth"], backbone="vgg")
    bad = torch.load(lin[".pth"], weights_only=True)
    bad["lin1.model.1.weight"] = torch.zeros(1, 7, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"channels \[64, 7, 384, 256, 256\] fit no backbone"):
        load(tmp_path / "bad.pth")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated: still what users call
def test_torchscript_file_alone_takes_uint8_and_normalize(lin, reference):
    u0, u1 = _uint8_pair(h=64, w=48, seed=1)
    scripted = torch.jit.load(str(lin[".pt"]))
    with torch.no_grad():
        expected = reference(u0, u1)
        torch.testing.assert_close(scripted(u0, u1), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(scripted(u0.float() / 255, u1.float() / 255, True), expected, rtol=0, atol=1e-5)
        with pytest.raises(Exception, match=MIN_ALEX):
            scripted(u0[..., :30, :], u1[..., :30, :])


@pytest.mark.parametrize("suffix", FORMATS)
def test_distance_prints_the_same_number_for_every_format(lin, reference, pngs, capsys, suffix):
    assert main(["distance", *map(str, pngs), "--model", str(lin[suffix])]) == 0
    out, err = capsys.readouterr()
    assert not err.strip(), err  # no warnings either (NumPy's "not writable", torch.jit's notices)
    images = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1)[None] for p in pngs]
    with torch.no_grad():
        expected = reference(*images).item()
    assert float(out.strip()) == pytest.approx(expected, abs=2e-6)


@pytest.mark.parametrize("suffix", FORMATS)
def test_loaded_models_refuse_images_below_the_minimum(lin, suffix):
    model = load(lin[suffix])
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


@pytest.mark.slow
def test_load_tells_an_onnx_file_by_its_content(lin, reference, tmp_path):
    """An ONNX export under another name (``export m.model --format onnx``) loads as ONNX, and a
    loader of weights names it instead of failing on unreadable pickle data."""
    renamed = tmp_path / "m.model"
    renamed.write_bytes(Path(lin[".onnx"]).read_bytes())
    u0, u1 = _uint8_pair()
    with torch.no_grad():
        torch.testing.assert_close(load(renamed)(u0, u1), reference(u0, u1), rtol=1e-5, atol=1e-6)
    with pytest.raises(WeightsError, match="an ONNX model, not a weights file"):
        load_torch_file(renamed, "weights")


def test_export_leaves_no_temporary_file(lin, tmp_path, capsys):
    assert main(["export", str(lin[".ckpt"]), str(tmp_path / "m.pt")]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_export_api_writes_the_format_its_extension_names(lin, tmp_path):
    how = export(lin[".ckpt"], tmp_path / "m.safetensors")
    assert how == f"lpips_lightning.load({str(tmp_path / 'm.safetensors')!r})"
    assert sniff(tmp_path / "m.safetensors") == "safetensors"


def test_a_safetensors_file_whose_header_length_looks_like_onnx_is_safetensors(tmp_path):
    """A safetensors file starts with its header's length: one ending in byte 0x08 began like an ONNX model."""
    import struct

    from safetensors.torch import save_file

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
