"""A picture of a run's training curves, `curves.png` in the run folder, drawn from its epochs.csv.

Four panels over epochs: the training loss, the learning rate (log scale), the test top-1 error, and the
test accuracy of many/medium/few-shot classes where evaluated. Written at the end of training; also
`python -m safa_jax.curves --workdir=RUN` for a run that is still going.
"""

import pathlib
import sys

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from safa_jax.epoch_log import read_epochs

CURVES_FILE = "curves.png"


def plot_training_curves(workdir: str | pathlib.Path) -> pathlib.Path:
    workdir = pathlib.Path(workdir)
    rows = read_epochs(workdir)
    if not rows:
        raise FileNotFoundError(f"no epochs.csv rows in {workdir}: nothing to plot yet")
    figure = Figure(figsize=(11, 7), layout="constrained")
    axes = figure.subplots(2, 2)
    epochs = [int(r["epoch"]) + 1 for r in rows]

    def plot(axis, column, label, **style):
        points = [(e, r[column]) for e, r in zip(epochs, rows) if r.get(column) is not None]
        if points:
            axis.plot(*zip(*points), label=label, **style)

    plot(axes[0, 0], "loss", "total loss")
    plot(axes[0, 0], "classification_loss", "classification loss", linestyle="--")
    axes[0, 0].set(title="training loss", xlabel="epoch")
    plot(axes[0, 1], "learning_rate", "learning rate")
    axes[0, 1].set(title="learning rate", xlabel="epoch", yscale="log")
    plot(axes[1, 0], "test_top1_error", "test top-1 error", marker=".")
    axes[1, 0].set(title="test top-1 error (%)", xlabel="epoch")
    for column, label in (("test_many_shot_accuracy", "many-shot"), ("test_medium_shot_accuracy", "medium-shot"),
                          ("test_few_shot_accuracy", "few-shot")):
        plot(axes[1, 1], column, label, marker=".")
    axes[1, 1].set(title="test accuracy by class group (%)", xlabel="epoch")
    for axis in axes.flat:
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    figure.suptitle(workdir.name)
    path = workdir / CURVES_FILE
    FigureCanvasAgg(figure).print_png(str(path))
    return path


def main(argv: list[str]) -> None:
    import argparse  # noqa: PLC0415
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    try:
        print(plot_training_curves(args.workdir))
    except FileNotFoundError as error:
        sys.exit(f"safa_jax.curves: error: {error}")


if __name__ == "__main__":
    main(sys.argv[1:])
