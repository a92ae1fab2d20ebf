"""A model file is data: loading one never imports or calls code it names, unless the user trusts it.

Each hostile file names ``os.system`` (or a module whose import has a side effect) as its backbone's
``class_path``; loading it through `load`, `distance`, `evaluate` and `export` must refuse in one
line and run nothing. With ``trust_code`` a real module class is built; a non-class never is.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import assert_refused
from PIL import Image

from lpips_lightning import load
from lpips_lightning.errors import ConfigError
from lpips_lightning.weights import write_safetensors

pytestmark = pytest.mark.usefixtures("one_thread")


def _evil(marker):
    return {"class_path": "os.system", "init_args": {"command": f"touch {marker}"}}


def _safetensors(path, spec):
    meta = {
        "format": "lpips-lightning/metric",
        "format_version": "1",
        "backbone": spec["class_path"],
        "backbone_spec": json.dumps(spec),
        "version": "0.1",
        "heads": "learned",
        "min_size": "1",
    }
    write_safetensors({"heads.0.weight": torch.zeros(1, 1, 1, 1)}, path, meta)
    return path


def _ckpt(path, spec):
    hp = {"variant": "lin", "backbone": spec, "version": "0.1"}
    torch.save({"hyper_parameters": hp, "state_dict": {"lpips.heads.0.weight": torch.zeros(1, 1, 1, 1)}}, path)
    return path


@pytest.fixture(params=["safetensors", "ckpt"])
def hostile(request, tmp_path):
    """(model file, the marker file its command would create)."""
    marker = tmp_path / "PWNED"
    make = _safetensors if request.param == "safetensors" else _ckpt
    return make(tmp_path / f"m.{request.param}", _evil(marker)), marker


def test_load_refuses_a_file_that_names_code(hostile):
    path, marker = hostile
    with pytest.raises(ConfigError, match=r"custom code \('os.system'\).*trust_code=True \(on the command line"):
        load(path)
    assert not marker.exists()


def test_trusting_the_file_still_calls_nothing_that_is_not_a_module_class(hostile):
    path, marker = hostile
    with pytest.raises(ConfigError, match="not a torch.nn.Module subclass \\(nothing was called\\)"):
        load(path, trust_code=True)
    assert not marker.exists()


def test_a_class_path_inside_the_package_must_be_one_of_its_module_classes(tmp_path):
    marker = tmp_path / "PWNED"
    spec = {"class_path": "lpips_lightning.backbones.os.system", "init_args": {"command": f"touch {marker}"}}
    with pytest.raises(ConfigError, match="custom code"):
        load(_safetensors(tmp_path / "m.safetensors", spec))
    assert not marker.exists()


def test_a_module_named_by_a_file_is_not_even_imported_without_trust(tmp_path, monkeypatch):
    marker = tmp_path / "IMPORTED"
    (tmp_path / "sneaky_backbone.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return [x]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _safetensors(tmp_path / "m.safetensors", {"class_path": "sneaky_backbone.Net", "init_args": {}})
    with pytest.raises(ConfigError, match="custom code"):
        load(path)
    assert not marker.exists() and "sneaky_backbone" not in sys.modules
    # the user opts in: the module is imported and its class built (these weights do not fit it)
    with pytest.raises(Exception, match="m.safetensors"):
        load(path, trust_code=True)
    assert marker.exists()
    sys.modules.pop("sneaky_backbone", None)


@pytest.fixture
def pngs(tmp_path):
    files = []
    for i in range(2):
        f = tmp_path / f"im{i}.png"
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(f)
        files.append(str(f))
    return files


def test_no_command_runs_code_from_a_model_file(hostile, pngs, bapps_h5, tmp_path, capfd):
    path, marker = hostile
    commands = [
        ["distance", *pngs, "--model", str(path)],
        ["evaluate", str(path), "--data", str(bapps_h5)],
    ]
    if path.suffix == ".ckpt":
        commands.append(["export", str(path), str(tmp_path / "out.safetensors")])
    for argv in commands:
        line = assert_refused(argv, capfd)
        assert "--trust-code" in line, line
        assert not marker.exists(), argv
