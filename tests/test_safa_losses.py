"""SAFA's loss formulas against hand-computed values on tiny tensors."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from safa_jax.losses import safa as safa_losses


def _array(values) -> jax.Array:
    return jnp.asarray(values, dtype=jnp.float32)


def test_masked_mean_averages_valid_entries_only_and_is_zero_without_any():
    values = _array([1.0, 2.0, 3.0, 10.0])
    assert float(safa_losses.masked_mean(values, jnp.array([True, True, True, False]))) == pytest.approx(2.0)
    assert float(safa_losses.masked_mean(values, jnp.zeros(4, dtype=bool))) == 0.0


def test_masked_l1_is_the_mean_absolute_error_over_valid_entries():
    # Entry 0: |1| and |-1| -> 1. Entry 1: |2| and |4| -> 3. Entry 2 is invalid.
    prediction = _array([[1.0, -1.0], [2.0, 4.0], [100.0, 100.0]]).reshape(3, 1, 1, 2)
    target = jnp.zeros_like(prediction)
    assert float(safa_losses.masked_l1(prediction, target, jnp.array([True, False, False]))) == pytest.approx(1.0)
    assert float(safa_losses.masked_l1(prediction, target, jnp.array([True, True, False]))) == pytest.approx(2.0)


def test_pair_cross_entropy_against_hand_computed_softmax():
    # Softmax of (0, ln 3) is (1/4, 3/4); the second, invalid entry must not count.
    logits = _array([[0.0, math.log(3.0)], [50.0, -50.0]])
    valid = jnp.array([True, False])
    assert float(safa_losses.pair_cross_entropy(logits, 1, valid)) == pytest.approx(math.log(4.0 / 3.0), rel=1e-6)
    assert float(safa_losses.pair_cross_entropy(logits, 0, valid)) == pytest.approx(math.log(4.0), rel=1e-6)
    per_entry = safa_losses.pair_cross_entropy(logits[:1], jnp.array([True]), valid[:1])
    assert float(per_entry) == pytest.approx(math.log(4.0 / 3.0), rel=1e-6)


def test_mode_seeking_is_one_over_ratio_of_mean_distances_plus_eps():
    # Entry 0: output distance mean(2, 0) = 1, input distance 0.5.
    # Entry 1: output distance 0, input distance 1.5.
    # Entry 2 is invalid and far apart everywhere.
    # Ratio of the valid means: (1 + 0) / 2 / ((0.5 + 1.5) / 2) = 0.5, so the loss is 1 / 0.51
    # (a mean of per-entry ratios would give 1 / 1.01).
    outputs_a = _array([[1.0, 2.0], [4.0, 4.0], [0.0, 0.0]]).reshape(3, 1, 1, 2)
    outputs_b = _array([[3.0, 2.0], [4.0, 4.0], [90.0, 90.0]]).reshape(3, 1, 1, 2)
    inputs_a = _array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]).reshape(3, 1, 1, 2)
    inputs_b = _array([[0.5, 0.5], [1.5, 1.5], [0.001, 0.001]]).reshape(3, 1, 1, 2)
    valid = jnp.array([True, True, False])
    loss = safa_losses.mode_seeking(outputs_a, outputs_b, inputs_a, inputs_b, valid, eps=0.01)
    assert float(loss) == pytest.approx(1.0 / 0.51, rel=1e-6)


def test_mode_seeking_is_finite_with_finite_gradient_on_a_constant_batch():
    constant = jnp.ones((4, 2, 2, 3))
    valid = jnp.ones(4, dtype=bool)

    def loss(outputs_a):
        return safa_losses.mode_seeking(outputs_a, constant, constant, constant, valid, eps=0.01)

    value, gradient = jax.value_and_grad(loss)(constant)
    assert float(value) == pytest.approx(100.0)  # ratio 0, so 1 / eps.
    assert bool(jnp.all(jnp.isfinite(gradient)))


def test_mode_seeking_is_zero_without_valid_entries():
    a = jnp.zeros((2, 1, 1, 1))
    b = jnp.ones((2, 1, 1, 1))
    assert float(safa_losses.mode_seeking(a, b, a, b, jnp.zeros(2, dtype=bool), eps=0.01)) == 0.0


@pytest.mark.parametrize("eps", [0.0, -0.1])
def test_mode_seeking_rejects_non_positive_eps(eps):
    a = jnp.zeros((1, 1, 1, 1))
    with pytest.raises(ValueError, match="ms_eps"):
        safa_losses.mode_seeking(a, a, a, a, jnp.ones(1, dtype=bool), eps=eps)


def _safa_config(**switches) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict({
        "lambda_reconstruction": 1.0, "lambda_contrastive": 0.1, "lambda_ms_head": 0.01, "lambda_ms_tail": 0.01,
    })
    for name in safa_losses.TERM_NAMES:
        config[f"use_{name}"] = switches.get(name, True)
    return config


def test_total_loss_is_the_lambda_weighted_sum():
    terms = {"reconstruction": 1.0, "contrastive": 2.0, "ms_head": 3.0, "ms_tail": 4.0}
    total = safa_losses.safa_total_loss(terms, _safa_config())
    assert float(total) == pytest.approx(1.0 + 0.2 + 0.03 + 0.04, rel=1e-6)


def test_switched_off_term_adds_exactly_zero_even_if_not_finite():
    terms = {"reconstruction": 1.0, "contrastive": 2.0, "ms_head": 3.0, "ms_tail": np.nan}
    total = safa_losses.safa_total_loss(terms, _safa_config(ms_tail=False))
    assert float(total) == pytest.approx(1.0 + 0.2 + 0.03, rel=1e-6)
