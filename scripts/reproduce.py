#!/usr/bin/env python3
"""Reproduce the paper from nothing: BAPPS download, pack, nine trainings, evaluation, the table.

    python scripts/reproduce.py [--out results] [--data-dir data/bapps] [--h5 FILE] [--base-url URL]
        [--runs-dir checkpoints] [--configs lin_alex tune_vgg ...] [--gpus N]
        [--official alex vgg squeeze] [--checkpoint last|best] [--extra FIT_ARG ...]

``--extra`` comes last: everything after it is passed to every ``fit`` (e.g. a short recipe,
``--extra --trainer.max_epochs 1 --trainer.limit_train_batches 2``, or
``--model.backbone_weights ...``; not ``--run_name``, ``--runs_dir`` or ``--ckpt_path``, which
the script sets). Run the same command again after a failure or Ctrl-C: every step that is
done is skipped, and the step that was cut short resumes. Two runs at once on the same
``--out`` or ``--runs-dir`` are refused (``.reproduce.lock`` in each).

1. download   ``lpips-lightning download bapps DATA_DIR --base-url URL``: the command itself
              skips complete archives and resumes partial ones. Skipped when H5 is ready.
2. pack       ``lpips-lightning pack DATA_DIR H5`` (H5: ``DATA_DIR/bapps.h5`` unless ``--h5``),
              straight from the archives: nothing is unpacked (`pack` streams them).
              Skipped when H5 exists and opens as a judgments file with 2AFC train and val groups.
3. released   ``lpips-lightning evaluate official:alex official:vgg official:squeeze`` into
              ``OUT/eval/official/`` (``--official`` picks the backbones; none: skipped).
4. for each configuration, in the order given (default: the paper's nine, lin first):
   fit        ``lpips-lightning fit --config configs/C.yaml --data datamodules/bapps.yaml
              --data.path H5 --runs_dir RUNS --run_name repro-C [EXTRA]``. The run folder
              ``RUNS/repro-C`` then holds ``reproduce-finished.json``, written when fit exits 0
              (with the options it ran with): such a run is skipped, and refused if EXTRA
              changed since. A folder with ``last.ckpt`` and no marker is resumed
              (``--ckpt_path last --run_name repro-C``). A folder without ``last.ckpt`` (the
              run died in its first epoch) is moved aside to ``repro-C.failed-<time>`` (its
              logs kept) and the configuration is trained anew under ``repro-C``.
   evaluate   the run's ``last.ckpt`` (``--checkpoint best``: its best checkpoint by the
              validation 2AFC; BAPPS val is the paper's test set, so that choice flatters it)
              into ``OUT/eval/C/``; skipped when that folder's results were made from the same
              checkpoint and data file.
   table      ``OUT/paper_table.md`` rewritten (temporary name, then rename), from the
              ``results.json`` files, next to the paper's numbers (Table 5, shipped as ``lpips_lightning.paper``).

Every step's output goes to the terminal and is appended to ``OUT/logs/<step>.log``. A failed
step ends the script with one line (``error: step ... failed ...``) naming the step, its
command and its log, and exit status 2. Ctrl-C (or SIGTERM) stops the running step, keeps
what is done, and exits with status 130 (143).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lpips_lightning import paper

REPO = Path(__file__).resolve().parents[1]

VARIANTS = ("lin", "tune", "scratch")
BACKBONES = ("alex", "vgg", "squeeze")
PAPER_CONFIGS = tuple(f"{v}_{b}" for v in VARIANTS for b in BACKBONES)
SUBSETS_JND = ("traditional", "cnn")  # the BAPPS JND validation subsets
DEFAULT_BASE_URL = "https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/"
MARKER = "reproduce-finished.json"
EVAL_SOURCE = "reproduce-source.json"
CLI = (sys.executable, "-m", "lpips_lightning.cli")


# --- errors and signals ---------------------------------------------------------------------------
class ReproduceError(Exception):
    """A step that failed, or input that cannot work; printed as one line, exit status 2."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM; `status` is the exit status (130 or 143)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Terminated(BaseException):
    """Raised in the main thread by the SIGTERM handler (like KeyboardInterrupt for SIGINT)."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


# --- running one step -----------------------------------------------------------------------------
_ERROR_LINE = re.compile(r"^(?:error:|\w*Error:)", re.IGNORECASE)


def _last_error(tail: bytes) -> str:
    """The child's own error line, if it printed one (else its last non-empty line)."""
    text = tail.decode("utf-8", "replace").replace("\r", "\n")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR_LINE.match(line)]
    found = errors[-1] if errors else (lines[-1] if lines else "")
    return found[:300]


class Runner:
    """Runs the commands of the steps: output to the terminal and to ``OUT/logs/<step>.log``."""

    def __init__(self, out: Path, echo: bool = True) -> None:
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def say(self, message: str) -> None:
        """A line of the script's own (terminal and ``logs/reproduce.log``)."""
        line = f"[reproduce] {message}"
        print(line, flush=True)
        with open(self.logs / "reproduce.log", "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    def log_path(self, step: str) -> Path:
        return self.logs / f"{step}.log"

    def run(self, step: str, cmd: Sequence[str], allow: tuple[int, ...] = ()) -> tuple[int, str]:
        """Run `cmd` for `step`; return (exit status, its error line) when 0 or in `allow`, else raise."""
        cmd = [str(c) for c in cmd]
        log = self.log_path(step)
        tail = b""
        with open(log, "ab", buffering=0) as fh:  # unbuffered: `tail -f` on the log keeps up
            fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
            fh.flush()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env)
            try:
                while True:
                    data = os.read(proc.stdout.fileno(), 1 << 16)
                    if not data:
                        break
                    fh.write(data)
                    if self.echo:
                        sys.stdout.buffer.write(data)
                        sys.stdout.flush()
                    tail = (tail + data)[-(1 << 16) :]
                status = proc.wait()
            except (KeyboardInterrupt, _Terminated) as stop:
                signum = signal.SIGTERM if isinstance(stop, _Terminated) else signal.SIGINT
                self._stop(proc, signum)
                fh.write(f"\n=== stopped by {signal.Signals(signum).name}\n".encode())
                raise Interrupted(
                    f"interrupted during step {step} (log: {log}); run the same command again to resume",
                    128 + signum,
                ) from None
            finally:
                proc.stdout.close()
        if status != 0 and status not in allow:
            reason = _last_error(tail)
            raise ReproduceError(
                f"step {step} failed (exit status {status}{': ' + reason if reason else ''}); "
                f"command: {shlex.join(cmd)}; log: {log}"
            )
        return status, _last_error(tail)

    @staticmethod
    def _stop(proc: subprocess.Popen, signum: int) -> None:
        """Stop the child: wait, then ask again, then insist.

        After Ctrl-C the child gets time to stop on its own first (a terminal's Ctrl-C reached it
        too); SIGTERM, sent to this process only, is passed on at once.
        """
        first = ((None, 10),) if signum == signal.SIGINT else ()
        for sig, wait in (*first, (signum, 60), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                return
            if sig is not None:
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue
            except (KeyboardInterrupt, _Terminated):  # asked again: go straight on to the next signal
                continue


# --- configurations -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """One configuration to train: its name (``lin_alex``), YAML file, variant and backbone."""

    name: str
    path: Path
    variant: str
    backbone: str


def resolve_config(spec: str) -> Config:
    """``lin_alex`` (a file in ``configs/``) or a path to a YAML config."""
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml"):
        path = REPO / "configs" / f"{spec}.yaml"
    if not path.is_file():
        known = ", ".join(PAPER_CONFIGS)
        raise ReproduceError(f"--configs {spec}: no such configuration ({path} missing); known: {known}")
    import yaml

    try:
        model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
    except yaml.YAMLError as err:
        raise ReproduceError(f"--configs {spec}: {path} is not valid YAML ({err})") from None
    return Config(path.stem, path.resolve(), str(model.get("variant", "?")), str(model.get("backbone", "?")))


def _atomic_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# --- steps 1-2: data -----------------------------------------------------------------------------
def packed_ok(h5: Path) -> bool:
    """Whether `h5` opens as a judgments file holding 2AFC train and val groups and JND val groups."""
    if not h5.is_file():
        return False
    from lpips_lightning.data import judgments
    from lpips_lightning.errors import LPIPSLightningError

    try:
        with judgments.open_file(h5) as f:
            names = list(judgments.groups(f))
    except (LPIPSLightningError, OSError):
        return False
    return all(any(n.startswith(prefix) for n in names) for prefix in ("2afc/train/", "2afc/val/", "jnd/val/"))


def pack_step(runner: Runner, data_dir: Path, h5: Path) -> None:
    overwrite = ["--overwrite"] if h5.exists() else []
    if overwrite:
        runner.say(f"pack: {h5} is not a complete judgments file; packing it again")
    runner.run("pack", [*CLI, "pack", data_dir, h5, "--quiet", *overwrite])


# --- step 3-4: training and evaluation ------------------------------------------------------------
def fit_command(cfg: Config, h5: Path, runs_dir: Path, gpus: int | None, extra: Sequence[str], resume: bool) -> list:
    cmd = [*CLI, "fit", "--config", cfg.path]
    if gpus is not None and gpus > 1:
        cmd += ["--config", REPO / "configs" / "ddp.yaml", "--trainer.devices", str(gpus)]
    elif gpus == 1:
        cmd += ["--trainer.devices", "1"]
    elif gpus == 0:
        cmd += ["--trainer.accelerator", "cpu"]
    cmd += ["--data", REPO / "datamodules" / "bapps.yaml", "--data.path", h5]
    cmd += ["--runs_dir", runs_dir, "--run_name", f"repro-{cfg.name}", *extra]
    if resume:
        cmd += ["--ckpt_path", "last"]
    return cmd


def fit_step(runner: Runner, cfg: Config, h5: Path, runs_dir: Path, gpus: int | None, extra: list[str]) -> Path:
    """Train `cfg` (or resume it, or skip it when finished); return its run folder."""
    run = runs_dir / f"repro-{cfg.name}"
    marker = _read_json(run / MARKER)
    if marker is not None and (run / "last.ckpt").is_file():
        if marker.get("extra") != extra:
            raise ReproduceError(
                f"step fit-{cfg.name}: {run} finished with other fit options "
                f"({shlex.join(marker.get('extra') or [])!r}, now {shlex.join(extra)!r}); "
                f"pass the same --extra, another --runs-dir, or move {run} away"
            )
        runner.say(f"fit {cfg.name}: finished already ({run}), skipped")
        return run
    resume = (run / "last.ckpt").is_file()
    if run.exists() and not resume:
        aside, n = run.with_name(f"{run.name}.failed-{time.strftime('%Y%m%d-%H%M%S')}"), 1
        while aside.exists():
            n += 1
            aside = aside.with_name(f"{run.name}.failed-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        os.replace(run, aside)
        runner.say(f"fit {cfg.name}: {run} has no last.ckpt (the run stopped in its first epoch); moved to {aside}")
    runner.say(f"fit {cfg.name}: resuming {run} from last.ckpt" if resume else f"fit {cfg.name}: training into {run}")
    cmd = fit_command(cfg, h5, runs_dir, gpus, extra, resume)
    runner.run(f"fit-{cfg.name}", cmd)
    if not (run / "last.ckpt").is_file():
        raise ReproduceError(
            f"step fit-{cfg.name}: fit exited 0 but left no {run / 'last.ckpt'} (checkpointing off in --extra?); "
            f"log: {runner.log_path('fit-' + cfg.name)}"
        )
    _atomic_json(
        run / MARKER,
        {
            "config": cfg.name,
            "config_file": str(cfg.path),
            "extra": extra,
            "gpus": gpus,
            "data": str(h5),
            "command": [str(c) for c in cmd],
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    return run


def checkpoint_of(run: Path, which: str) -> Path:
    """``last.ckpt``, or with ``best`` the newest ``best-*.ckpt`` (``last.ckpt`` when there is none)."""
    if which == "best":
        best = sorted(run.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
        if best:
            return best[-1]
    return run / "last.ckpt"


def _identity(path: Path) -> list:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def evaluate_step(runner: Runner, name: str, models: list[str], files: list[Path], h5: Path, out: Path) -> Path:
    """``lpips-lightning evaluate MODELS --data H5 --out OUT/eval/NAME``, unless done from the same inputs."""
    folder = out / "eval" / name
    source = {"models": models, "inputs": [_identity(p) for p in (*files, h5)]}
    if (folder / "results.json").is_file() and _read_json(folder / EVAL_SOURCE) == source:
        runner.say(f"evaluate {name}: done already ({folder / 'results.json'}), skipped")
        return folder / "results.json"
    runner.say(f"evaluate {name}: {' '.join(models)}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / EVAL_SOURCE).unlink(missing_ok=True)
    runner.run(f"evaluate-{name}", [*CLI, "evaluate", *models, "--data", h5, "--out", folder, "--overwrite", "--quiet"])
    _atomic_json(folder / EVAL_SOURCE, source)
    return folder / "results.json"


# --- step 5: the table ----------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _mean(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def _scores_pct(scores: dict[str, float] | None, kind: str, subsets: Sequence[str]) -> list[float | None]:
    """Our scores (fractions, keyed by group) as percentages in `subsets` order; None where missing."""
    scores = scores or {}
    return [100 * scores[f"{kind}/val/{s}"] if f"{kind}/val/{s}" in scores else None for s in subsets]


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _md_table(head: Sequence[str], rows: Sequence[str]) -> list[str]:
    """A Markdown table's lines: the header, its rule, the (already formatted) rows."""
    return [_md_row(head), "|" + "---|" * len(head), *rows]


def _afc_row(label: str, source: str, values: list[float | None], means: tuple | None = None) -> str:
    """A 2AFC row; `means`: (mean of six, trad+CNN) as published, else computed from `values`."""
    mean, trad_cnn = means or (_mean(values), _mean(values[:2]))
    return _md_row([label, source, *map(_pct, values), _pct(mean), _pct(trad_cnn)])


def _paper_row(label: str, row: str) -> str:
    values = [paper.paper_2afc(row, s) for s in paper.SUBSETS_2AFC]
    return _afc_row(label, "paper", values, (paper.paper_mean(row), paper.paper_trad_cnn(row)))


def _jnd_row(label: str, source: str, values: list[float | None]) -> str:
    return _md_row([label, source, *map(_pct, values), _pct(_mean(values))])


def build_table(
    configs: Sequence[Config],
    results: dict[str, dict[str, float] | None],
    official: dict[str, dict[str, float]],
    notes: Sequence[str] = (),
) -> str:
    """The markdown of ``paper_table.md``.

    `results`: configuration name -> our scores ({group: fraction}, as evaluate's results.json
    holds them), None when not evaluated. `official`: backbone -> scores of ``official:NET``.
    Rows are grouped by backbone: each configuration's run, then the paper's numbers, then the
    released weights of that backbone; "—" marks a number we do not have.
    """
    afc, jnd = paper.SUBSETS_2AFC, SUBSETS_JND
    by_backbone: dict[str, list[Config]] = {}
    for cfg in configs:
        by_backbone.setdefault(cfg.backbone, []).append(cfg)
    order = [b for b in BACKBONES if b in by_backbone or b in official]
    order += [b for b in by_backbone if b not in order]

    afc_rows, jnd_rows = [], []
    for backbone in order:
        for cfg in by_backbone.get(backbone, []):
            label = f"{cfg.variant} {cfg.backbone}" if cfg.name in PAPER_CONFIGS else cfg.name
            ours = results.get(cfg.name)
            source = "this run" if ours is not None else "this run (not evaluated)"
            afc_rows.append(_afc_row(label, source, _scores_pct(ours, "2afc", afc)))
            afc_rows.append(_paper_row(label, cfg.name))
            jnd_rows.append(_jnd_row(label, source, _scores_pct(ours, "jnd", jnd)))
        if backbone in official:
            label, source = f"official:{backbone}", "released v0.1 weights, our evaluate"
            afc_rows.append(_afc_row(label, source, _scores_pct(official[backbone], "2afc", afc)))
            jnd_rows.append(_jnd_row(label, source, _scores_pct(official[backbone], "jnd", jnd)))
    afc_rows.append(_paper_row("human", "human"))

    lines = [
        "# LPIPS on BAPPS: this reproduction next to the paper",
        "",
        'Zhang et al., CVPR 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric". '
        'Scores on the BAPPS validation split (the paper\'s test data), in percent. "—": no number. '
        f"Paper rows: {paper.SOURCE}.",
        "",
        "## 2AFC score (%)",
        "",
        *_md_table(["configuration", "source", *afc, "mean (6)", "trad+CNN"], afc_rows),
        "",
        '"mean (6)": mean over the six subsets; "trad+CNN": mean of traditional and CNN-based '
        "distortions (the paper's \"Dist. All\"); the paper's rows show its own printed means.",
        "",
        "## JND mAP (%)",
        "",
        *_md_table(["configuration", "source", *jnd, "mean"], jnd_rows),
        "",
        f"No paper rows: {paper.NO_JND}.",
        "",
    ]
    if notes:
        lines += ["## How these were made", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def load_scores(path: Path, model: str | None = None) -> dict[str, float] | None:
    """One model's {group: score} from evaluate's results.json (the only model when `model` is None)."""
    data = _read_json(path)
    if data is None or not isinstance(data.get("scores"), dict) or not data["scores"]:
        return None
    scores = data["scores"]
    if model is None:
        return next(iter(scores.values()))
    return scores.get(model)


def write_table(out: Path, text: str) -> Path:
    """``OUT/paper_table.md``, written under a temporary name and renamed."""
    from lpips_lightning.outputs import atomic_output

    target = out / "paper_table.md"
    with atomic_output(target, overwrite=True, what="paper table") as tmp:
        tmp.write_text(text)
    return target


# --- the whole run --------------------------------------------------------------------------------
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    extra: list[str] = []
    if "--extra" in argv:
        i = argv.index("--extra")
        argv, extra = argv[:i], argv[i + 1 :]
    from lpips_lightning.cli.parser import ToolParser

    p = ToolParser(
        prog="scripts/reproduce.py",
        description="Download BAPPS, pack it, train the paper's configurations, evaluate them and the released "
        "weights, and write OUT/paper_table.md. Rerun the same command to resume.",
        epilog="--extra must come last: every argument after it goes to each `lpips-lightning fit`.",
    )
    p.add_argument("--out", default="results", help="table, logs and evaluations (default: results)")
    p.add_argument("--data-dir", default="data/bapps", help="where the archives are downloaded (default: data/bapps)")
    p.add_argument("--h5", default=None, help="the packed judgments file (default: DATA_DIR/bapps.h5)")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL, help="BAPPS mirror: http(s)://, file:// or a folder")
    p.add_argument("--runs-dir", default="checkpoints", help="where the run folders repro-<config> go")
    p.add_argument("--configs", nargs="+", default=list(PAPER_CONFIGS), help="configurations (default: all nine)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs per fit: >1 adds configs/ddp.yaml; 0 forces the CPU")
    p.add_argument(
        "--official",
        nargs="*",
        default=list(BACKBONES),
        choices=BACKBONES,
        help="released weights to score (default: all three; no value: none)",
    )
    p.add_argument("--checkpoint", choices=("last", "best"), default="last", help="which checkpoint to evaluate")
    p.add_argument("--extra", dest="_extra_help", metavar="FIT_ARG", nargs="*", help="arguments for every fit (last)")
    args = p.parse_args(argv)
    if args.gpus is not None and args.gpus < 0:
        p.error(f"--gpus must be 0 or more, got {args.gpus}")
    args.extra = extra
    return args


def _lock(folder: Path, what: str):
    """Hold ``FOLDER/.reproduce.lock`` for this process: two runs must not move or resume each other's runs."""
    import fcntl

    from lpips_lightning.errors import OutputError
    from lpips_lightning.outputs import make_folder

    try:
        make_folder(folder, what)
    except OutputError as err:
        raise ReproduceError(str(err)) from None
    fh = open(folder / ".reproduce.lock", "w")  # noqa: SIM115 (held until the process ends)
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise ReproduceError(
            f"another scripts/reproduce.py is running with {what} {folder}; wait for it to end"
        ) from None
    return fh


def reproduce(args: argparse.Namespace) -> Path:
    out = Path(args.out).resolve()
    data_dir = Path(args.data_dir).resolve()
    h5 = Path(args.h5).resolve() if args.h5 else data_dir / "bapps.h5"
    runs_dir = Path(args.runs_dir).resolve()
    configs = [resolve_config(c) for c in dict.fromkeys(args.configs)]
    owned = [a for a in args.extra if a.split("=", 1)[0] in ("--run_name", "--runs_dir", "--ckpt_path", "--data.path")]
    if owned:
        raise ReproduceError(
            f"--extra {owned[0]}: the script sets the data file (--h5), run name, runs folder and resume itself"
        )
    locks = [_lock(out, "--out"), _lock(runs_dir, "--runs-dir")]  # noqa: F841 (held while running)
    runner = Runner(out)
    runner.say(f"{len(configs)} configuration(s): {' '.join(c.name for c in configs)}; out {out}")

    if packed_ok(h5):
        runner.say(f"download, pack: {h5} is packed already, skipped")
    else:
        runner.say(f"download: BAPPS archives into {data_dir}")
        runner.run("download", [*CLI, "download", "bapps", data_dir, "--base-url", args.base_url])
        runner.say(f"pack: {data_dir} -> {h5}")
        pack_step(runner, data_dir, h5)
        if not packed_ok(h5):
            raise ReproduceError(
                f"step pack: {h5} was written but holds no 2AFC train/val groups; log: {runner.log_path('pack')}"
            )

    official: dict[str, dict[str, float]] = {}
    if args.official:
        models = [f"official:{b}" for b in args.official]
        path = evaluate_step(runner, "official", models, [], h5, out)
        for b in args.official:
            scores = load_scores(path, f"official:{b}")
            if scores is not None:
                official[b] = scores

    results: dict[str, dict[str, float] | None] = {c.name: None for c in configs}
    evaluated: dict[str, Path] = {}

    def table() -> Path:
        notes = [
            f"data: `{h5}`; runs: `{runs_dir}/repro-<configuration>`; evaluations: `{out / 'eval'}`",
            "fit options after the configuration's own: " + (f"`{shlex.join(args.extra)}`" if args.extra else "none"),
            *[f"{name}: `{ckpt}`" for name, ckpt in evaluated.items()],
        ]
        return write_table(out, build_table(configs, results, official, notes))

    for cfg in configs:
        run = fit_step(runner, cfg, h5, runs_dir, args.gpus, args.extra)
        ckpt = checkpoint_of(run, args.checkpoint)
        results[cfg.name] = load_scores(evaluate_step(runner, cfg.name, [str(ckpt)], [ckpt], h5, out))
        evaluated[cfg.name] = ckpt
        table()
    target = table()
    runner.say(f"table: {target}")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        reproduce(args)
        return 0
    except ReproduceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(stop, file=sys.stderr)
        return stop.status
    except (KeyboardInterrupt, _Terminated) as stop:
        status = 143 if isinstance(stop, _Terminated) else 130
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return status
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
