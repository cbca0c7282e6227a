"""A suite's comparison figure, drawn beside its report from the same small files (epochs.csv, eval_results.json).

Two panels: the test top-1 error of every run over epochs (where a run differs from another is visible long
before its final number), and each finished run's final accuracy per class, classes in order of training
images (where a long-tailed method gains or loses is in the tail classes, which the mean hides).
"""

import json
import pathlib

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from safa_jax.epoch_log import TRAINING_DONE_FILE, read_epochs
from safa_jax.suite_spec import Run

MAX_NAMED_CLASSES = 30  # beyond this (ImageNet-LT's 1000) the class axis is a rank, not names


def _final_per_class(workdir: pathlib.Path) -> dict | None:
    path = workdir / "eval_results.json"
    if not ((workdir / TRAINING_DONE_FILE).exists() and path.exists()):
        return None
    results = json.loads(path.read_text())
    return results if results.get("per_class_accuracy") else None


def suite_figure(suite: str, runs: list[Run], root: pathlib.Path) -> Figure | None:
    """The figure, or None where no run has an evaluated epoch yet."""
    curves = {}
    for run in runs:
        points = [(int(r["epoch"]) + 1, r["test_top1_error"]) for r in read_epochs(root / run.name)
                  if r.get("test_top1_error") is not None]
        if points:
            curves[run.name] = points
    if not curves:
        return None
    finals = {run.name: final for run in runs if (final := _final_per_class(root / run.name)) is not None}
    figure = Figure(figsize=(15, 5.5), layout="constrained")
    over_epochs, per_class = figure.subplots(1, 2)
    palette = colormaps["tab20"]
    colors = {name: palette(i % palette.N) for i, name in enumerate(curves)}
    for name, points in curves.items():
        over_epochs.plot(*zip(*points), color=colors[name], label=name, linewidth=1.2)
    over_epochs.set(title="test top-1 error (%) over epochs", xlabel="epoch (1 = first)")
    if finals:
        first = next(iter(finals.values()))
        counts = first["train_class_counts"]
        order = sorted(range(len(counts)), key=lambda c: -counts[c])
        for name, final in finals.items():
            per_class.plot(range(len(order)), [final["per_class_accuracy"][c] for c in order], color=colors[name],
                           marker="o", markersize=3, linewidth=1.0)
        if len(order) <= MAX_NAMED_CLASSES:
            names = first.get("class_names") or [str(c) for c in range(len(counts))]
            per_class.set_xticks(range(len(order)), [f"{names[c]}\n{counts[c]}" for c in order], fontsize=8)
    per_class.set(title="final test accuracy (%) per class (training images below the name)",
                  xlabel="class, most to fewest training images (rank where there are many)")
    for axis in (over_epochs, per_class):
        axis.grid(alpha=0.3)
    figure.legend(*over_epochs.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    figure.suptitle(f"suite {suite}")
    return figure


def write_suite_figure(suite: str, runs: list[Run], root: pathlib.Path, path: pathlib.Path) -> bool:
    """Writes the figure to `path` (PNG); False, writing nothing, where there is nothing to draw yet."""
    figure = suite_figure(suite, runs, root)
    if figure is None:
        return False
    FigureCanvasAgg(figure).print_png(str(path))
    return True
