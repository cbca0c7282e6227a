"""The on-device input pipeline: batch sampling, crop/flip augmentation and normalisation in pure jnp.

A long-tailed CIFAR training split is about 12k images of 32x32x3 uint8 (36 MiB), so the whole split lives
on the device and every function here runs inside the jitted train step: no host input pipeline, no
host-device copy per step. Every batch is a function of (data key, step) only, so a run resumed from a
checkpoint at step s sees exactly the batches an uninterrupted run would have seen.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch; the remainder of each epoch's permutation is dropped."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; allowed: a positive integer.")
    if num_examples < batch_size:
        raise ValueError(f"the training set has {num_examples} examples, fewer than batch_size={batch_size}; "
                         f"allowed: batch_size <= {num_examples}.")
    return num_examples // batch_size


def epoch_order(key: jax.Array, epoch, *, num_examples: int) -> jax.Array:
    """The order in which epoch `epoch` visits the examples: a fresh permutation per epoch.

    `key` must be the same for every step of a run (it is derived from the seed alone): one permutation is
    then sliced into the epoch's batches, so every example is seen once per epoch (sampling without
    replacement, as a shuffled PyTorch DataLoader). `step_input.InMemoryInput.batch_args` computes it on the
    devices once per epoch, outside the step.
    """
    return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)


def epoch_batch_indices(order: jax.Array, step, *, batch_size: int) -> jax.Array:
    """Indices of batch `step`: its slice of the epoch's `order` (from `epoch_order`)."""
    batches_per_epoch = steps_per_epoch(order.shape[0], batch_size)
    return lax.dynamic_slice(order, ((step % batches_per_epoch) * batch_size,), (batch_size,))


def balanced_batch_indices(key: jax.Array, step, *, sample_probs: jax.Array, batch_size: int) -> jax.Array:
    """Indices of batch `step`, drawn with replacement with P(example i) = sample_probs[i] (DRS / resample)."""
    return jax.random.choice(jax.random.fold_in(key, step), sample_probs.shape[0], shape=(batch_size,),
                             replace=True, p=sample_probs)


def class_balanced_sample_probs(labels: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
    """p_i proportional to class_weights[labels[i]]: with weights 1 / n_c every class is drawn equally often."""
    labels = np.asarray(labels)
    class_weights = np.asarray(class_weights, dtype=np.float64)
    if labels.min() < 0 or labels.max() >= len(class_weights):
        raise ValueError(f"labels span {labels.min()}..{labels.max()} but class_weights has "
                         f"{len(class_weights)} entries; allowed labels: 0..{len(class_weights) - 1}.")
    if (class_weights < 0).any():
        raise ValueError(f"class_weights={class_weights} has negative entries; allowed: weights >= 0.")
    example_weights = class_weights[labels]
    total = example_weights.sum()
    if total <= 0:
        raise ValueError(f"class_weights={class_weights} give every example weight 0; "
                         f"allowed: a positive weight for at least one present class.")
    return example_weights / total


def to_unit_float(images_uint8: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [0, 1], as torchvision's ToTensor."""
    return images_uint8.astype(jnp.float32) / 255.0


def crop_and_flip(images: jax.Array, offsets: jax.Array, flips: jax.Array, *, padding: int) -> jax.Array:
    """Crops each image at offsets[b] = (row, col) from its zero-padded copy, then mirrors it where flips[b].

    The padded image is (H + 2 padding) x (W + 2 padding); offsets run over 0..2 padding and
    (padding, padding) gives the image back unchanged.
    """
    if padding < 0:
        raise ValueError(f"padding={padding}; allowed: padding >= 0.")
    height, width, channels = images.shape[1:]
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

    def crop_one(image: jax.Array, offset: jax.Array, flip: jax.Array) -> jax.Array:
        crop = lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))
        return jnp.where(flip, crop[:, ::-1], crop)

    return jax.vmap(crop_one)(padded, offsets, flips)


def augment_batch(images_uint8: jax.Array, key: jax.Array, *, padding: int, flip: bool) -> jax.Array:
    """The CIFAR recipe: random crop from the zero-padded image and a random horizontal flip; float32 [0, 1]."""
    batch_size = images_uint8.shape[0]
    offset_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(offset_key, (batch_size, 2), 0, 2 * padding + 1)
    if flip:
        flips = jax.random.bernoulli(flip_key, 0.5, (batch_size,))
    else:
        flips = jnp.zeros((batch_size,), dtype=bool)
    return to_unit_float(crop_and_flip(images_uint8, offsets, flips, padding=padding))


def normalize(images_float: jax.Array, mean, std) -> jax.Array:
    """(x - mean) / std per channel (last axis)."""
    mean = jnp.asarray(mean, dtype=jnp.float32)
    std = jnp.asarray(std, dtype=jnp.float32)
    channels = images_float.shape[-1]
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ValueError(f"mean has shape {mean.shape} and std {std.shape}; allowed: ({channels},) each, "
                         f"one value per channel of the images.")
    return (images_float - mean) / std
