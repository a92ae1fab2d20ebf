"""The command table: every command and option spelled as it always was, --help fast, configs that parse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_group, write_judgments

from lpips_lightning.cli.main import COMMANDS, TRAINING, command, main
from lpips_lightning.cli.parser import tool_parser

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
DATAMODULES = sorted(p.name for p in (ROOT / "datamodules").glob("*.yaml"))
OVERLAYS = {"ddp.yaml", "debug.yaml"}
TOOLS = [name for name in COMMANDS if name not in TRAINING]
BASE_URL = "https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/"

PACK = {"size": 64, "workers": None, "group": None, "overwrite": False, "quiet": False, "lower_is_better": False,
        "min_votes": None}  # fmt: skip
DOWNLOAD = {"parts": None, "base_url": BASE_URL, "force": False, "timeout": 30.0, "quiet": False}
DEMO = {"seed": 0, "train": 4000, "val": 500, "jnd": 500, "overwrite": False}
EXPORT = {"format": None, "overwrite": False, "size": None, "trust_code": False}
EVALUATE = {
    "groups": None, "out": None, "overwrite": False, "batch_size": 64, "device": None, "quiet": False,
    "trust_code": False, "reference": None, "bootstrap": 0, "seed": 0,
}  # fmt: skip
DISTANCE = {
    "backbone": None, "version": None, "heads": None, "model": None, "backbone_weights": None, "resize": None,
    "trust_code": False,
}  # fmt: skip

# argv of a tool command -> the values its function is called with
PARSED = [
    ("pack", ["src", "o.h5"], {"source": "src", "out": "o.h5", **PACK}),
    (
        "pack",
        [
            "src",
            "o.h5",
            "--size",
            "32",
            "--workers",
            "2",
            "--group",
            "2afc/train/x",
            "--overwrite",
            "--quiet",
            "--lower-is-better",
            "--min-votes",
            "3",
        ],
        {
            "lower_is_better": True,
            "min_votes": 3,
            "source": "src",
            "out": "o.h5",
            "size": 32,
            "workers": 2,
            "group": "2afc/train/x",
            "overwrite": True,
            "quiet": True,
        },
    ),  # fmt: skip
    ("pack", ["--size=16", "src", "o.h5"], {"source": "src", "out": "o.h5", **PACK, "size": 16}),
    ("download", ["bapps", "dir"], {"dataset": "bapps", "folder": "dir", **DOWNLOAD}),
    (
        "download",
        [
            "bapps",
            "dir",
            "--parts",
            "train",
            "val",
            "--base-url",
            "file:///m",
            "--force",
            "--timeout",
            "2.5",
            "--quiet",
        ],
        {
            "dataset": "bapps",
            "folder": "dir",
            "parts": ["train", "val"],
            "base_url": "file:///m",
            "force": True,
            "timeout": 2.5,
            "quiet": True,
        },
    ),  # fmt: skip
    ("demo-data", ["d.h5"], {"out": "d.h5", **DEMO}),
    (
        "demo-data",
        ["d.h5", "--seed", "3", "--train", "10", "--val", "5", "--jnd", "6", "--overwrite"],
        {"out": "d.h5", "seed": 3, "train": 10, "val": 5, "jnd": 6, "overwrite": True},
    ),
    ("export", ["a.ckpt", "b.onnx"], {"ckpt": "a.ckpt", "out": "b.onnx", **EXPORT}),
    (
        "export",
        ["a.ckpt", "b.m", "--format", "onnx", "--overwrite", "--size", "32", "--trust-code"],
        {"ckpt": "a.ckpt", "out": "b.m", "format": "onnx", "overwrite": True, "size": 32, "trust_code": True},
    ),
    ("evaluate", ["l2", "--data", "d.h5"], {"models": ["l2"], "data": "d.h5", **EVALUATE}),
    (
        "evaluate",
        [
            "m1",
            "m2",
            "--data",
            "d.h5",
            "--groups",
            "a",
            "b/*",
            "--out",
            "o",
            "--overwrite",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--quiet",
            "--trust-code",
            "--reference",
            "paper",
            "--bootstrap",
            "100",
            "--seed",
            "7",
        ],
        {
            "models": ["m1", "m2"],
            "data": "d.h5",
            "groups": ["a", "b/*"],
            "out": "o",
            "overwrite": True,
            "batch_size": 8,
            "device": "cpu",
            "quiet": True,
            "trust_code": True,
            "reference": "paper",
            "bootstrap": 100,
            "seed": 7,
        },
    ),  # fmt: skip
    ("evaluate", ["--data", "d.h5", "l2", "ssim"], {"models": ["l2", "ssim"], "data": "d.h5", **EVALUATE}),
    ("distance", ["a.png", "b.png"], {"img0": "a.png", "img1": "b.png", **DISTANCE}),
    (
        "distance",
        [
            "a.png",
            "b.png",
            "--backbone",
            "vgg",
            "--version",
            "0.0",
            "--heads",
            "none",
            "--model",
            "m.ckpt",
            "--backbone-weights",
            "w.pth",
            "--resize",
            "32",
            "--trust-code",
        ],
        {
            "img0": "a.png",
            "img1": "b.png",
            "backbone": "vgg",
            "version": "0.0",
            "heads": "none",
            "model": "m.ckpt",
            "backbone_weights": "w.pth",
            "resize": 32,
            "trust_code": True,
        },
    ),  # fmt: skip
]


@pytest.mark.parametrize(("name", "argv", "expected"), PARSED)
def test_every_option_is_spelled_as_before(name, argv, expected):
    assert tool_parser(f"lpips-lightning {name}", command(name)).parse_args(argv).as_dict() == expected


def test_every_tool_option_is_in_the_table():
    """Each option of each tool is given in some argv of `PARSED`, and read into its parameter: a new one gets a row."""
    for name in TOOLS:
        actions = [a for a in tool_parser(name, command(name))._actions if a.dest != "help"]
        rows = [(argv, expected) for n, argv, expected in PARSED if n == name]
        given = {token.split("=")[0] for argv, _ in rows for token in argv}
        for action in actions:
            assert not action.option_strings or set(action.option_strings) & given, (name, action.option_strings)
            assert all(action.dest in expected for _, expected in rows), (name, action.dest)


def test_export_format_choices_are_the_export_formats():
    from lpips_lightning.cli.tools import EXPORT_FORMATS
    from lpips_lightning.export import FORMATS

    assert set(typing.get_args(EXPORT_FORMATS)) == set(FORMATS.values())


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_help_is_fast_and_does_not_import_torch(tool):
    code = (
        "import sys, time; start = time.perf_counter()\n"
        "from lpips_lightning.cli.main import main\n"
        f"try:\n    main([{tool!r}, '--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'LIGHT', time.perf_counter() - start)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout, result.stdout[-300:]
    verdict, seconds = result.stdout.split()[-2:]
    assert verdict == "LIGHT", result.stdout[-300:]
    assert float(seconds) < 2.0  # under 0.2 s on a quiet machine; the bound leaves room for a busy one


def test_fit_help_puts_model_and_data_first_and_comes_from_the_cache_once_made(tmp_path):
    """The first ``fit --help`` imports Lightning (seconds); the next prints the same text without torch."""
    code = (
        "import sys, time; start = time.perf_counter()\n"
        "from lpips_lightning.cli.main import main\n"
        "status = main(['fit', '--help'])\n"
        "print('TORCH' if 'torch' in sys.modules else 'LIGHT', status, time.perf_counter() - start)"
    )
    env = {**os.environ, "LPIPS_LIGHTNING_CACHE": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)]
    runs.append(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120))
    (first, first_verdict), (second, second_verdict) = [r.stdout.rsplit("\n", 2)[:2] for r in runs]
    assert first_verdict.split()[:2] == ["TORCH", "0"] and second_verdict.split()[:2] == ["LIGHT", "0"]
    assert float(second_verdict.split()[2]) < 2.0
    assert first == second and [p.name.split("-")[1] for p in tmp_path.glob("help-*.txt")] == ["fit"]
    lines = first.splitlines()
    assert lines[0].startswith("usage: lpips-lightning [options] fit [-c CONFIG] [--model.OPTION ...]")
    where = {prefix: next(i for i, line in enumerate(lines) if line.lstrip().startswith(prefix)) for prefix in (
        "--model.backbone", "--data.path", "--ckpt_path", "--trainer.max_epochs")}  # fmt: skip
    assert where["--model.backbone"] < where["--data.path"] < where["--ckpt_path"] < where["--trainer.max_epochs"]


def test_the_help_cache_follows_the_source_and_takes_only_a_bare_help(tmp_path, monkeypatch):
    from lpips_lightning.cli import help_cache

    def cached(*argv):
        return help_cache.cached(help_cache.path_for(list(argv)))

    monkeypatch.setenv("LPIPS_LIGHTNING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(help_cache, "PACKAGE", tmp_path / "package")
    (tmp_path / "package").mkdir()
    (tmp_path / "package" / "module.py").write_text("x = 1\n")
    help_cache.remember(help_cache.path_for(["fit", "--help"]), "usage: the help\n")
    assert cached("fit", "--help") == cached("fit", "-h") == "usage: the help\n"
    assert cached("validate", "--help") is None
    assert help_cache.path_for(["fit", "--config", "x.yaml", "--help"]) is None  # not a bare --help
    (tmp_path / "package" / "module.py").write_text("x = 22\n")  # the source changed: so may the help
    assert cached("fit", "--help") is None
    help_cache.remember(help_cache.path_for(["fit", "--help"]), "usage: the new help\n")
    assert cached("fit", "--help") == "usage: the new help\n"
    (kept,) = (tmp_path / "cache").glob("help-fit-*.txt")  # the old text went
    monkeypatch.setenv("JSONARGPARSE_DEFAULT_ENV", "true")  # jsonargparse then lists each option's variable
    assert cached("fit", "--help") is None
    monkeypatch.delenv("JSONARGPARSE_DEFAULT_ENV")
    kept.write_text("")  # emptied (a crash after the rename): not a help, made anew
    assert cached("fit", "--help") is None


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "distance", "pack", "demo-data", "export", "evaluate"):
        assert f"  {name}" in out
    assert set(COMMANDS) == {"fit", "validate", "test", "distance", "download", "pack", "demo-data", "export",
                             "evaluate"}  # fmt: skip


def test_train_py_runs_the_same_cli():
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "fit" in result.stdout and "distance" in result.stdout


# --- configs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_parses(config, capsys):
    args = ["fit", "--config", str(ROOT / "configs" / config)]
    if config in OVERLAYS:
        args = ["fit", "--config", str(ROOT / "configs/lin_alex.yaml"), *args[1:]]
    if config != "demo.yaml":
        args += ["--data", str(ROOT / "datamodules/demo.yaml")]
    with pytest.raises(SystemExit) as done:
        main([*args, "--print_config"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "model:" in out and "data:" in out and "path:" in out


@pytest.mark.parametrize("datamodule", DATAMODULES)
def test_every_datamodule_yaml_parses_and_is_commented(datamodule, capsys):
    text = (ROOT / "datamodules" / datamodule).read_text()
    fields = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert all("#" in ln for ln in fields), f"uncommented field in {datamodule}"
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs/lin_alex.yaml"),
                "--data",
                str(ROOT / "datamodules" / datamodule),
                "--print_config",
            ]
        )
    assert "batch_size: 50" in capsys.readouterr().out


def test_configs_are_commented():
    for config in CONFIGS:
        lines = [ln for ln in (ROOT / "configs" / config).read_text().splitlines() if ln and not ln.startswith("#")]
        assert all("#" in ln or ln.rstrip().endswith(":") for ln in lines), config


# --- the tools' numbers --------------------------------------------------------------------------
def test_distance_command(imagenet_cache, tmp_path, capsys):
    from conftest import assert_refused
    from PIL import Image

    from lpips_lightning import LPIPS

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    assert main(["distance", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--backbone", "squeeze"]) == 0
    printed = float(capsys.readouterr().out.strip())
    x0, x1 = (torch.from_numpy(v).permute(2, 0, 1)[None] for v in (a, b))
    expected = LPIPS("squeeze").eval()(x0, x1).item()
    assert printed == pytest.approx(expected, rel=1e-5)

    Image.fromarray(a[:32]).save(tmp_path / "small.png")
    err = assert_refused(["distance", str(tmp_path / "a.png"), str(tmp_path / "small.png")], capsys)
    assert "pass --resize N" in err
    assert main(["distance", str(tmp_path / "a.png"), str(tmp_path / "small.png"), "--resize", "32"]) == 0
    assert float(capsys.readouterr().out) > 0
    assert "nope.png: no such image file" in assert_refused(
        ["distance", str(tmp_path / "nope.png"), str(tmp_path / "a.png")], capsys
    )
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert "bad.png: image does not decode" in assert_refused(
        ["distance", str(tmp_path / "bad.png"), str(tmp_path / "a.png")], capsys
    )


@pytest.fixture(scope="module")
def packed(module_bapps_h5) -> Path:
    """A packed tiny BAPPS (2afc train/val, jnd val): what the refusals are given as data."""
    return module_bapps_h5


def test_evaluate_scores_held_out_groups_by_default(packed, capfd, tmp_path):
    from conftest import assert_refused

    out = tmp_path / "ev"
    assert main(["evaluate", "l2", "--data", str(packed), "--quiet", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["groups"] == ["2afc/val/cnn", "jnd/val/cnn"]  # not 2afc/train/trad
    assert "2afc/train/trad" not in capfd.readouterr().out
    # rerunning into the same folder would replace results: refused without --overwrite
    assert_refused(["evaluate", "l2", "--data", str(packed), "--quiet", "--out", str(out)], capfd, tmp_path)
    assert main(["evaluate", "l2", "--data", str(packed), "--quiet", "--out", str(out), "--overwrite"]) == 0


@pytest.mark.parametrize("kinds", [("2afc",), ("jnd",)])
def test_evaluate_a_file_with_one_kind_only(tmp_path, capfd, kinds):
    data = write_judgments(tmp_path / "one.h5", {f"{k}/val/only": random_group(k) for k in kinds})
    assert main(["evaluate", "l2", "--data", str(data), "--quiet"]) == 0
    assert f"{kinds[0]}/val/only" in capfd.readouterr().out


def test_evaluate_without_held_out_groups_scores_everyrandom_group(tmp_path, capfd):
    data = write_judgments(tmp_path / "train_only.h5", {"2afc/train/mine": random_group("2afc")})
    assert main(["evaluate", "l2", "--data", str(data), "--quiet"]) == 0
    assert "2afc/train/mine" in capfd.readouterr().out
