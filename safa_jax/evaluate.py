"""Evaluation of the plain backbone: every test example counted exactly once, on any device count.

SAFA is training-only: nothing here runs its modules. The last batch is padded to the full batch size
(a multiple of the device count) and its padding dropped before counting.
"""

import json
import logging
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from safa_jax import checkpointing, metrics, sharding
from safa_jax.data.device_pipeline import normalize, to_unit_float
from safa_jax.data.dataset import Dataset
from safa_jax.experiment import Experiment, build_experiment, config_record, restore_if_any
from safa_jax.losses.base import log_class_prior, tau_search
from safa_jax.models.heads import tau_normalized_linear
from safa_jax.precision import Precision
from safa_jax.state import NnxBridge, TrainState


def make_predict_fn(backbone: NnxBridge, mean, std, *, compute_dtype: str = "float32") -> Callable:
    """jit(params, batch_stats, uint8 images) -> float32 logits, in eval mode (running BN statistics).

    `compute_dtype` (`config.model.compute_dtype`): the forward pass's dtype; see `safa_jax.precision`.
    """
    mean, std = tuple(mean), tuple(std)
    precision = Precision(compute_dtype)

    @jax.jit
    def predict(params, batch_stats, images):
        model = backbone.merge(precision.to_compute(params), batch_stats)
        x = normalize(to_unit_float(images), mean, std)
        return precision.to_float32(model(precision.to_compute(x), train=False))

    return predict


def make_count_fn(predict: Callable, num_classes: int, mesh: Mesh, logit_offset: Any = None) -> Callable:
    """jit(params, batch_stats, images, labels, mask) -> per-class (correct, total), replicated on every process.

    `logit_offset` (K,): subtracted from the logits before the argmax (post-hoc logit adjustment)."""
    offset = None if logit_offset is None else jnp.asarray(logit_offset, jnp.float32)

    def count(params, batch_stats, images, labels, mask):
        logits = predict(params, batch_stats, images)
        if offset is not None:
            logits = logits - offset
        hits = (jnp.argmax(logits, axis=-1) == labels) & mask
        correct = jax.ops.segment_sum(hits.astype(jnp.int32), labels, num_segments=num_classes)
        total = jax.ops.segment_sum(mask.astype(jnp.int32), labels, num_segments=num_classes)
        return correct, total

    return jax.jit(count, out_shardings=sharding.replicated(mesh))


def count_correct(predict: Callable, params, batch_stats, data: Dataset, batch_size: int, mesh: Mesh,
                  logit_offset: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (correct, total) over the whole test split, each example counted exactly once: each process
    reads its own slice of every padded global batch (`Dataset.test_batches`)."""
    batch_size = sharding.padded_batch_size(batch_size, mesh)
    count = make_count_fn(predict, data.num_classes, mesh, logit_offset)
    batches = data.test_batches(batch_size=batch_size, process_index=jax.process_index(),
                                process_count=jax.process_count())
    correct = np.zeros(data.num_classes, np.int64)
    total = np.zeros(data.num_classes, np.int64)
    for batch in batches:
        batch_correct, batch_total = count(params, batch_stats, *sharding.put_process_batch(batch, mesh))
        correct += np.asarray(batch_correct)
        total += np.asarray(batch_total)
    return correct, total


def evaluate_state(experiment: Experiment, state: TrainState, predict: Callable,
                   train_class_counts: Any = None, logit_offset: Any = None) -> dict[str, Any]:
    """Accuracy summary of the state's backbone on the experiment's test split; many/medium/few-shot groups from
    `train_class_counts` (default the experiment's training split); `logit_offset` as in `make_count_fn`."""
    data = experiment.data
    correct, total = count_correct(predict, state.params["backbone"], state.batch_stats["backbone"], data,
                                   experiment.config.eval_batch_size, experiment.mesh, logit_offset)
    counts = data.class_counts if train_class_counts is None else np.asarray(train_class_counts)
    return metrics.accuracy_summary(correct, total, counts, int(state.step))


# The config fields that decide which training split a run had: evaluation against a checkpoint must agree on them.
SPLIT_FIELDS = ("data.source", "data.subsample", "data.imbalance_factor", "data.selection", "data.selection_seed")


def check_same_data(saved: dict[str, Any], config: ml_collections.ConfigDict, where: pathlib.Path) -> None:
    """Refuses to evaluate with data other than the checkpoint's, unless `config.eval.other_data` asks for it."""
    if config.eval.other_data:
        return
    recorded = saved["config"]
    differing = []
    for dotted in SPLIT_FIELDS:
        section, name = dotted.split(".")
        then, now = recorded.get(section, {}).get(name), config[section][name]
        if then is not None and then != now:
            differing.append(f"{dotted}: checkpoint {then!r}, config {now!r}")
    if differing:
        raise ValueError(f"the checkpoint in {where} was trained on other data than this config names:\n  "
                         + "\n  ".join(differing)
                         + "\nEvaluate with the run's own config, or pass --config.eval.other_data=True to evaluate "
                           "on this config's data (shot groups stay those of the checkpoint's training split).")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                        *, step: int | None = None, mesh: Mesh | None = None,
                        data: Dataset | None = None) -> dict[str, Any]:
    """Restores the latest (or the given) checkpoint of `workdir` on the devices present and evaluates it.

    `mesh` and `data` default to all devices and `config.data`; tests pass small ones.
    """
    workdir = pathlib.Path(workdir)
    if not (workdir / "checkpoints").is_dir():  # Checked before Orbax, which would create the folder.
        raise FileNotFoundError(f"no checkpoint to evaluate in {workdir / 'checkpoints'}")
    checkpoints = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
    step = checkpoints.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint to evaluate in {checkpoints.directory}")
    saved = checkpoints.metadata(step)
    check_same_data(saved, config, checkpoints.directory)
    checkpointing.check_compatible_before_building(saved["config"], config_record(config), checkpoints.directory)
    experiment, state = build_experiment(config, mesh=mesh, data=data)
    recorded_names = tuple(saved["split"]["class_names"])
    if not config.eval.other_data and recorded_names != tuple(experiment.data.class_names):
        raise ValueError(f"the checkpoint in {checkpoints.directory} was trained on the classes {recorded_names}, "
                         f"the data has {tuple(experiment.data.class_names)}; pass --config.eval.other_data=True "
                         "to evaluate anyway")
    state = restore_if_any(experiment, checkpoints, state, step)
    predict = make_predict_fn(experiment.backbone, experiment.data.mean, experiment.data.std,
                              compute_dtype=experiment.config.model.compute_dtype)
    train_counts = saved["split"]["class_counts"]
    posthoc = config.eval.posthoc

    def evaluate_at(tau: float | None) -> dict[str, Any]:
        adjusted, offset = state, None
        if posthoc == "logit_adjust":
            offset = tau * log_class_prior(train_counts)
        elif posthoc == "tau_norm":
            backbone = dict(state.params["backbone"], head=tau_normalized_linear(state.params["backbone"]["head"], tau))
            adjusted = state.replace(params=dict(state.params, backbone=backbone))
        summary = evaluate_state(experiment, adjusted, predict, train_class_counts=train_counts, logit_offset=offset)
        return summary if posthoc == "none" else dict(summary, posthoc=posthoc, tau=tau)

    summary = evaluate_at(None if posthoc == "none" else config.eval.tau)
    # The post-hoc results go beside the plain ones, not over them.
    stem = metrics.results_stem(posthoc, config.eval.tau)
    write = jax.process_index() == 0
    if write:
        logging.info("Wrote %s", metrics.write_summary(summary, experiment.data.class_names, workdir, stem=stem))
    taus = tau_search(config.eval)
    if taus:
        searched = [evaluate_at(tau) for tau in taus]
        best = max(searched, key=lambda result: result["top1_accuracy"])
        summary = dict(summary, tau_search=write_tau_search(searched, best, posthoc, workdir) if write else None)
    checkpoints.close()
    return summary


def write_tau_search(searched: list[dict[str, Any]], best: dict[str, Any], posthoc: str,
                     workdir: pathlib.Path) -> dict[str, Any]:
    """eval_results_POSTHOC_search.json: top-1 and shot-group accuracy at every tau, and the best tau, which is
    chosen on the test set (so an optimistic figure, labelled as such)."""
    keys = ("tau", "top1_accuracy", "many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy")
    record = {"posthoc": posthoc, "selection": "best tau chosen on the test set",
              "taus": [{key: result.get(key) for key in keys} for result in searched],
              "best_tau": best["tau"], "best_top1_accuracy": best["top1_accuracy"]}
    path = workdir / f"eval_results_{posthoc}_search.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    logging.warning("%s: best tau %g, top-1 accuracy %.2f %% (selected on the test set); every tau in %s",
                    posthoc, best["tau"], best["top1_accuracy"], path)
    return record
