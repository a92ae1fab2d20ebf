"""The README's custom-judgments recipe, run as written: its commands read from the README, one CSV, fit."""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_fake_imagenet
from PIL import Image

from lpips_lightning.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def recipe() -> list[str]:
    """The README's shell block that packs `2afc/train/mine`: its lines, heredocs kept whole."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if "--group 2afc/train/mine" in b]
    return block.splitlines()


def run(lines: list[str], extra_fit: list[str]) -> list[str]:
    """Run the recipe: ``cat > F <<EOF`` heredocs are written, ``lpips-lightning ...`` lines run in-process."""
    ran, k = [], 0
    while k < len(lines):
        line = lines[k].strip()
        k += 1
        if not line:
            continue
        heredoc = re.fullmatch(r"cat > (\S+) <<EOF", line)
        if heredoc:
            end = lines.index("EOF", k)
            Path(heredoc.group(1)).write_text("\n".join(lines[k:end]) + "\n")
            k = end + 1
            continue
        argv = shlex.split(line)
        assert argv[0] == "lpips-lightning", f"the recipe has a line this test cannot run: {line}"
        extra = extra_fit if argv[1] == "fit" else []
        assert main(argv[1:] + extra) == 0, line
        ran.append(argv[1])
    return ran


@pytest.mark.slow
def test_the_readme_recipe_trains_from_one_csv(tmp_path, monkeypatch):
    write_fake_imagenet(Path(os.environ["TORCH_HOME"]), names=("alex",))  # the recipe's lin_alex, offline
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    for folder in ("configs", "datamodules"):  # the project folder, as the recipe runs from it
        shutil.copytree(ROOT / folder, tmp_path / folder)
    lines = recipe()
    rows = list(csv.DictReader(lines[lines.index("cat > mine.csv <<EOF") + 1 : lines.index("EOF")]))
    rng = np.random.default_rng(0)
    for row in rows:  # the user's images: a dozen 16 x 16 PNGs
        for key in ("ref", "p0", "p1"):
            (tmp_path / row[key]).parent.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / row[key])
    assert len(rows) * 3 >= 12
    fast = ["--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--run_name", "mine"]
    assert run(lines, fast) == ["pack", "fit"]
    log = list(csv.DictReader(open(tmp_path / "checkpoints/mine/metrics.csv")))
    scores = [float(r["val/2afc/mine_heldout"]) for r in log if r.get("val/2afc/mine_heldout")]
    assert scores and all(0 <= s <= 1 for s in scores)  # the held-out subset was scored
    assert list((tmp_path / "checkpoints/mine").glob("*.ckpt"))
