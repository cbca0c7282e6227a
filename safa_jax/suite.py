"""Runs a suite of trainings one after another, resumably: `python -m safa_jax.suite --suite=NAME --root=DIR`.

Each run trains in `ROOT/<run name>` through `python -m safa_jax.main` (a child process, so every run gets
fresh process settings); a finished run is skipped and a stopped one resumes from its checkpoint, so the
same command, started again after any interruption, finishes the table. Also:

  --list                         what would run, what is done, and an ETA from the measured images/s
  --report [--output=FILE.md]    ROOT/results.json and a markdown table (default ROOT/results.md)
  --export=results/NAME          copies each finished run's small files (no checkpoints) there

Suites are files in configs/suites/ (safa_jax/suite_spec.py says what they hold).
"""

import datetime
import json
import pathlib
import signal
import subprocess
import sys

from absl import app, flags

from safa_jax import suite_report
from safa_jax.suite_spec import (REPOSITORY, RUN_SPEC_FILE, Run, available_suites, check_data, load_suite,
                                 select_runs)

_SUITE = flags.DEFINE_string("suite", None, f"Suite name (a file in configs/suites/): {', '.join(available_suites())}.")
_ROOT = flags.DEFINE_string("root", None, "Folder holding one run folder per run (created if missing).")
_DATA = flags.DEFINE_string("data", "", "Data folder the suite trains on (PATH/cifar10), where the suite needs one.")
_ONLY = flags.DEFINE_string("only", "", "Comma-separated run names to run, list or report (default: all).")
_LIST = flags.DEFINE_bool("list", False, "List the runs, their state and the ETA; train nothing.")
_REPORT = flags.DEFINE_bool("report", False, "Write results.json and results.md from the run folders; train nothing.")
_OUTPUT = flags.DEFINE_string("output", "", "With --report: the markdown file (default ROOT/results.md).")
_EXPORT = flags.DEFINE_string("export", "", "Copy each finished run's small files into this folder; train nothing.")


def run_command(run: Run, root: pathlib.Path, posthoc: tuple[str, float] | None = None) -> list[str]:
    """The run's `python -m safa_jax.main` command: training, or with `posthoc` its post-hoc evaluation."""
    command = [sys.executable, "-m", "safa_jax.main", f"--workdir={root / run.name}", *run.flags(root)]
    if posthoc is not None:
        command += ["--mode=eval", f"--config.eval.posthoc={posthoc[0]}", f"--config.eval.tau={posthoc[1]}"]
    return command


def train_run(run: Run, root: pathlib.Path, posthoc: tuple[str, float] | None = None) -> int:
    """Trains one run to its end (or resumes it), or with `posthoc` evaluates it so; its output goes to the
    console and to ROOT/<run>/train.log.

    SIGTERM and SIGINT are passed on to the child process, which stops as it would alone.
    """
    workdir = root / run.name
    workdir.mkdir(parents=True, exist_ok=True)
    command = run_command(run, root, posthoc)
    with open(workdir / "train.log", "a") as log:
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        log.write(f"\n# {stamp}: {' '.join(command)}\n")
        child = subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, bufsize=1)
        forward = lambda signum, frame: child.send_signal(signum)  # noqa: E731
        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for line in child.stdout:
                sys.stdout.write(f"[{run.name}] {line}")
                sys.stdout.flush()
                log.write(line)
                log.flush()
            return child.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def check_same_run(run: Run, workdir: pathlib.Path) -> None:
    """Refuses a run folder another run started (an edited suite, or two suites naming different runs alike
    under one root), before anything is skipped as finished or resumed."""
    record = workdir / RUN_SPEC_FILE
    if not record.exists():
        return
    saved, wanted = json.loads(record.read_text()), run.spec()
    if saved == wanted:
        return
    there, here = ({"config": spec["config"], **spec["overrides"]} for spec in (saved, wanted))
    diffs = [f"{key}: {_shown(there, key)} there, {_shown(here, key)} here"
             for key in ("config", *sorted({*there, *here} - {"config"})) if there.get(key) != here.get(key)]
    raise ValueError(f"{workdir} holds another run than the suite's {run.name!r} ({'; '.join(diffs)}); "
                     f"give another --root, or remove {record} to take that run as this one")


def _shown(values: dict, key: str) -> str:
    return repr(values[key]) if key in values else "(unset)"


def record_run(run: Run, workdir: pathlib.Path) -> None:
    """Writes the run's spec into its folder once, as the run starts (a folder from before the record existed
    is adopted as it is)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / RUN_SPEC_FILE).exists():
        (workdir / RUN_SPEC_FILE).write_text(json.dumps(run.spec(), indent=1) + "\n")


def run_suite(runs: list[Run], root: pathlib.Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for run in runs:  # every folder checked before the first run trains
        check_same_run(run, root / run.name)
    for index, run in enumerate(runs, 1):
        record_run(run, root / run.name)
        status = suite_report.run_status(root / run.name)
        if status.done:
            print(f"suite: {index}/{len(runs)} {run.name}: finished, skipped", flush=True)
        else:
            print(f"suite: {index}/{len(runs)} {run.name}: {'resuming' if status.epochs_done else 'starting'} "
                  f"({status.epochs_done} epochs done) in {root / run.name}", flush=True)
            _check_exit(train_run(run, root), run, root)
        for posthoc in suite_report.missing_posthoc(run, root / run.name):
            print(f"suite: {index}/{len(runs)} {run.name}: post-hoc {posthoc[0]} at tau={posthoc[1]:g}", flush=True)
            _check_exit(train_run(run, root, posthoc), run, root)
    print(f"suite: all {len(runs)} runs finished in {root}; "
          f"`python -m safa_jax.suite --suite={_SUITE.value} --root={root} --report` writes the table", flush=True)


def _check_exit(code: int, run: Run, root: pathlib.Path) -> None:
    if code != 0:
        sys.exit(f"suite: {run.name} stopped with exit code {code}; see {root / run.name / 'train.log'}. "
                 "Start the same command again to resume.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        if not _SUITE.value:
            raise ValueError(f"--suite is required; allowed: {', '.join(available_suites())}")
        if not _ROOT.value:
            raise ValueError("--root is required: the folder of the suite's run folders (e.g. runs/table4)")
        root = pathlib.Path(_ROOT.value)
        if root.exists() and not root.is_dir():
            raise ValueError(f"--root={root} is a file, not a folder")
        runs = select_runs(load_suite(_SUITE.value, _DATA.value), _ONLY.value)
        if _LIST.value:
            print(suite_report.listing(runs, root))
        elif _REPORT.value:
            output = pathlib.Path(_OUTPUT.value) if _OUTPUT.value else root / "results.md"
            suite_report.write_report(_SUITE.value, runs, root, output)
            print(f"wrote {root / suite_report.RESULTS_JSON} and {output}")
        elif _EXPORT.value:
            copied = suite_report.export(runs, root, pathlib.Path(_EXPORT.value))
            print(f"exported {len(copied)} finished runs to {_EXPORT.value}: {', '.join(copied) or 'none'}")
        else:
            check_data(runs)
            run_suite(runs, root)
    except ValueError as error:
        sys.exit(f"safa_jax.suite: error: {error}")


if __name__ == "__main__":
    app.run(main)
