"""scripts/reproduce.py: the paper's table, step skipping and resuming, against a local BAPPS mirror."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bapps_mirror import build_bapps_archives, serve
from conftest import default_sigint

from lpips_lightning import paper

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "reproduce.py"
_spec = importlib.util.spec_from_file_location("reproduce_script", SCRIPT)
rp = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = rp  # dataclasses look their module up there
_spec.loader.exec_module(rp)

TINY = [
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "2",
    "--data.batch_size", "4",
    "--trainer.enable_progress_bar", "false",
]  # fmt: skip


def _scores(base: float) -> dict[str, float]:
    groups = [f"2afc/val/{s}" for s in paper.SUBSETS_2AFC] + [f"jnd/val/{s}" for s in rp.SUBSETS_JND]
    return {g: base + i / 100 for i, g in enumerate(groups)}


def _row(text: str, label: str, source: str) -> list[str]:
    """The cells of the first table row starting with `label | source`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:2] == [label, source]:
            return cells
    raise AssertionError(f"no row {label} | {source} in:\n{text}")


# --- the table builder (fast) --------------------------------------------------------------------
def test_table_has_our_scores_next_to_the_papers_and_the_released_weights():
    configs = [rp.resolve_config(c) for c in ("lin_alex", "tune_vgg", "scratch_squeeze")]
    results = {"lin_alex": _scores(0.70), "tune_vgg": _scores(0.60), "scratch_squeeze": None}
    text = rp.build_table(configs, results, {"alex": _scores(0.50)}, notes=["a note"])

    ours = _row(text, "lin alex", "this run")
    assert ours[2:8] == ["70.0", "71.0", "72.0", "73.0", "74.0", "75.0"]  # traditional .. frameinterp
    assert ours[8:] == ["72.5", "70.5"]  # mean of six, mean of traditional and CNN
    # Table 5 as printed: six subsets, its "All" and its "Dist. All"
    assert _row(text, "lin alex", "paper")[2:] == ["73.9", "83.4", "71.5", "61.2", "65.3", "63.2", "69.8", "78.7"]
    assert _row(text, "tune vgg", "paper")[-1] == "81.4"
    assert _row(text, "scratch squeeze", "paper")[-2:] == ["69.2", "79.0"]
    assert _row(text, "scratch squeeze", "this run (not evaluated)")[2:] == ["—"] * 8
    assert _row(text, "official:alex", "released v0.1 weights, our evaluate")[2] == "50.0"
    assert _row(text, "human", "paper")[-1] == "82.6"
    jnd = text.split("## JND mAP (%)")[1]
    assert _row(jnd, "lin alex", "this run")[2:] == ["76.0", "77.0", "76.5"]
    assert "| paper |" not in jnd and "the paper prints no JND mAP values" in jnd  # none invented
    # rows are grouped by backbone: alex's run, its paper row, the released alex weights, then vgg
    order = [line.split("|")[1].strip() for line in text.split("## JND")[0].splitlines() if line.startswith("| ")]
    assert order[1:5] == ["lin alex", "lin alex", "official:alex", "tune vgg"]
    assert "- a note" in text


def test_table_uses_every_published_number_and_only_those():
    """Every paper row holds exactly Table 5's printed values for its configuration, none other."""
    configs = [rp.resolve_config(c) for c in rp.PAPER_CONFIGS]
    text = rp.build_table(configs, {}, {})
    for name in (*rp.PAPER_CONFIGS, "human"):
        label = "human" if name == "human" else name.replace("_", " ")
        printed = paper.table5()[name]
        columns = ["traditional", "cnn", "superres", "deblur", "colorization", "frameinterp", "all", "dist_all"]
        assert _row(text, label, "paper")[2:] == [f"{printed[c]:.1f}" for c in columns]
    assert text.count("| paper |") == len(rp.PAPER_CONFIGS) + 1


def test_shipped_table5_is_the_reference_file_and_its_means_hold():
    """Table 5 ships whole (23 rows, paper order) and its aggregates are the plain means its header says."""
    assert paper.row_names()[:3] == ["human", "l2", "ssim"] and len(paper.row_names()) == 23
    for row, v in paper.table5().items():
        subsets = [v[c] for c in ("traditional", "cnn", "superres", "deblur", "colorization", "frameinterp")]
        # each printed value is rounded to 0.1: a mean of rounded values is off by at most 0.05, plus its own 0.05
        assert abs(v["dist_all"] - (v["traditional"] + v["cnn"]) / 2) <= 0.1, row
        assert abs(v["all"] - sum(subsets) / 6) <= 0.1, row
    assert paper.paper_trad_cnn("lin_alex") == 78.7 and paper.paper_2afc("lin_alex", "color") == 65.3
    assert paper.paper_2afc("nonesuch", "cnn") is None


def test_load_scores_reads_evaluates_json(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"groups": [], "scores": {"official:alex": {"g": 0.5}, "last.ckpt": {"g": 0.7}}}))
    assert rp.load_scores(path, "official:alex") == {"g": 0.5}
    assert rp.load_scores(path) == {"g": 0.5}
    assert rp.load_scores(tmp_path / "missing.json") is None


def test_table_is_written_atomically(tmp_path):
    target = rp.write_table(tmp_path, "first")
    rp.write_table(tmp_path, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paper_table.md"]


# --- options and commands (fast) ------------------------------------------------------------------
def test_extra_arguments_after_extra_go_to_fit():
    args = rp.parse_args(["--configs", "lin_alex", "--gpus", "2", "--extra", "--trainer.max_epochs", "1", "--out", "x"])
    assert args.configs == ["lin_alex"] and args.gpus == 2
    assert args.extra == ["--trainer.max_epochs", "1", "--out", "x"]
    assert rp.parse_args([]).configs == list(rp.PAPER_CONFIGS)
    assert rp.parse_args(["--official"]).official == []


def test_unknown_configuration_is_refused():
    with pytest.raises(rp.ReproduceError, match="no such configuration"):
        rp.resolve_config("lin_resnet")


def test_fit_command_resume_and_gpus(tmp_path):
    cfg = rp.resolve_config("tune_vgg")
    cmd = [str(c) for c in rp.fit_command(cfg, tmp_path / "b.h5", tmp_path / "runs", 4, ["--x", "1"], resume=True)]
    assert cmd[cmd.index("--run_name") + 1] == "repro-tune_vgg"
    assert cmd[-2:] == ["--ckpt_path", "last"] and "--x" in cmd
    assert str(ROOT / "configs" / "ddp.yaml") in cmd and cmd[cmd.index("--trainer.devices") + 1] == "4"
    assert cmd[cmd.index("--data.path") + 1] == str(tmp_path / "b.h5")
    fresh = [str(c) for c in rp.fit_command(cfg, tmp_path / "b.h5", tmp_path / "runs", None, [], resume=False)]
    assert "--ckpt_path" not in fresh and str(ROOT / "configs" / "ddp.yaml") not in fresh


class FakeRunner:
    """Records the commands instead of running them; a fit leaves a last.ckpt like the real one."""

    def __init__(self, tmp_path: Path) -> None:
        self.commands: list[list[str]] = []
        self.said: list[str] = []
        self.logs = tmp_path / "logs"

    def say(self, message: str) -> None:
        self.said.append(message)

    def log_path(self, step: str) -> Path:
        return self.logs / f"{step}.log"

    def run(self, step, cmd, allow=()):
        cmd = [str(c) for c in cmd]
        self.commands.append(cmd)
        run = Path(cmd[cmd.index("--runs_dir") + 1]) / cmd[cmd.index("--run_name") + 1]
        run.mkdir(parents=True, exist_ok=True)
        (run / "last.ckpt").write_text("ckpt")
        return 0, ""


def test_fit_step_trains_skips_resumes_and_restarts(tmp_path):
    runner, cfg, runs = FakeRunner(tmp_path), rp.resolve_config("lin_alex"), tmp_path / "runs"
    run = rp.fit_step(runner, cfg, tmp_path / "b.h5", runs, None, TINY)
    assert run == runs / "repro-lin_alex" and "--ckpt_path" not in runner.commands[-1]
    marker = json.loads((run / rp.MARKER).read_text())
    assert marker["extra"] == TINY and marker["config"] == "lin_alex"

    rp.fit_step(runner, cfg, tmp_path / "b.h5", runs, None, TINY)  # finished: skipped
    assert len(runner.commands) == 1 and "skipped" in runner.said[-1]

    (run / rp.MARKER).unlink()  # interrupted after an epoch: last.ckpt, no marker -> resumed
    rp.fit_step(runner, cfg, tmp_path / "b.h5", runs, None, TINY)
    assert runner.commands[-1][-2:] == ["--ckpt_path", "last"] and (run / rp.MARKER).is_file()

    (run / rp.MARKER).unlink()  # died in its first epoch: a folder without last.ckpt -> moved aside
    (run / "last.ckpt").unlink()
    (run / "metrics.csv").write_text("kept")
    rp.fit_step(runner, cfg, tmp_path / "b.h5", runs, None, TINY)
    aside = [p for p in runs.iterdir() if p.name.startswith("repro-lin_alex.failed-")]
    assert len(aside) == 1 and (aside[0] / "metrics.csv").read_text() == "kept"
    assert "--ckpt_path" not in runner.commands[-1] and (run / rp.MARKER).is_file()


def test_finished_run_with_other_fit_options_is_refused(tmp_path):
    runner, cfg, runs = FakeRunner(tmp_path), rp.resolve_config("lin_alex"), tmp_path / "runs"
    rp.fit_step(runner, cfg, tmp_path / "b.h5", runs, None, TINY)
    with pytest.raises(rp.ReproduceError, match="finished with other fit options"):
        rp.fit_step(runner, cfg, tmp_path / "b.h5", runs, None, [])
    assert len(runner.commands) == 1


def test_failed_step_is_one_line_naming_step_command_and_log(tmp_path):
    runner = rp.Runner(tmp_path, echo=False)
    code = "import sys; print('working'); print('error: the disk is on fire', file=sys.stderr); sys.exit(2)"
    with pytest.raises(rp.ReproduceError) as failed:
        runner.run("pack", [sys.executable, "-c", code])
    message = str(failed.value)
    assert "\n" not in message and message.startswith("step pack failed (exit status 2: error: the disk is on fire)")
    assert "command: " in message and str(tmp_path / "logs" / "pack.log") in message
    assert "working" in (tmp_path / "logs" / "pack.log").read_text()


def test_main_prints_the_error_line_and_exits_2(tmp_path, capsys):
    assert rp.main(["--out", str(tmp_path), "--configs", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --configs nope: no such configuration")


def test_fit_options_the_script_owns_are_refused(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "o"), "--runs-dir", str(tmp_path / "r"), "--extra", "--run_name", "x"]
    assert rp.main(argv) == 2
    assert "--extra --run_name: the script sets" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--out", "--runs-dir"])
def test_an_output_folder_that_is_a_file_is_one_line(tmp_path, capsys, option):
    (tmp_path / "f").write_text("x")
    argv = ["--out", str(tmp_path / "o"), "--runs-dir", str(tmp_path / "r"), option, str(tmp_path / "f")]
    assert rp.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {option} {tmp_path / 'f'} is a file; give a folder" in err


def test_the_data_file_is_the_scripts_to_set(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "o"), "--runs-dir", str(tmp_path / "r"), "--extra", "--data.path=other.h5"]
    assert rp.main(argv) == 2
    assert "--extra --data.path=other.h5: the script sets the data file (--h5)" in capsys.readouterr().err


def test_a_packed_file_without_jnd_groups_is_packed_again(tmp_path):
    """After `download --parts train val`, bapps.h5 has no JND groups: every fit's validation would fail."""
    from conftest import make_bapps

    from lpips_lightning.pack.pack import pack

    make_bapps(tmp_path / "b", n=2, jnd=False)
    assert not rp.packed_ok(pack(tmp_path / "b", tmp_path / "2afc_only.h5", size=8, workers=1, progress=False))
    make_bapps(tmp_path / "c", n=2)
    assert rp.packed_ok(pack(tmp_path / "c", tmp_path / "all.h5", size=8, workers=1, progress=False))


def test_a_second_run_on_the_same_folders_is_refused(tmp_path, capsys):
    held = rp._lock(tmp_path / "runs", "--runs-dir")
    try:
        argv = ["--out", str(tmp_path / "o"), "--runs-dir", str(tmp_path / "runs"), "--configs", "lin_alex"]
        assert rp.main(argv) == 2
        assert "another scripts/reproduce.py is running" in capsys.readouterr().err
    finally:
        held.close()


# --- end to end (slow) ----------------------------------------------------------------------------
def _script(args: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600, **kw
    )


def _env() -> dict:
    return {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def _headers(log: Path) -> list[str]:
    """The command lines the script logged for one step (one per time it ran)."""
    return [line for line in log.read_text().splitlines() if line.startswith("=== ") and "lpips_lightning" in line]


@pytest.mark.slow
def test_reproduce_end_to_end_then_skips_then_resumes(tmp_path, imagenet_cache):
    build_bapps_archives(tmp_path / "mirror")
    out, runs, data = tmp_path / "results", tmp_path / "runs", tmp_path / "data"
    args = [
        "--out", str(out), "--data-dir", str(data), "--runs-dir", str(runs),
        "--configs", "lin_alex", "scratch_squeeze", "--official", "squeeze", "--gpus", "0",
        "--extra", *TINY,
    ]  # fmt: skip
    with serve(tmp_path / "mirror") as mirror:
        first = _script(["--base-url", mirror.url, *args], _env())
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        table = (out / "paper_table.md").read_text()
        for label in ("lin alex", "scratch squeeze"):
            assert all(c != "—" for c in _row(table, label, "this run")[2:])
        assert _row(table, "lin alex", "paper")[-1] == "78.7"
        assert _row(table, "human", "paper")[-1] == "82.6"
        assert _row(table, "official:squeeze", "released v0.1 weights, our evaluate")[2] != "—"
        scores = json.loads((out / "eval" / "lin_alex" / "results.json").read_text())["scores"]
        assert f"{100 * scores['last.ckpt']['2afc/val/cnn']:.1f}" == _row(table, "lin alex", "this run")[3]
        for step in ("download", "pack", "fit-lin_alex", "fit-scratch_squeeze", "evaluate-official"):
            assert (out / "logs" / f"{step}.log").stat().st_size > 0
        assert not [p for p in data.iterdir() if p.is_dir()]  # packed from the archives: nothing unpacked
        markers = {c: runs / f"repro-{c}" / rp.MARKER for c in ("lin_alex", "scratch_squeeze")}
        stamps = {c: m.stat().st_mtime_ns for c, m in markers.items()}
        requests = len(mirror.log)

        # again: every step is done, nothing runs (no request, no fit, no evaluate)
        again = _script(["--base-url", mirror.url, *args], _env())
        assert again.returncode == 0, again.stderr[-3000:]
        assert len(mirror.log) == requests
        assert {c: m.stat().st_mtime_ns for c, m in markers.items()} == stamps
        for step in ("fit-lin_alex", "fit-scratch_squeeze", "evaluate-lin_alex", "evaluate-official"):
            assert len(_headers(out / "logs" / f"{step}.log")) == 1
        assert again.stdout.count("skipped") == 6  # download+pack, official, 2 fits, 2 evaluations: a line each
        assert (out / "paper_table.md").read_text() == table

        # interrupted after lin_alex's last.ckpt but before the script saw its fit end: resumed
        markers["lin_alex"].unlink()
        resumed = _script(["--base-url", mirror.url, *args], _env())
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        fits = _headers(out / "logs" / "fit-lin_alex.log")
        assert len(fits) == 2 and fits[-1].endswith("--ckpt_path last") and "--run_name repro-lin_alex" in fits[-1]
        assert markers["lin_alex"].is_file()
        assert markers["scratch_squeeze"].stat().st_mtime_ns == stamps["scratch_squeeze"]
        assert len(_headers(out / "logs" / "fit-scratch_squeeze.log")) == 1
        assert (out / "paper_table.md").is_file()


@pytest.mark.slow
def test_ctrl_c_stops_the_step_cleanly(tmp_path):
    build_bapps_archives(tmp_path / "mirror")
    out, data = tmp_path / "results", tmp_path / "data"
    with serve(tmp_path / "mirror", stall_after={"twoafc_train.tar.gz": (4096, 30)}) as mirror:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--base-url", mirror.url, "--out", str(out), "--data-dir", str(data)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=default_sigint,
        )
        part = data / ".twoafc_train.tar.gz.part"
        deadline = time.monotonic() + 60
        while not (part.is_file() and part.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert part.is_file(), "the download never started"
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert "interrupted during step download" in stderr and "Traceback" not in stderr
    assert part.stat().st_size == 4096  # the partial archive is kept for the next run
    assert not (data / "bapps.h5").exists() and "=== stopped by SIGINT" in (out / "logs" / "download.log").read_text()
