"""Metric writing (TensorBoard + readable logs through clu) and the accuracy summaries of evaluation."""

import json
import logging
import pathlib
from typing import Any

import numpy as np

from safa_jax.data.longtail import shot_buckets


def create_writer(workdir: str | pathlib.Path, *, is_main_process: bool):
    """TensorBoard event files and log lines on the main process; log lines only elsewhere."""
    from clu import metric_writers  # Imported here: clu pulls in TensorFlow for TensorBoard.
    return metric_writers.create_default_writer(str(workdir), just_logging=not is_main_process)


def create_progress(num_train_steps: int, writer):
    """Reports steps/s and the ETA every 30 s (called with the step number after every step)."""
    from clu import periodic_actions  # clu pulls in TensorFlow: keep it off the package's import path.
    return periodic_actions.ReportProgress(num_train_steps=num_train_steps, writer=writer, every_secs=30.0)


def accuracy_summary(correct_per_class: np.ndarray, total_per_class: np.ndarray,
                     train_class_counts: np.ndarray, step: int) -> dict[str, Any]:
    """Top-1 accuracy overall, on many/medium/few-shot classes and per class, in percent.

    Shot groups follow the field's convention on *training* counts: many > 100, medium 20-100,
    few < 20. A group with no class is reported as None, not 0.
    """
    correct_per_class = np.asarray(correct_per_class, np.int64)
    total_per_class = np.asarray(total_per_class, np.int64)
    buckets = shot_buckets(train_class_counts)

    def percent(mask: np.ndarray) -> float | None:
        total = int(total_per_class[mask].sum())
        return None if total == 0 else 100.0 * float(correct_per_class[mask].sum()) / total

    everything = np.ones_like(total_per_class, dtype=bool)
    top1 = percent(everything)
    per_class = [None if t == 0 else 100.0 * c / t for c, t in zip(correct_per_class, total_per_class)]
    return {
        "step": int(step),
        "num_examples": int(total_per_class.sum()),
        "top1_accuracy": top1,
        "top1_error": None if top1 is None else 100.0 - top1,
        "many_shot_accuracy": percent(buckets["many"]),
        "medium_shot_accuracy": percent(buckets["medium"]),
        "few_shot_accuracy": percent(buckets["few"]),
        "num_many_shot_classes": int(buckets["many"].sum()),
        "num_medium_shot_classes": int(buckets["medium"].sum()),
        "num_few_shot_classes": int(buckets["few"].sum()),
        "per_class_accuracy": per_class,
        "per_class_test_examples": [int(t) for t in total_per_class],
        "train_class_counts": [int(n) for n in train_class_counts],
    }


def format_table(summary: dict[str, Any], class_names: tuple[str, ...]) -> str:
    """A readable table of an accuracy summary."""

    def fmt(value: float | None) -> str:
        return "   n/a" if value is None else f"{value:6.2f}"

    lines = [
        f"step {summary['step']}: {summary['num_examples']} test examples",
        f"top-1 accuracy {fmt(summary['top1_accuracy'])} %   error {fmt(summary['top1_error'])} %",
        f"many-shot   ({summary['num_many_shot_classes']:4d} classes) {fmt(summary['many_shot_accuracy'])} %",
        f"medium-shot ({summary['num_medium_shot_classes']:4d} classes) {fmt(summary['medium_shot_accuracy'])} %",
        f"few-shot    ({summary['num_few_shot_classes']:4d} classes) {fmt(summary['few_shot_accuracy'])} %",
        "",
        f"{'class':<24}{'train images':>14}{'test images':>13}{'accuracy %':>12}",
    ]
    for name, n_train, n_test, acc in zip(class_names, summary["train_class_counts"],
                                          summary["per_class_test_examples"],
                                          summary["per_class_accuracy"]):
        lines.append(f"{name[:23]:<24}{n_train:>14d}{n_test:>13d}{fmt(acc):>12}")
    return "\n".join(lines)


def write_summary(summary: dict[str, Any], class_names: tuple[str, ...],
                  workdir: str | pathlib.Path, stem: str = "eval_results") -> pathlib.Path:
    """Writes `<stem>.json` and `<stem>.txt` into the run folder; returns the JSON path."""
    workdir = pathlib.Path(workdir)
    json_path = workdir / f"{stem}.json"
    json_path.write_text(json.dumps(dict(summary, class_names=list(class_names)), indent=2))
    table = format_table(summary, class_names)
    (workdir / f"{stem}.txt").write_text(table + "\n")
    logging.info("Evaluation:\n%s", table)
    return json_path
