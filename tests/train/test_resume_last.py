"""`--ckpt_path last` resumes the newest run of the fit's own variant, backbone and data file."""

from __future__ import annotations

import os

import pytest
import yaml
from jsonargparse import Namespace

from lpips_lightning.errors import ConfigError
from lpips_lightning.train.resume import last_of_configuration, run_configuration


def _run(runs, name, variant="lin", backbone="alex", data="j.h5", age=0):
    folder = runs / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {"variant": variant, "backbone": backbone},
                                                        "data": {"path": data}}))  # fmt: skip
    last = folder / "last.ckpt"
    last.write_bytes(b"x")
    os.utime(last, (1_000_000 - age, 1_000_000 - age))
    return folder


def _config(variant="lin", backbone="alex", data="j.h5"):
    return Namespace(model=Namespace(variant=variant, backbone=backbone), data=Namespace(path=data))


def test_the_newest_run_of_the_same_configuration_not_the_newest_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    _run(runs, "old_alex", age=30)
    _run(runs, "alex_other_data", data="other.h5", age=1)
    _run(runs, "vgg", backbone="vgg", age=0)  # the newest run of all
    _run(runs, "tune_alex", variant="tune", age=0)
    assert last_of_configuration(runs, _config()) == ("old_alex", "")
    assert last_of_configuration(runs, _config(backbone="vgg"))[0] == "vgg"
    assert last_of_configuration(runs, _config(data=str(tmp_path / "other.h5")))[0] == "alex_other_data"


def test_several_runs_of_the_configuration_take_the_newest_and_say_so(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "a", age=5)
    _run(runs, "b", age=2)
    run, note = last_of_configuration(runs, _config())
    assert run == "b" and "newest of 2 runs" in note and "--run_name" in note


def test_no_run_of_the_configuration_lists_the_runs_in_one_line(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "vgg_run", backbone="vgg")
    _run(runs, "timm_run", variant="tune", backbone="timm:vit_small_patch14_dinov2", data="x.h5", age=3)
    (runs / "odd").mkdir()
    (runs / "odd" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(ConfigError) as err:
        last_of_configuration(runs, _config())
    message = str(err.value)
    assert "\n" not in message and "(lin, alex, j.h5)" in message
    assert "vgg_run (lin, vgg, j.h5)" in message and "timm_run (tune, vit_small_patch14_dinov2, x.h5)" in message
    assert "odd (no readable config.yaml)" in message and "--run_name NAME" in message


def test_no_run_at_all(tmp_path):
    with pytest.raises(ConfigError, match="no run in .* has a last.ckpt"):
        last_of_configuration(tmp_path / "none", _config())


def test_run_configuration_reads_class_path_configs(tmp_path):
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump({"model": {"init_args": {"variant": "scratch"}}, "data": {"init_args": {"path": "d.h5"}}})
    )
    assert run_configuration(tmp_path) == {"variant": "scratch", "backbone": "alex", "data": "d.h5"}
