"""Evaluation of the plain backbone: every test example counted exactly once, on any device count.

SAFA is training-only: nothing here runs its modules. The last batch is padded to the full batch size
(a multiple of the device count) and its padding dropped before counting.
"""

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
from safa_jax.data.sources import LongTailedData
from safa_jax.experiment import Experiment, build_experiment, restore_if_any
from safa_jax.state import NnxBridge, TrainState


def make_predict_fn(backbone: NnxBridge, mean, std) -> Callable:
    """jit(params, batch_stats, uint8 images) -> logits, in eval mode (running BN statistics)."""
    mean, std = tuple(mean), tuple(std)

    @jax.jit
    def predict(params, batch_stats, images):
        model = backbone.merge(params, batch_stats)
        x = normalize(to_unit_float(images), mean, std)
        return model(x, train=False)

    return predict


def count_correct(predict: Callable, params, batch_stats, images: np.ndarray, labels: np.ndarray,
                  num_classes: int, batch_size: int, mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (correct, total) over the whole test set."""
    batch_size = sharding.padded_batch_size(batch_size, mesh)
    batch_sharding = sharding.batch_sharded(mesh)
    predictions = np.empty(len(images), np.int64)
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        real = len(chunk)
        if real < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - real, *chunk.shape[1:]), chunk.dtype)])
        logits = predict(params, batch_stats, jax.device_put(chunk, batch_sharding))
        predictions[start:start + real] = np.asarray(jnp.argmax(logits, axis=-1))[:real]
    labels = np.asarray(labels, np.int64)
    total = np.bincount(labels, minlength=num_classes)
    correct = np.bincount(labels[predictions == labels], minlength=num_classes)
    return correct, total


def evaluate_state(experiment: Experiment, state: TrainState, predict: Callable) -> dict[str, Any]:
    """Accuracy summary of the state's backbone on the experiment's test split."""
    data = experiment.data
    correct, total = count_correct(
        predict, state.params["backbone"], state.batch_stats["backbone"], data.test_images, data.test_labels,
        data.num_classes, experiment.config.eval_batch_size, experiment.mesh)
    return metrics.accuracy_summary(correct, total, data.class_counts, int(state.step))


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                        *, step: int | None = None, mesh: Mesh | None = None,
                        data: LongTailedData | None = None) -> dict[str, Any]:
    """Restores the latest (or the given) checkpoint of `workdir` on the devices present and evaluates it.

    `mesh` and `data` default to all devices and `config.data`; tests pass small ones.
    """
    workdir = pathlib.Path(workdir)
    checkpoints = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
    if checkpoints.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint to evaluate in {checkpoints.directory}")
    experiment, state = build_experiment(config, mesh=mesh, data=data)
    state = restore_if_any(experiment, checkpoints, state, step)
    predict = make_predict_fn(experiment.backbone, experiment.data.mean, experiment.data.std)
    summary = evaluate_state(experiment, state, predict)
    if jax.process_index() == 0:
        path = metrics.write_summary(summary, experiment.data.class_names, workdir)
        logging.info("Wrote %s", path)
    checkpoints.close()
    return summary
