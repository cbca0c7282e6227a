"""Small builders shared by the training tests: a tiny config and a tiny synthetic long-tailed dataset."""

import numpy as np

from configs import common
from safa_jax.data.sources import LongTailedData


def tiny_config(**overrides):
    """ResNet of width 4 with one block per stage on 8x8 images: compiles and steps in seconds."""
    config = common.get_config()
    config.model.width = 4
    config.model.blocks_per_stage = 1
    config.data.image_size = 8
    config.data.crop_padding = 2
    config.batch_size = 16
    config.eval_batch_size = 7
    config.num_epochs = 4
    config.optim.warmup_epochs = 1
    config.optim.decay_epochs = (2, 3)
    config.loss.second_stage_epoch = 2
    config.safa.start_epoch = 1
    config.log_every_steps = 2
    config.checkpoint_every_steps = 3
    config.eval_every_epochs = 0
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def tiny_data(counts=(20, 12, 6, 3), num_test_per_class=5, size=8, channels=3, seed=0) -> LongTailedData:
    """Random images whose class shifts the mean, so a model can learn something in a few steps."""
    rng = np.random.default_rng(seed)
    num_classes = len(counts)

    def make(per_class):
        labels = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
        base = rng.integers(0, 256, (len(labels), size, size, channels))
        shift = (labels[:, None, None, None] * 40) % 256
        return ((base // 2 + shift) % 256).astype(np.uint8), labels

    train_images, train_labels = make(list(counts))
    test_images, test_labels = make([num_test_per_class] * num_classes)
    return LongTailedData(
        train_images=train_images, train_labels=train_labels,
        train_ids=np.arange(len(train_labels), dtype=np.int64),
        test_images=test_images, test_labels=test_labels,
        class_names=tuple(f"class{i}" for i in range(num_classes)),
        class_counts=np.asarray(counts), source_class_counts=np.asarray(counts),
        mean=(0.5,) * channels, std=(0.25,) * channels)


def three_augmented_steps(config, mesh):
    """Three train steps with SAFA's augmented features (keys 0, 1, 2) of `config` on `tiny_data()` from its
    initial state: (the losses, the final state, the compiled step's StableHLO text)."""
    import jax  # here: the data-only tests import this module without building a model

    from safa_jax.experiment import build_experiment
    from safa_jax.data.step_input import make_input
    from safa_jax.train import make_train_step

    experiment, state = build_experiment(config, data=tiny_data(), mesh=mesh)
    batch_input = make_input(experiment, start_step=0)
    step = make_train_step(experiment, batch_input, variant=True)
    losses = []
    for index in range(3):
        state, metrics = step(state, batch_input.batch_args(index), jax.random.key(index))
        losses.append(float(metrics["loss"]))
    return losses, state, step.lower(state, batch_input.batch_args(0), jax.random.key(0)).as_text()
