"""Per-epoch records of a run, `epochs.csv`: training means, timing, and the test accuracy where evaluated.

Why a file of our own beside TensorBoard's: reports (the suite's results table) read it, and it is small
enough to commit. A row is appended and flushed at its epoch's end, after that epoch's checkpoint is
scheduled, so a run stopped between the two and resumed writes the epoch again; `read_epochs` keeps the
last row of each epoch.
"""

import csv
import json
import pathlib
from collections.abc import Mapping

EPOCHS_FILE = "epochs.csv"
TRAINING_DONE_FILE = "training_done.json"  # written last: the run trained to its final step and was evaluated.
# Always present, in this order; the step's own metrics (loss, learning_rate, safa/...) follow, sorted.
LEADING_COLUMNS = ("epoch", "step", "train_seconds", "train_images_per_sec", "eval_seconds", "test_top1_error",
                   "test_many_shot_accuracy", "test_medium_shot_accuracy", "test_few_shot_accuracy")
TEST_FIELDS = {"test_top1_error": "top1_error", "test_many_shot_accuracy": "many_shot_accuracy",
               "test_medium_shot_accuracy": "medium_shot_accuracy", "test_few_shot_accuracy": "few_shot_accuracy"}


def epoch_row(*, epoch: int, step: int, train_seconds: float, images: int, train_means: Mapping[str, float],
              test: Mapping | None, eval_seconds: float) -> dict[str, float | int | str]:
    """One row: `train_means` are the epoch's step-metric means, `test` an accuracy summary or None (not evaluated)."""
    row: dict[str, float | int | str] = {
        "epoch": epoch, "step": step, "train_seconds": round(train_seconds, 3),
        "train_images_per_sec": round(images / train_seconds, 2) if train_seconds > 0 else "",
        "eval_seconds": round(eval_seconds, 3) if test is not None else ""}
    for column, key in TEST_FIELDS.items():
        value = None if test is None else test[key]
        row[column] = "" if value is None else value
    row.update({name: train_means[name] for name in sorted(train_means)})
    return row


def append_epoch(workdir: str | pathlib.Path, row: Mapping) -> None:
    """Appends `row` to the run's epochs.csv (header on creation); refuses a row whose columns differ."""
    path = pathlib.Path(workdir) / EPOCHS_FILE
    columns = list(row)
    if path.exists() and path.stat().st_size:
        with open(path, newline="") as existing:
            header = next(csv.reader(existing))
        if header != columns:
            raise ValueError(f"{path} has the columns {header}, this run writes {columns}: "
                             "it was written by a run with another config; use another --workdir")
        with open(path, "a", newline="") as out:
            csv.writer(out).writerow([row[c] for c in columns])
    else:
        with open(path, "w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(columns)
            writer.writerow([row[c] for c in columns])


def read_epochs(workdir: str | pathlib.Path) -> list[dict[str, float | None]]:
    """The rows of epochs.csv in epoch order, the last row of each epoch; numbers as floats, empty cells None."""
    path = pathlib.Path(workdir) / EPOCHS_FILE
    if not path.exists():
        return []
    by_epoch: dict[int, dict[str, float | None]] = {}
    with open(path, newline="") as lines:
        for record in csv.DictReader(lines):
            row = {k: (float(v) if v not in ("", None) else None) for k, v in record.items()}
            by_epoch[int(row["epoch"])] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


def mark_done(workdir: str | pathlib.Path, step: int) -> None:
    (pathlib.Path(workdir) / TRAINING_DONE_FILE).write_text(json.dumps({"step": int(step)}) + "\n")
