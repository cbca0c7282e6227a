"""SAFA's loss formulas as pure functions of arrays (docs/method.md, "Losses"; the exact forms are (R)).

Every term averages over the valid entries of a fixed-size batch (a mask, never boolean indexing) and
is exactly 0 when no entry is valid, so a batch without tail samples or head pairs adds nothing.
Which arrays carry gradient (the stop-gradients of the spec) is decided by the caller,
`safa_jax.models.safa.safa_augment`.
"""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

# Each name matches the config fields `safa.use_<name>` and `safa.lambda_<name>`.
TERM_NAMES = ("reconstruction", "contrastive", "ms_head", "ms_tail")
# Floor of the mode-seeking input distance: a collapsed batch must not divide by zero.
MIN_INPUT_DISTANCE = 1e-6


def masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean of the per-entry `values` (N,) over the valid entries; 0 when none is valid."""
    total = jnp.sum(jnp.where(valid, values, 0.0))
    return total / jnp.maximum(jnp.sum(valid), 1)


def mean_abs_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-entry mean absolute difference over every axis but the first: (N, ...) -> (N,)."""
    return jnp.mean(jnp.abs(a - b), axis=tuple(range(1, a.ndim)))


def masked_l1(prediction: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean absolute error over the elements of the valid entries (the form of both L_r parts)."""
    return masked_mean(mean_abs_distance(prediction, target), valid)


def relative_l1(a: jax.Array, b: jax.Array, valid: jax.Array) -> jax.Array:
    """mean|a - b| / mean|b| over the valid entries (0 where none is valid): how far `a` is from copying `b`."""
    scale = jnp.maximum(masked_mean(jnp.mean(jnp.abs(b), axis=tuple(range(1, b.ndim))), valid), MIN_INPUT_DISTANCE)
    return masked_mean(mean_abs_distance(a, b), valid) / scale


def pair_cross_entropy(logits: jax.Array, targets: jax.Array, valid: jax.Array) -> jax.Array:
    """Softmax cross-entropy of Q's 2-way logits (N, 2) against 0 = different / 1 = same class."""
    targets = jnp.broadcast_to(targets, logits.shape[:1]).astype(jnp.int32)
    return masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets), valid)


def mode_seeking(outputs_a: jax.Array, outputs_b: jax.Array, inputs_a: jax.Array, inputs_b: jax.Array,
                 valid: jax.Array, eps: float) -> jax.Array:
    """MSGAN's mode-seeking loss 1 / (ratio + eps), ratio = output distance / input distance.

    Both distances are mean absolute differences averaged over the valid entries; the input distance
    is floored at MIN_INPUT_DISTANCE. On a collapsed batch the loss is then 1 / eps with a finite
    gradient, which is why eps defaults to 0.01 and not MSGAN's 1e-5 (a 1e5 loss on a constant batch).
    """
    if not eps > 0:
        raise ValueError(f"ms_eps={eps} must be > 0; the mode-seeking loss is 1 / (ratio + ms_eps).")
    output_distance = masked_mean(mean_abs_distance(outputs_a, outputs_b), valid)
    input_distance = jnp.maximum(masked_mean(mean_abs_distance(inputs_a, inputs_b), valid), MIN_INPUT_DISTANCE)
    return jnp.where(jnp.any(valid), 1.0 / (output_distance / input_distance + eps), 0.0)


def safa_total_loss(terms: Mapping[str, jax.Array], safa_config: Any) -> jax.Array:
    """lambda_r L_r + lambda_c L_c + lambda_h L_ms^h + lambda_t L_ms^t over the switched-on terms.

    A switched-off term is left out of the sum (not multiplied by 0), so it adds exactly 0 even if a
    caller passes a non-finite value for it. `safa_config` is `config.safa`.
    """
    total = jnp.zeros((), jnp.float32)
    for name in TERM_NAMES:
        if getattr(safa_config, f"use_{name}"):
            total = total + getattr(safa_config, f"lambda_{name}") * terms[name]
    return total
