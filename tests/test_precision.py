"""bfloat16 compute (`config.model.compute_dtype`): float32 state kept, agreement with float32 within tolerances.

The tolerances are about 4x what was measured on the tiny model (3 steps, lr 0.1, batch 16, CE loss,
on CPU): loss relative difference at most 5.4e-3 (plain) and 1.5e-3 (SAFA); parameters, as the relative
L2 norm of the difference over each module's whole parameter vector, 4.9e-3 (plain) and 7.0e-3 (SAFA).
Single small leaves (BatchNorm biases near 0) differ by up to 20% relative, so leaves are not compared
one by one.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safa_jax import evaluate, sharding
from safa_jax.config_checks import validate_config
from safa_jax.experiment import build_experiment
from safa_jax.precision import Precision
from safa_jax.data.step_input import make_input
from safa_jax.train import make_train_step
from tests.helpers import tiny_config, tiny_data

NUM_STEPS = 3
LOSS_RTOL = 2e-2
PARAM_RTOL = 3e-2  # on ||p_bf16 - p_f32|| / ||p_f32|| over all of one module's parameters.
STATS_RTOL = 5e-2  # the same for the BatchNorm running statistics.


def _config(safa: bool, compute_dtype: str):
    return tiny_config(model__compute_dtype=compute_dtype, method="safa" if safa else "plain", safa__start_epoch=0)


@functools.cache
def _three_steps(safa: bool, compute_dtype: str):
    """(final state, per-step metrics, experiment) of NUM_STEPS train steps on one device.

    With safa=True the augmented features join the classification loss from step 0 (start_epoch=0).
    """
    config = _config(safa, compute_dtype)
    experiment, state = build_experiment(config, data=tiny_data(), mesh=sharding.make_mesh(jax.devices()[:1]))
    batch_input = make_input(experiment, start_step=0)
    step_fn = make_train_step(experiment, batch_input, variant=safa)
    key = jax.random.key(config.seed)
    history = []
    for step in range(NUM_STEPS):
        state, metrics = step_fn(state, batch_input.batch_args(step), key)
        history.append(jax.device_get(metrics))
    return jax.device_get(state), history, experiment


def _relative_difference(a, b) -> float:
    flat_a = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(a)])
    flat_b = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(b)])
    return float(np.linalg.norm(flat_a - flat_b) / np.linalg.norm(flat_a))


@pytest.mark.parametrize("safa", [False, True], ids=["plain", "safa"])
def test_bfloat16_keeps_parameters_statistics_and_optimizer_state_float32(safa):
    """After bfloat16 steps every floating leaf of params, batch_stats and opt_state is still float32."""
    state, history, _ = _three_steps(safa, "bfloat16")
    assert int(state.step) == NUM_STEPS
    for name in ("params", "batch_stats", "opt_state"):
        leaves = [leaf for leaf in jax.tree.leaves(getattr(state, name)) if jnp.issubdtype(leaf.dtype, jnp.floating)]
        assert leaves, name
        assert {leaf.dtype for leaf in leaves} == {np.dtype(np.float32)}, name
    assert ("safa" in state.params) == safa
    for metrics in history:
        assert metrics["loss"].dtype == np.float32 and np.isfinite(metrics["loss"])
        assert metrics["grad_norm"].dtype == np.float32 and np.isfinite(metrics["grad_norm"])


@pytest.mark.parametrize("safa", [False, True], ids=["plain", "safa"])
def test_bfloat16_steps_agree_with_float32_but_differ(safa):
    """3 steps: loss within rtol 2e-2 of float32 at every step, parameters within a relative norm difference
    of 3e-2 per module and BatchNorm statistics within 5e-2 (see the module docstring), yet not identical."""
    state32, history32, _ = _three_steps(safa, "float32")
    state16, history16, _ = _three_steps(safa, "bfloat16")
    for m32, m16 in zip(history32, history16):
        np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=LOSS_RTOL)
    assert history16[0]["loss"] != history32[0]["loss"], "bfloat16 compute changed nothing"
    for module in state32.params:
        assert _relative_difference(state32.params[module], state16.params[module]) < PARAM_RTOL, module
        assert _relative_difference(state32.batch_stats[module], state16.batch_stats[module]) < STATS_RTOL, module
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state32.params),
                                                         jax.tree.leaves(state16.params)))


def test_bfloat16_eval_predictions_agree_with_float32():
    """The same trained parameters: float32 logits out either way, within 0.1 of each other, and the same
    predicted class on at least 90% of the test examples (measured: 0.015 max difference, 100% agreement)."""
    state, _, experiment = _three_steps(False, "float32")
    data = experiment.data
    params, stats = state.params["backbone"], state.batch_stats["backbone"]
    logits = {dtype: np.asarray(evaluate.make_predict_fn(experiment.backbone, data.mean, data.std,
                                                         compute_dtype=dtype)(params, stats, data.test_images))
              for dtype in ("float32", "bfloat16")}
    assert logits["bfloat16"].dtype == np.float32
    assert not np.array_equal(logits["float32"], logits["bfloat16"])
    np.testing.assert_allclose(logits["bfloat16"], logits["float32"], atol=0.1)
    agreement = np.mean(logits["float32"].argmax(-1) == logits["bfloat16"].argmax(-1))
    assert agreement >= 0.9


def test_float32_policy_is_the_identity():
    """compute_dtype="float32" returns its arguments themselves: the float32 path is the one without casts."""
    tree = {"w": jnp.ones(3), "n": jnp.arange(2)}
    policy = Precision("float32")
    assert policy.to_compute(tree) is tree and policy.to_float32(tree) is tree
    cast = Precision("bfloat16").to_compute(tree)
    assert cast["w"].dtype == jnp.bfloat16 and cast["n"].dtype == tree["n"].dtype


def test_unknown_compute_dtype_is_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"config\.model\.compute_dtype='float16'.*allowed: float32, bfloat16"):
        validate_config(tiny_config(model__compute_dtype="float16"))
    with pytest.raises(ValueError, match=r"compute_dtype='bf16'.*allowed: float32, bfloat16"):
        Precision("bf16")


def test_checkpoints_ignore_the_compute_dtype(tmp_path):
    """The saved state is float32 either way: a float32 checkpoint resumes or evaluates in bfloat16 and the
    reverse, and a checkpoint whose config predates the field still restores; other model fields still count."""
    from safa_jax.checkpointing import CheckpointMismatchError, check_compatible
    from safa_jax.experiment import config_record
    record = {dtype: config_record(tiny_config(model__compute_dtype=dtype)) for dtype in ("float32", "bfloat16")}
    check_compatible(record["float32"], record["bfloat16"], 4, 4, tmp_path)
    older = config_record(tiny_config())
    del older["model"]["compute_dtype"]
    check_compatible(older, record["bfloat16"], 4, 4, tmp_path)
    with pytest.raises(CheckpointMismatchError, match="width"):
        check_compatible(config_record(tiny_config(model__width=8)), record["bfloat16"], 4, 4, tmp_path)
