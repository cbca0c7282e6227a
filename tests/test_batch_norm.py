"""BatchNorm's folded normalisation (config.model.batch_norm): the same outputs, gradients, running statistics
and train steps as Flax's form, and a hand-computed case."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import three_augmented_steps, tiny_config, tiny_data
from safa_jax import sharding
from safa_jax.experiment import build_experiment
from safa_jax.models.batch_norm import BatchNorm
from safa_jax.state import NnxBridge

ONE_DEVICE = sharding.make_mesh(jax.devices()[:1])


def _layer(form: str, channels: int = 3) -> BatchNorm:
    layer = BatchNorm(channels, momentum=0.9, epsilon=1e-5, form=form, rngs=nnx.Rngs(0))
    layer.scale[...] = jnp.asarray([1.5, -0.5, 2.0][:channels])
    layer.bias[...] = jnp.asarray([0.25, 1.0, -3.0][:channels])
    return layer


def test_hand_computed_values_and_running_statistics():
    """One channel holding 1, 2, 3, 6: mean 3, biased variance 3.5, epsilon 1e-5."""
    layer = _layer("folded", channels=1)
    x = jnp.asarray([1.0, 2.0, 3.0, 6.0]).reshape(4, 1)
    y = layer(x, use_running_average=False)
    expected = 1.5 * (np.array([1.0, 2.0, 3.0, 6.0]) - 3.0) / np.sqrt(3.5 + 1e-5) + 0.25
    np.testing.assert_allclose(np.asarray(y).ravel(), expected, rtol=1e-6)
    np.testing.assert_allclose(layer.mean[...], [0.1 * 3.0], rtol=1e-6)  # momentum 0.9 from 0
    np.testing.assert_allclose(layer.var[...], [0.9 * 1.0 + 0.1 * 3.5], rtol=1e-6)  # from 1
    y_eval = layer(x, use_running_average=True)
    expected_eval = 1.5 * (np.array([1.0, 2.0, 3.0, 6.0]) - 0.3) / np.sqrt(1.25 + 1e-5) + 0.25
    np.testing.assert_allclose(np.asarray(y_eval).ravel(), expected_eval, rtol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_folded_matches_flax_outputs_gradients_and_statistics(masked):
    """Channels with a mean far from 0 (where folding loses most to rounding) included."""
    key_x, key_t = jax.random.split(jax.random.key(0))
    x = jax.random.normal(key_x, (6, 5, 5, 3)) * jnp.asarray([1.0, 0.1, 3.0]) + jnp.asarray([0.0, 2.0, -5.0])
    target = jax.random.normal(key_t, x.shape)
    mask = jnp.asarray([True, True, False, True, False, True]).reshape(6, 1, 1, 1) if masked else None

    def run(form):
        bridge, params, stats = NnxBridge.split(_layer(form))

        def loss(params, x):
            module = bridge.merge(params, stats)
            y = module(x, use_running_average=False, mask=mask)
            return jnp.sum(jnp.sin(y) * target), (y, NnxBridge.batch_stats_of(module))

        (_, (y, stats)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
        return y, grads, stats

    y_flax, grads_flax, stats_flax = run("flax")
    y_folded, grads_folded, stats_folded = run("folded")
    np.testing.assert_allclose(y_folded, y_flax, rtol=1e-5, atol=2e-6)
    for got, expected in zip(jax.tree.leaves(grads_folded), jax.tree.leaves(grads_flax)):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    for got, expected in zip(jax.tree.leaves(stats_folded), jax.tree.leaves(stats_flax)):
        np.testing.assert_array_equal(got, expected)


def test_train_steps_match_flax_form():
    """Three ResNet + SAFA train steps from the same state: losses and parameters agree across the two forms."""
    def run(form):
        config = tiny_config(model__batch_norm=form, model__conv_backend="xla", method="safa",
                             safa__start_epoch=0)
        return three_augmented_steps(config, ONE_DEVICE)

    losses_flax, state_flax, program_flax = run("flax")
    losses_folded, state_folded, program_folded = run("folded")
    assert program_folded != program_flax  # two programs, not one run twice
    np.testing.assert_allclose(losses_folded, losses_flax, rtol=1e-4)
    for got, expected in zip(jax.tree.leaves((state_folded.params, state_folded.batch_stats)),
                             jax.tree.leaves((state_flax.params, state_flax.batch_stats))):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


def test_unknown_form_is_refused_before_data_loads():
    config = tiny_config(model__batch_norm="fused")
    with pytest.raises(ValueError, match=r"unknown config.model.batch_norm='fused'; allowed: folded, flax"):
        build_experiment(config, data=None, mesh=ONE_DEVICE)  # data=None: would load digits if checks passed


@pytest.mark.parametrize("form", ["flax", "folded"])
def test_every_batch_norm_of_the_models_takes_the_configured_form(form):
    config = tiny_config(model__batch_norm=form, method="safa")
    experiment, state = build_experiment(config, data=tiny_data(), mesh=ONE_DEVICE)
    merged = [experiment.backbone.merge(state.params["backbone"], state.batch_stats["backbone"]),
              experiment.method.bridge.merge(state.params["safa"], state.batch_stats["safa"])]
    forms = [[node.form for _, node in nnx.iter_graph(module) if isinstance(node, BatchNorm)] for module in merged]
    assert [len(found) > 0 for found in forms] == [True, True]  # the backbone's and SAFA's BatchNorms
    assert {form_ for found in forms for form_ in found} == {form}
