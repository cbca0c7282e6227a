"""What a train step reads of its data: the whole training set on the devices, or a batch streamed per step.

`make_input` picks the adapter for the experiment's data. Both give the step `batch_args(step)` (host side,
once per step) and `draw(args, key, step, epoch)` (inside jit: normalised images and labels), so the step
knows neither; both follow `config.loss`'s class-balanced sampling (`losses.base.balanced_from_epoch`, with
the per-class weights of `losses.base.sampling_class_weights`).
"""

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from safa_jax import sharding
from safa_jax.data import device_pipeline
from safa_jax.data.sources import LongTailedData
from safa_jax.losses.base import balanced_from_epoch, balanced_sampling_at, sampling_class_weights

if TYPE_CHECKING:
    from safa_jax.experiment import Experiment

# fold_in data of the epoch order's key: the per-step keys fold in the step (< 2**32 - 1), never this.
EPOCH_ORDER_STREAM = 2**32 - 1


class InMemoryInput:
    """The whole training set on the devices (replicated, uint8); each step draws and augments its batch in jit.

    The batch depends only on (seed, step), so a resumed run sees exactly the batches of an uninterrupted one.
    Each epoch visits every example once in an order drawn from the seed alone (`device_pipeline.epoch_order`,
    computed on the devices once per epoch by `batch_args`, not in every step).
    Class-balanced sampling (resample / DRS) weighs each example by its class's `sampling_class_weights`
    (`config.loss.sampling_weights`; by default the reference ImbalancedDatasetSampler's form).
    """

    def __init__(self, experiment: "Experiment"):
        data, self.config = experiment.data, experiment.config
        probs = device_pipeline.class_balanced_sample_probs(
            data.train_labels, sampling_class_weights(self.config.loss, data.class_counts))
        host = (data.train_images, data.train_labels.astype(np.int32), probs.astype(np.float32))
        self.device_arrays = sharding.put_replicated(host, experiment.mesh)
        self.num_examples = len(data.train_labels)
        self.steps_per_epoch = experiment.steps_per_epoch
        self.mean, self.std = data.mean, data.std
        self._order_key = jax.random.fold_in(jax.random.key(self.config.seed), EPOCH_ORDER_STREAM)
        self._epoch_order = jax.jit(functools.partial(device_pipeline.epoch_order, num_examples=self.num_examples),
                                    out_shardings=sharding.replicated(experiment.mesh))
        self._order_of_epoch: tuple[int, jax.Array] | None = None

    def batch_args(self, step: int):
        """What the step needs from the host at `step`: the training set and the order of `step`'s epoch."""
        epoch = step // self.steps_per_epoch
        if self._order_of_epoch is None or self._order_of_epoch[0] != epoch:
            self._order_of_epoch = (epoch, self._epoch_order(self._order_key, epoch))
        return (*self.device_arrays, self._order_of_epoch[1])

    def batch_indices(self, args, key, step, epoch) -> jax.Array:
        """Indices of this step's batch, inside jit: the epoch's order, or a class-balanced draw (resample/DRS)."""
        _, _, balanced_probs, order = args
        ordered = device_pipeline.epoch_batch_indices(order, step, batch_size=self.config.batch_size)
        balanced = device_pipeline.balanced_batch_indices(key, step, sample_probs=balanced_probs,
                                                          batch_size=self.config.batch_size)
        return jnp.where(balanced_sampling_at(self.config.loss, epoch), balanced, ordered)

    def draw(self, args, key, step, epoch):
        """(normalised float images, labels) of this step's batch, inside jit."""
        images, labels = args[:2]
        config = self.config
        k_balanced, k_augment = jax.random.split(key)
        index = self.batch_indices(args, k_balanced, step, epoch)
        x = images[index]
        if config.data.augment:
            x = device_pipeline.augment_batch(x, k_augment, padding=config.data.crop_padding,
                                               flip=config.data.flip)
        else:
            x = device_pipeline.to_unit_float(x)
        return device_pipeline.normalize(x, self.mean, self.std), labels[index]


class StreamedInput:
    """Batches decoded and augmented on the host by tf.data (large datasets); each process feeds its slice."""

    def __init__(self, experiment: "Experiment", start_step: int):
        config, data = experiment.config, experiment.data
        balanced_epoch = balanced_from_epoch(config.loss)
        balanced_from = None if balanced_epoch is None else balanced_epoch * experiment.steps_per_epoch
        self.mesh = experiment.mesh
        self.mean, self.std = data.mean, data.std
        self._batches = data.train_batches(
            batch_size=config.batch_size, seed=config.seed, start_step=start_step,
            balanced_from_step=balanced_from,
            balanced_class_weights=sampling_class_weights(config.loss, data.class_counts),
            process_index=jax.process_index(),
            process_count=jax.process_count())

    def batch_args(self, step: int):
        del step  # The iterator was positioned at the start step and advances one batch per call.
        return sharding.put_process_batch(next(self._batches), self.mesh)

    def draw(self, args, key, step, epoch):
        del key, step, epoch
        images, labels = args
        return device_pipeline.normalize(device_pipeline.to_unit_float(images), self.mean, self.std), labels


def make_input(experiment: "Experiment", start_step: int) -> "StepInput":
    if isinstance(experiment.data, LongTailedData):
        return InMemoryInput(experiment)
    return StreamedInput(experiment, start_step)


StepInput = InMemoryInput | StreamedInput
