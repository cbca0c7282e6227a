"""A run's static parts, built once from its config: data, models, optimizer, schedule, mesh, initial state.

Training, evaluation and visualisation all start from `build_experiment`, so they agree on how a config
becomes a model, and a checkpoint is only restored into the model that wrote it.
"""

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from safa_jax import checkpointing, sharding
from safa_jax.config_checks import validate_config
from safa_jax.data import device_pipeline
from safa_jax.data.dataset import Dataset
from safa_jax.data.registry import load_training_data
from safa_jax.methods import METHODS, Method, ModuleSetup
from safa_jax.models import build_model
from safa_jax.models.layer_ops import LayerOps, layer_ops_for
from safa_jax.models.heads import resolve_head
from safa_jax.models.torch_import import init_from_pretrained
from safa_jax.state import NnxBridge, TrainState
from safa_jax.warm_start import backbone_from_run


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What a run builds once from its config and data: models, optimizer, schedule, mesh."""

    config: ml_collections.ConfigDict
    data: Dataset
    mesh: jax.sharding.Mesh
    backbone: NnxBridge
    method: Method  # config.method's, built: its modules' bridge, variants and classifier batch
    layer_ops: LayerOps  # how the models' layers compute (config.model.conv_backend, batch_norm)
    optimizer: optax.GradientTransformation
    steps_per_epoch: int
    num_train_steps: int


def resolve_config(config: ml_collections.ConfigDict, data: Dataset) -> ml_collections.ConfigDict:
    """Replaces the 'auto'/-1 fields by the values they stand for; the result is what config.json records."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.head = resolve_head(config.model.head, config.loss.name)
    METHODS[config.method].resolve_config(config)
    return config


def learning_rate_schedule(optim: ml_collections.ConfigDict, steps_per_epoch: int) -> Callable:
    """The LDAM-DRW schedule, per epoch: linear warm-up lr*(e+1)/warmup, then lr*factor from each decay epoch."""
    base = optim.learning_rate
    warmup = optim.warmup_epochs
    decays = sorted(zip(optim.decay_epochs, optim.decay_factors))

    def schedule(count):
        epoch = count // steps_per_epoch
        lr = jnp.asarray(base, jnp.float32)
        if warmup > 0:
            lr = jnp.where(epoch < warmup, base * (epoch + 1) / warmup, lr)
        for decay_epoch, factor in decays:
            lr = jnp.where(epoch >= decay_epoch, base * factor, lr)
        return lr

    return schedule


def make_optimizer(optim: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """PyTorch SGD: L2 weight decay added to the gradient of every parameter, then heavy-ball momentum."""
    return optax.chain(
        optax.add_decayed_weights(optim.weight_decay),
        optax.sgd(learning_rate_schedule(optim, steps_per_epoch), momentum=optim.momentum))


def keep_frozen(optimizer: optax.GradientTransformation, frozen: Any, new_params: Any, old_params: Any,
                new_opt_state: Any, old_opt_state: Any) -> tuple[Any, Any]:
    """(params, optimizer state) with the `frozen` parameters (a tree of Python bools like the parameters) and their
    momentum left as they were: PyTorch's SGD skips a parameter without a gradient (no weight decay, no momentum),
    which is what a method's parameters unused in a phase get in the reference code (RSG's T before generation,
    its frozen contrastive module after; cRT's backbone)."""
    params = jax.tree.map(lambda new, old, stays: old if stays else new, new_params, old_params, frozen)
    state_frozen = optax.tree_utils.tree_map_params(optimizer, lambda _, stays: stays, old_opt_state, frozen,
                                                    transform_non_params=lambda _: False)
    opt_state = jax.tree.map(lambda new, old, stays: old if stays else new, new_opt_state, old_opt_state, state_frozen)
    return params, opt_state


def build_experiment(config: ml_collections.ConfigDict, *, data: Dataset | None = None,
                     mesh: jax.sharding.Mesh | None = None) -> tuple[Experiment, TrainState]:
    """Validates the config, loads the data, builds the models and the initial (replicated) state."""
    validate_config(config)
    mesh = sharding.make_mesh() if mesh is None else mesh
    ops = layer_ops_for(config.model, mesh)  # Builds the oneDNN kernels, if used, before the data.
    sharding.check_batch_divisible(config.batch_size, mesh, "config.batch_size")
    data = load_training_data(config.data) if data is None else data
    config = resolve_config(config, data)
    spe = device_pipeline.steps_per_epoch(len(data.train_ids), config.batch_size)
    total_steps = config.num_epochs * spe
    num_train_steps = total_steps if config.num_train_steps == -1 else min(config.num_train_steps, total_steps)

    rngs = nnx.Rngs(config.seed)
    model = build_model(config.model.name, num_classes=data.num_classes, in_channels=config.data.channels,
                        width=config.model.width, blocks_per_stage=config.model.blocks_per_stage,
                        head=config.model.head, ops=ops, rngs=rngs)
    backbone, params, stats = NnxBridge.split(model)
    if config.model.init_checkpoint:
        params, stats, head_loaded = init_from_pretrained(config.model.init_checkpoint, params, stats,
                                                          model_name=config.model.name)
        logging.info("Backbone weights from %s (classifier %s)", config.model.init_checkpoint,
                     "loaded too" if head_loaded else "freshly initialised: other class count or head")
    method_class = METHODS[config.method]
    if config.init_from:
        params, stats = backbone_from_run(config.init_from, params, stats,
                                          keep_classifier=not method_class.reinitialises_classifier)
    params, stats = {"backbone": params}, {"backbone": stats}
    # After the backbone, from the same Rngs: a method's modules are the same for the same seed.
    method = method_class(ModuleSetup(config=config, class_counts=np.asarray(data.class_counts),
                                                backbone=model, rngs=rngs, layer_ops=ops, steps_per_epoch=spe,
                                                num_train_steps=num_train_steps))
    if method.bridge is not None:
        params[method.name], stats[method.name] = method.initial_params, method.initial_stats

    optimizer = make_optimizer(config.optim, spe)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                       opt_state=optimizer.init(params))
    state = sharding.put_replicated(state, mesh)
    experiment = Experiment(config=config, data=data, mesh=mesh, backbone=backbone, method=method, layer_ops=ops,
                            optimizer=optimizer, steps_per_epoch=spe, num_train_steps=num_train_steps)
    return experiment, state


def split_record(data: Dataset) -> dict[str, Any]:
    """What split.json and the checkpoint metadata record about the training subset."""
    return {
        "class_names": list(data.class_names),
        "class_counts": [int(n) for n in data.class_counts],
        "source_class_counts": [int(n) for n in data.source_class_counts],
        "train_ids": [int(i) for i in data.train_ids],
        "num_train": int(len(data.train_labels)),
        "num_test": int(len(data.test_labels)),
    }


def config_record(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as JSON-ready data (tuples become lists, as they will after a JSON round trip)."""
    return json.loads(config.to_json())


def restore_if_any(experiment: Experiment, checkpoints: checkpointing.Checkpoints, state: TrainState,
                   step: int | None = None) -> TrainState:
    """The state of the given checkpoint step, or, with `step=None`, of the newest intact one (a corrupt or
    unreadable newer step is skipped with a warning); each checked to belong to this model and split."""
    steps = sorted(checkpoints.all_steps(), reverse=True) if step is None else [step]
    if not steps:
        return state
    abstract = checkpointing.abstract_like(state, sharding.replicated(experiment.mesh))
    problems = []
    for candidate in steps:
        try:
            saved = checkpoints.metadata(candidate)
            checkpointing.check_compatible(saved["config"], config_record(experiment.config),
                                           experiment.data.num_classes, len(saved["split"]["class_counts"]),
                                           checkpoints.directory)
            logging.info("Restoring checkpoint at step %d from %s", candidate, checkpoints.directory)
            restored = checkpoints.restore(candidate, abstract, saved.get("checksums"))
        except checkpointing.CheckpointCorruptError as error:
            if step is not None:
                raise
            logging.warning("Skipping checkpoint step %d: %s", candidate, error)
            problems.append(str(error))
            continue
        if problems:
            logging.warning("Resuming from checkpoint step %d, the newest intact one", candidate)
        return restored
    raise checkpointing.CheckpointCorruptError(
        f"no intact checkpoint in {checkpoints.directory}: " + "; ".join(problems))
