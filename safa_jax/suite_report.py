"""A suite's state and results, read from its run folders: the listing, results.json/results.md, the export.

Everything here reads the small files a run writes (config.json, split.json, epochs.csv, eval_results.json,
provenance.jsonl, training_done.json), so a report regenerates from exported copies without checkpoints.
"""

import dataclasses
import datetime
import json
import pathlib
import shutil
import statistics
from typing import Any

from safa_jax.epoch_log import EPOCHS_FILE, TRAINING_DONE_FILE, read_epochs
from safa_jax.metrics import results_stem
from safa_jax.provenance import PROVENANCE_FILE, read_provenance
from safa_jax.suite_figure import write_suite_figure
from safa_jax.suite_spec import RUN_SPEC_FILE, SEED_SUFFIX, Run

RESULTS_JSON = "results.json"
SMALL_FILES = ("config.json", "split.json", "eval_results.json", "eval_results.txt", EPOCHS_FILE,
               PROVENANCE_FILE, TRAINING_DONE_FILE, RUN_SPEC_FILE)


@dataclasses.dataclass(frozen=True)
class RunStatus:
    done: bool
    epochs_done: int
    num_epochs: int | None  # None before the run has written its config.
    images_per_sec: float | None  # median over its epochs (compiles and evaluations excluded).
    num_train: int | None


def _read_json(path: pathlib.Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def run_status(workdir: pathlib.Path, rows: list[dict] | None = None) -> RunStatus:
    """`rows`: the run's epochs.csv rows where the caller has read them already."""
    config = _read_json(workdir / "config.json")
    split = _read_json(workdir / "split.json")
    rows = read_epochs(workdir) if rows is None else rows
    rates = [r["train_images_per_sec"] for r in rows if r.get("train_images_per_sec")]
    return RunStatus(done=(workdir / TRAINING_DONE_FILE).exists(),
                     epochs_done=int(rows[-1]["epoch"]) + 1 if rows else 0,
                     num_epochs=None if config is None else int(config["num_epochs"]),
                     images_per_sec=statistics.median(rates) if rates else None,
                     num_train=None if split is None else int(split["num_train"]))


def _method(run: Run) -> str:
    return str(run.overrides.get("method", "plain"))


def _hours(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def listing(runs: list[Run], root: pathlib.Path) -> str:
    """One line per run: state, measured images/s, time left. A run not started yet is estimated from a started
    run with the same config file and method (its speed and training-set size)."""
    statuses = {run.name: run_status(root / run.name) for run in runs}
    width = max(len(run.name) for run in runs) + 2
    lines = [f"{'run':<{width}}{'state':<22}{'images/s':>10}{'time left':>14}"]
    total_left = 0.0
    unknown = 0
    for run in runs:
        status = statuses[run.name]
        rate, num_train = status.images_per_sec, status.num_train
        if rate is None or num_train is None:
            like = [statuses[o.name] for o in runs if o.config == run.config and _method(o) == _method(run)
                    and statuses[o.name].images_per_sec and statuses[o.name].num_train]
            rate, num_train = (like[0].images_per_sec, like[0].num_train) if like else (None, None)
        num_epochs = status.num_epochs or int(run.build_config().num_epochs)
        if status.done:
            state, left = "finished", 0.0
        else:
            state = f"{status.epochs_done}/{num_epochs} epochs" if status.epochs_done else "not started"
            left = None if rate is None else (num_epochs - status.epochs_done) * num_train / rate
        if left is None:
            unknown += 1
        else:
            total_left += left
        lines.append(f"{run.name:<{width}}{state:<22}{'' if rate is None else f'{rate:.1f}':>10}"
                     f"{'unknown' if left is None else _hours(left):>14}")
    lines.append(f"total time left {_hours(total_left)}" + (f" + {unknown} runs without an estimate" if unknown else ""))
    return "\n".join(lines)


def _posthoc_files(run: Run) -> list[str]:
    return [f"{results_stem(*posthoc)}{suffix}" for posthoc in run.posthoc for suffix in (".json", ".txt")]


def missing_posthoc(run: Run, workdir: pathlib.Path) -> list[tuple[str, float]]:
    """The run's post-hoc evaluations still to do: none before it has finished training."""
    if not run_status(workdir).done:
        return []
    return [posthoc for posthoc in run.posthoc if not (workdir / f"{results_stem(*posthoc)}.json").exists()]


def _posthoc_results(run: Run, workdir: pathlib.Path) -> list[dict[str, Any]]:
    found = []
    for posthoc, tau in run.posthoc:
        summary = _read_json(workdir / f"{results_stem(posthoc, tau)}.json")
        if summary is not None:
            found.append({"posthoc": posthoc, "tau": tau,
                          **{key: summary[key] for key in ("top1_error", "many_shot_accuracy",
                                                           "medium_shot_accuracy", "few_shot_accuracy")}})
    return found


def run_result(run: Run, workdir: pathlib.Path) -> dict[str, Any]:
    """What the report says of one run (None where not known yet)."""
    rows = read_epochs(workdir)
    status = run_status(workdir, rows)
    final = _read_json(workdir / "eval_results.json") if status.done else None
    evaluated = [r for r in rows if r.get("test_top1_error") is not None]
    best = min(evaluated, key=lambda r: r["test_top1_error"]) if evaluated else None
    commits = [{"commit": p["commit"], "dirty": p["dirty"], "start_step": p["start_step"], "cpu": p["cpu"]}
               for p in read_provenance(workdir)]
    return {
        "name": run.name, "config": run.config, "overrides": run.overrides,
        "paper_top1_error": run.paper, "paper_source": run.paper_source,
        "finished": status.done, "epochs_done": status.epochs_done, "num_epochs": status.num_epochs,
        "top1_error": None if final is None else final["top1_error"],
        "many_shot_accuracy": None if final is None else final["many_shot_accuracy"],
        "medium_shot_accuracy": None if final is None else final["medium_shot_accuracy"],
        "few_shot_accuracy": None if final is None else final["few_shot_accuracy"],
        "best_test_top1_error": None if best is None else best["test_top1_error"],
        "best_epoch": None if best is None else int(best["epoch"]),
        "num_evaluations": len(evaluated),
        "latest_test_top1_error": evaluated[-1]["test_top1_error"] if evaluated else None,
        "train_hours": sum(r["train_seconds"] for r in rows) / 3600.0,
        "eval_hours": sum(r["eval_seconds"] or 0.0 for r in rows) / 3600.0,
        "images_per_sec": status.images_per_sec,
        "trained_by": commits,
        "posthoc": _posthoc_results(run, workdir),
        "compare_to": run.compare_to,
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


NOTES_FILE = "NOTES.md"  # hand-written findings kept beside a suite's exported results, put under the table.


def markdown(suite: str, results: list[dict[str, Any]], root: pathlib.Path, figure: str | None = None) -> str:
    """`figure`: the file name, beside the page, of the suite's figure (suite_figure.py), where one was drawn."""
    lines = [
        f"# Results: suite `{suite}`", "",
        "Trained with `python -m safa_jax.suite --suite=" + suite + " --data=PATH/cifar10 --root=runs/" + suite
        + "` (the same command resumes or skips what is done), exported with `--export=results/" + suite
        + "`, and this section written by `python -m safa_jax.suite --suite=" + suite + " --root=results/" + suite
        + " --report --output=docs/results.md`.", "",
        "Top-1 error % on the full test set. *final*: the model after the last epoch (our primary number). "
        "*best (test-selected)*: the lowest test error over the evaluated epochs, what the LDAM-DRW code prints "
        "as `best_acc1`: it selects on the test set, so it is optimistic; its epoch counts from 0, as epochs.csv and "
        "that code do (the console's `epoch 40/40` is epoch 39 here). many / medium / few: final accuracy % "
        "on classes with > 100, 20-100, < 20 training images. A run still training shows its epochs and its "
        "latest evaluated error instead.", "",
        "| run | paper | final | best (test-selected), epoch | many | medium | few | epochs | hours (train + eval) "
        "| images/s | trained by (commit @ start step) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["finished"]:
            final = f"**{_fmt(r['top1_error'])}**"
        elif r["epochs_done"]:
            final = f"(running; latest {_fmt(r['latest_test_top1_error'])})"
        else:
            final = "(not run)"
        best = "" if r["best_test_top1_error"] is None else f"{_fmt(r['best_test_top1_error'])}, {r['best_epoch']}"
        commits = ", ".join(f"{c['commit'][:7]}{'+' if c['dirty'] else ''} @ {c['start_step']}" for c in r["trained_by"])
        epochs = f"{r['epochs_done']}/{r['num_epochs']}" if r["num_epochs"] else ""
        hours = f"{r['train_hours']:.2f} + {r['eval_hours']:.2f}" if r["epochs_done"] else ""
        groups = [_fmt(r[k]) if r[k] is not None or not r["finished"] else "n/a"
                  for k in ("many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy")]
        lines.append(f"| {r['name']} | {_fmt(r['paper_top1_error'])} | {final} | {best} | {' | '.join(groups)} | "
                     f"{epochs} | {hours} | {_fmt(r['images_per_sec'], 1)} | {commits} |")
    sources: dict[str, list[str]] = {}
    for r in results:
        if r["paper_source"]:
            sources.setdefault(r["paper_source"], []).append(r["name"])
    if sources:
        lines += ["", "Paper numbers (top-1 error %): " + "; ".join(
            f"{source}: {', '.join(names)}" for source, names in sources.items()) + ". n/a: no class in that group."]
    if figure:
        lines += ["", f"![suite {suite}: test error over epochs, final accuracy per class]({figure})", "",
                  f"`{figure}`, drawn by the same command: left, each run's test top-1 error at its evaluated epochs; "
                  "right, each finished run's final accuracy per class, classes from most to fewest training images."]
    lines += _posthoc_table(results)
    lines += _pairs_table(results)
    lines += _seeds_table(results)
    cpus = sorted({c["cpu"] for r in results for c in r["trained_by"]})
    lines += ["", f"Machines: {'; '.join(cpus) or 'none yet'}. A `+` after a commit: the working tree had "
              "uncommitted changes to tracked files when that start began."]
    if (root / NOTES_FILE).exists():
        lines += ["", (root / NOTES_FILE).read_text().strip()]
    return "\n".join(lines) + "\n"


def _posthoc_table(results: list[dict[str, Any]]) -> list[str]:
    """The post-hoc evaluations of finished runs, beside each run's plain final error."""
    rows = [(r, p) for r in results for p in r.get("posthoc", ())]
    if not rows:
        return []
    lines = ["", "Post-hoc adjustment of a finished run's final model, no retraining (`python -m safa_jax.main "
             "--mode=eval` with the run's flags and `--config.eval.posthoc=P --config.eval.tau=T`, which the suite "
             "runs after training): logit_adjust takes the argmax of logits - tau * log(class prior), tau_norm "
             "divides each class's weight vector by its norm to the power tau. tau is fixed in the suite, not "
             "chosen on the test set.", "",
             "| run | adjustment | tau | final | change | many | medium | few |", "|---|---|---|---|---|---|---|---|"]
    for r, p in rows:
        change = "" if r["top1_error"] is None else f"{p['top1_error'] - r['top1_error']:+.2f}"
        groups = " | ".join(_fmt(p[k]) if p[k] is not None else "n/a"
                            for k in ("many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy"))
        lines.append(f"| {r['name']} | {p['posthoc']} | {p['tau']:g} | **{_fmt(p['top1_error'])}** | {change} | "
                     f"{groups} |")
    return lines


def _pairs_table(results: list[dict[str, Any]]) -> list[str]:
    """Each finished run (and its post-hoc evaluations) beside the finished run it is compared to."""
    by_name = {r["name"]: r for r in results}
    rows = []
    for r in results:
        other = by_name.get(r["compare_to"])
        if not (r["finished"] and other and other["finished"]):
            continue
        rows.append((r["name"], r["top1_error"], other))
        rows += [(f"{r['name']} + {p['posthoc']} tau {p['tau']:g}", p["top1_error"], other) for p in r["posthoc"]]
    if not rows:
        return []
    lines = ["", "Pairs: a finished run's final top-1 error beside that of the run the suite measures it against "
             "(`compare_to`); difference = run - other, negative where the run has the lower error.", "",
             "| run | final | against | its final | difference |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {_fmt(error)} | {other['name']} | {_fmt(other['top1_error'])} | "
              f"{error - other['top1_error']:+.2f} |" for name, error, other in rows]
    lower = [name for name, error, other in rows if error < other["top1_error"]]
    lines += ["", f"Lower final error than the run they are measured against: {', '.join(lower) or 'none'}."]
    return lines


def _seeds_table(results: list[dict[str, Any]]) -> list[str]:
    """Runs named STEM_seedN that differ only in seed, where two or more have finished: mean and range, since one
    seed cannot separate effects under about a point (`check_runs` holds such runs to one setting)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        match = SEED_SUFFIX.match(r["name"])
        if match and r["finished"]:
            groups.setdefault(match["stem"], []).append(r)
    groups = {stem: runs for stem, runs in groups.items() if len(runs) > 1}
    if not groups:
        return []
    lines = ["", "Over seeds: the runs named STEM_seedN that have finished, final top-1 error.", "",
             "| runs | seeds | mean | min - max | per seed |", "|---|---|---|---|---|"]
    for stem, runs in groups.items():
        errors = [r["top1_error"] for r in runs]
        seeds = [SEED_SUFFIX.match(r["name"])["seed"] for r in runs]
        lines.append(f"| {stem} | {', '.join(seeds)} | {_fmt(statistics.mean(errors))} | {_fmt(min(errors))} - "
                     f"{_fmt(max(errors))} | {', '.join(_fmt(e) for e in errors)} |")
    return lines


def write_report(suite: str, runs: list[Run], root: pathlib.Path, output: pathlib.Path) -> list[dict[str, Any]]:
    results = [run_result(run, root / run.name) for run in runs]
    root.mkdir(parents=True, exist_ok=True)
    (root / RESULTS_JSON).write_text(json.dumps({"suite": suite, "runs": results}, indent=2))
    output.parent.mkdir(parents=True, exist_ok=True)
    figure = f"{suite}.png"
    drawn = write_suite_figure(suite, runs, root, output.parent / figure)
    page = output.read_text() if output.exists() else ""
    output.write_text(with_section(page, suite, markdown(suite, results, root, figure if drawn else None)))
    return results


def _markers(suite: str) -> tuple[str, str]:
    return (f"<!-- suite {suite}: written by `python -m safa_jax.suite --report`; edit its NOTES.md instead -->",
            f"<!-- end of suite {suite} -->")


def with_section(page: str, suite: str, section: str) -> str:
    """`page` with the suite's section replaced (or appended), so several suites' reports share one page; a page
    with no suite sections at all (an older report) is replaced."""
    begin, end = _markers(suite)
    block = f"{begin}\n{section}{end}\n"
    if begin in page and end in page:
        head, rest = page.split(begin, 1)
        return head + block + rest.split(end, 1)[1].removeprefix("\n")
    if "<!-- suite " not in page:
        return block
    return page.rstrip("\n") + "\n\n" + block


def export(runs: list[Run], root: pathlib.Path, destination: pathlib.Path) -> list[str]:
    """Copies the small files of each finished run to `destination/<run>`; returns the names copied."""
    copied = []
    for run in runs:
        source = root / run.name
        if not run_status(source).done:
            continue
        target = destination / run.name
        target.mkdir(parents=True, exist_ok=True)
        for name in (*SMALL_FILES, *_posthoc_files(run)):
            if (source / name).exists():
                shutil.copy2(source / name, target / name)
        copied.append(run.name)
    return copied
