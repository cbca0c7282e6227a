"""What a training method is to the trainer: its modules, its classification batch, its compiled variants.

The train step (safa_jax/train.py) knows no method. Per step it merges the backbone and asks the method for
a `ClassifierBatch` (logits and what the base loss needs), adds the method's own loss, and updates every
module's parameters and batch statistics. A method that needs two compiled programs (SAFA: before and after
its augmented features join the classification loss) names the variant each epoch uses. Adding a method is
one module here plus one entry in `safa_jax.methods.METHODS` plus its config section (docs/method.md).
"""

import dataclasses
from collections.abc import Hashable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from safa_jax.models.layer_ops import LayerOps
from safa_jax.state import NnxBridge

PyTree = Any


@dataclasses.dataclass
class ClassifierBatch:
    """One step's classification inputs, built inside the differentiated function.

    logits (N, K) float32 over the N >= B samples the base loss sees (the B real ones first); labels (N,);
    sample_weights (N,) (0 drops a sample); class_weighted (N,) bool or None: where the train rule's class
    weights apply (None: everywhere); extra_loss: the method's own loss, added to the classification loss;
    metrics: logged as they are; batch_stats: the method's modules' new batch statistics, {} for none.
    """

    logits: jax.Array
    labels: jax.Array
    sample_weights: jax.Array
    class_weighted: jax.Array | None = None
    extra_loss: jax.Array | float = 0.0
    metrics: dict[str, jax.Array] = dataclasses.field(default_factory=dict)
    batch_stats: dict[str, PyTree] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ModuleSetup:
    """What `build_experiment` hands a method to build its modules with."""

    config: ml_collections.ConfigDict
    class_counts: np.ndarray
    backbone: nnx.Module  # the constructed backbone, for its feature shapes
    rngs: nnx.Rngs  # the backbone's, continued: the same seed gives the same modules
    layer_ops: LayerOps  # how the run's layers compute: a method builds its modules with it
    steps_per_epoch: int
    num_train_steps: int


class Method:
    """The plain method: the backbone's logits on the real batch, nothing else. Others override what differs."""

    name = "plain"
    label = ""  # shown after the backbone's name in the console ("resnet32 + SAFA")

    def __init__(self, setup: ModuleSetup):
        self.bridge: NnxBridge | None = None  # the method's own modules, if any
        self.initial_params: PyTree | None = None
        self.initial_stats: PyTree | None = None

    @staticmethod
    def validate(config: ml_collections.ConfigDict) -> None:
        """Raises ValueError, naming field, value and what is allowed, for a config this method cannot run."""

    reinitialises_classifier = False  # with config.init_from: take the backbone but not its classifier

    def frozen(self, params: PyTree, variant: Hashable) -> PyTree | None:
        """A tree of Python bools like `params`: which parameters `variant`'s step leaves untouched (no update, no
        weight decay, no momentum; `experiment.keep_frozen`); None: none."""
        del params, variant
        return None

    @staticmethod
    def resolve_config(config: ml_collections.ConfigDict) -> None:
        """Replaces this method's "auto"/-1 fields in `config` (a copy) by the values they stand for."""

    def variant_at(self, epoch: int) -> Hashable:
        """Which compiled step `epoch` uses; each distinct value is compiled once, when first needed."""
        del epoch
        return None

    def classifier_batch(self, backbone: nnx.Module, params: PyTree, batch_stats: PyTree, x: jax.Array,
                         y: jax.Array, key: jax.Array, *, variant: Hashable, precision) -> ClassifierBatch:
        """The logits and loss inputs of one training batch (x, y), with the backbone in training mode.

        `params` / `batch_stats` are the method's own entries (None without modules); `precision` casts
        (`safa_jax.precision.Precision`).
        """
        del params, batch_stats, key, variant, precision
        return ClassifierBatch(logits=backbone(x, train=True), labels=y, sample_weights=jnp.ones(y.shape, jnp.float32))
