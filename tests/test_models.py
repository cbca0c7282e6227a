"""Backbone tests: ResNet-32's reference size and shapes, option-A shortcuts, padding, heads, the SAFA split."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from safa_jax.models import HEADS, MODEL_NAMES, build_model
from safa_jax.models.heads import NormedLinear, resolve_head, tau_normalized_linear
from safa_jax.models.layer_ops import XLA_LAYERS
from safa_jax.models.resnet_cifar import BasicBlock, ResNetCifar, option_a_shortcut


def _tiny_model(head: str = "linear") -> ResNetCifar:
    return build_model(
        "resnet32", num_classes=3, in_channels=3, width=4, blocks_per_stage=1, head=head, rngs=nnx.Rngs(0)
    )


def _images(batch: int, size: int, seed: int = 0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


@pytest.fixture(scope="module")
def resnet32() -> ResNetCifar:
    return build_model(
        "resnet32", num_classes=10, in_channels=3, width=16, blocks_per_stage=5, head="linear", rngs=nnx.Rngs(0)
    )


def _param_count(model: nnx.Module) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_resnet32_has_reference_parameter_count_and_depth(resnet32):
    stem = 3 * 16 * 9 + 2 * 16  # conv 3->16, BN scale and bias
    stage1 = 5 * (2 * 16 * 16 * 9 + 2 * 2 * 16)  # 5 blocks of two 16->16 convs and two BNs
    stage2 = (16 * 32 * 9 + 32 * 32 * 9 + 2 * 2 * 32) + 4 * (2 * 32 * 32 * 9 + 2 * 2 * 32)
    stage3 = (32 * 64 * 9 + 64 * 64 * 9 + 2 * 2 * 64) + 4 * (2 * 64 * 64 * 9 + 2 * 2 * 64)
    linear_head = 64 * 10 + 10
    assert (stem, stage1, stage2, stage3) == (464, 23_360, 88_192, 351_488)
    assert stem + stage1 + stage2 + stage3 + linear_head == 464_154
    assert _param_count(resnet32) == 464_154  # REFERENCE.md: "about 0.46 M parameters for 10 classes"
    # The reference counts layers as weights with more than one axis: 31 convs and the classifier.
    weight_matrices = [leaf for leaf in jax.tree.leaves(nnx.state(resnet32, nnx.Param)) if leaf.ndim > 1]
    assert len(weight_matrices) == 32

    normed = nnx.eval_shape(
        lambda: build_model(
            "resnet32", num_classes=10, in_channels=3, width=16, blocks_per_stage=5, head="normed", rngs=nnx.Rngs(0)
        )
    )
    assert _param_count(normed) == 464_154 - 10  # the cosine head has no bias


def test_resnet32_shapes_for_cifar_inputs(resnet32):
    images = _images(2, 32)
    expected = {1: (32, 32, 16), 2: (16, 16, 32), 3: (8, 8, 64)}
    for stage, shape in expected.items():
        assert resnet32.stage_channels(stage) == shape[2]
        assert resnet32.feature_shape(stage, 32) == shape
        assert resnet32.lower(images, stage, train=False).shape == (2, *shape)
        assert resnet32.upper(jnp.zeros((2, *shape)), stage, train=False).shape == (2, 64)
    assert resnet32(images, train=False).shape == (2, 10)


def test_feature_shape_rounds_odd_sides_up():
    model = _tiny_model()
    images = _images(1, 9)
    assert [model.feature_shape(stage, 9) for stage in (1, 2, 3)] == [(9, 9, 4), (5, 5, 8), (3, 3, 16)]
    for stage in (1, 2, 3):
        features = nnx.eval_shape(lambda model, images: model.lower(images, stage, train=False), model, images)
        assert features.shape[1:] == model.feature_shape(stage, 9)


def test_initialisation_matches_pytorch_reference(resnet32):
    # Conv weights: untruncated Kaiming normal, std sqrt(2 / fan_in) with fan_in = 3 * 3 * 64.
    conv_kernel = np.asarray(resnet32.stages[2][4].conv2.kernel[...])
    std = np.sqrt(2.0 / (3 * 3 * 64))
    assert conv_kernel.std() == pytest.approx(std, rel=0.03)
    assert np.abs(conv_kernel).max() > 3.5 * std  # a truncated normal stops at 2 std
    # Linear head: Kaiming weight (fan_in 64), PyTorch default bias uniform(-1/8, 1/8).
    assert np.asarray(resnet32.head.kernel[...]).std() == pytest.approx(np.sqrt(2.0 / 64), rel=0.15)
    bias = np.asarray(resnet32.head.bias[...])
    assert np.all(np.abs(bias) <= 1.0 / 8) and np.any(bias != 0)
    # BatchNorm starts as the identity: scale 1, bias 0, running mean 0, running variance 1.
    bn = resnet32.stem_bn
    assert np.all(bn.scale[...] == 1) and np.all(bn.bias[...] == 0)
    assert np.all(bn.mean[...] == 0) and np.all(bn.var[...] == 1)


def test_option_a_shortcut_against_hand_built_expectation():
    x = jnp.arange(32, dtype=jnp.float32).reshape(1, 4, 4, 2)  # x[0, h, w, c] = 8h + 2w + c
    out = option_a_shortcut(x, planes=4)  # 2 channels -> 4, one zero plane on each side
    expected = np.zeros((1, 2, 2, 4), np.float32)
    expected[0, :, :, 1] = [[0, 4], [16, 20]]  # channel 0 at pixels (0,0), (0,2), (2,0), (2,2)
    expected[0, :, :, 2] = [[1, 5], [17, 21]]  # channel 1 at the same pixels
    np.testing.assert_array_equal(out, expected)


def test_downsampling_block_with_zero_residual_is_relu_of_option_a_shortcut():
    block = BasicBlock(2, 4, stride=2, ops=XLA_LAYERS, rngs=nnx.Rngs(0))
    block.conv2.kernel[...] = jnp.zeros_like(block.conv2.kernel[...])
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 2))
    # In eval mode a fresh BN maps 0 to 0, so only the shortcut reaches the final ReLU.
    np.testing.assert_allclose(block(x, train=False), jax.nn.relu(option_a_shortcut(x, 4)))


def test_identity_block_with_zero_residual_is_relu_of_input():
    block = BasicBlock(4, 4, stride=1, ops=XLA_LAYERS, rngs=nnx.Rngs(0))
    block.conv2.kernel[...] = jnp.zeros_like(block.conv2.kernel[...])
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 4))
    np.testing.assert_allclose(block(x, train=False), jax.nn.relu(x))


def test_strided_conv_pads_one_pixel_on_each_side_like_pytorch():
    # PyTorch padding=1, stride 2: output pixel i sees input rows 2i-1..2i+1, so an impulse at
    # (1, 1) reaches outputs (0..1, 0..1). "SAME" padding (0, 1) would reach only (0, 0).
    block = BasicBlock(2, 4, stride=2, ops=XLA_LAYERS, rngs=nnx.Rngs(0))
    block.conv1.kernel[...] = jnp.ones_like(block.conv1.kernel[...])
    impulse = jnp.zeros((1, 4, 4, 2)).at[0, 1, 1, 0].set(1.0)
    out = block.conv1(impulse)
    expected = np.zeros((1, 2, 2, 4), np.float32)
    expected[0, :2, :2, :] = 1.0
    np.testing.assert_array_equal(out, expected)


def test_normed_linear_outputs_cosines():
    layer = NormedLinear(5, 3, rngs=nnx.Rngs(0))
    weight = np.asarray(layer.weight[...], np.float64)
    # Init: uniform(-1, 1) columns rescaled to unit norm, as the reference's renorm(2, 1, 1e-5) * 1e5.
    np.testing.assert_allclose(np.linalg.norm(weight, axis=0), 1.0, rtol=1e-6)
    assert len(np.unique(np.round(weight, 6))) == weight.size

    x = np.asarray(jax.random.normal(jax.random.key(2), (4, 5)), np.float64) * 7.0
    expected = np.array(
        [
            [x[i] @ weight[:, j] / (np.linalg.norm(x[i]) * np.linalg.norm(weight[:, j])) for j in range(3)]
            for i in range(4)
        ]
    )
    out = np.asarray(layer(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert np.all(np.abs(out) <= 1.0 + 1e-6)
    # A feature parallel to a weight column has cosine 1 with it; a zero feature gives 0, not NaN.
    parallel = jnp.asarray(3.0 * weight[:, 1:2].T, jnp.float32)
    assert float(layer(parallel)[0, 1]) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(layer(jnp.zeros((1, 5))), np.zeros((1, 3)))


def test_normed_head_logits_are_cosines():
    logits = _tiny_model(head="normed")(_images(3, 8), train=False)
    assert logits.shape == (3, 3)
    assert np.all(np.abs(np.asarray(logits)) <= 1.0 + 1e-6)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("train", [False, True])
def test_lower_then_upper_equals_full_forward(head, train):
    model = _tiny_model(head=head)
    images = _images(4, 8)
    full = model(images, train=train)
    for stage in (1, 2, 3):
        split = model.classify(model.upper(model.lower(images, stage, train=train), stage, train=train))
        np.testing.assert_allclose(split, full, rtol=1e-5, atol=1e-6)


def test_pure_function_over_split_state_matches_module_call():
    model = _tiny_model()
    images = _images(2, 8)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    @jax.jit
    def apply(params, batch_stats, images):
        return nnx.merge(graphdef, params, batch_stats)(images, train=False)

    np.testing.assert_allclose(apply(params, batch_stats, images), model(images, train=False), rtol=1e-5, atol=1e-6)


def test_train_mode_updates_batch_stats_and_eval_mode_does_not():
    model = _tiny_model()
    images = _images(4, 8)
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    model(images, train=False)
    after_eval = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, after_eval, before)

    stem_out = np.asarray(model.stem_conv(images))
    model(images, train=True)
    # PyTorch momentum 0.1: running = 0.9 * running + 0.1 * batch statistic (variance biased in Flax).
    np.testing.assert_allclose(model.stem_bn.mean[...], 0.1 * stem_out.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.stem_bn.var[...], 0.9 + 0.1 * stem_out.var(axis=(0, 1, 2)), rtol=1e-4)
    last_bn = model.stages[2][0].bn2
    assert not np.allclose(last_bn.mean[...], 0.0) and not np.allclose(last_bn.var[...], 1.0)


def test_registry_lists_names_and_heads():
    assert MODEL_NAMES == ("resnet32", "resnet50", "resnet152", "resnext50_32x4d")
    assert HEADS == ("linear", "normed")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "resnet33"}, "'resnet33'.*resnet32"),
        ({"head": "cosine"}, "'cosine'.*linear, normed"),
        ({"width": 0}, "width.*got 0"),
        ({"width": 3}, "width.*got 3"),
        ({"blocks_per_stage": 0}, "blocks_per_stage.*got 0"),
        ({"num_classes": 0}, "num_classes.*got 0"),
        ({"in_channels": 0}, "in_channels.*got 0"),
    ],
)
def test_build_model_rejects_bad_arguments(overrides, message):
    arguments = {
        "name": "resnet32", "num_classes": 3, "in_channels": 3, "width": 4, "blocks_per_stage": 1, "head": "linear"
    }
    arguments.update(overrides)
    name = arguments.pop("name")
    with pytest.raises(ValueError, match=message):
        build_model(name, **arguments, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("stage", [0, 4, 2.0])
def test_bad_stage_is_rejected_with_its_value(stage):
    model = _tiny_model()
    images = _images(1, 8)
    message = rf"1\.\.3, got {stage}$"
    with pytest.raises(ValueError, match=message):
        model.lower(images, stage, train=False)
    with pytest.raises(ValueError, match=message):
        model.upper(images, stage, train=False)
    with pytest.raises(ValueError, match=message):
        model.feature_shape(stage, 8)
    with pytest.raises(ValueError, match=message):
        model.stage_channels(stage)


def test_tau_normalisation_by_hand():
    # Class columns (3, 4), (1, 0), (0, 2): norms 5, 1, 2. tau = 1 gives unit columns, tau = 0.5 divides by
    # sqrt(5), 1, sqrt(2); the bias goes to 0 (the authors' tau-normalised classifier has none).
    head = {"kernel": jnp.array([[3.0, 1.0, 0.0], [4.0, 0.0, 2.0]]), "bias": jnp.array([0.5, -1.0, 2.0])}
    unit = tau_normalized_linear(head, 1.0)
    np.testing.assert_allclose(unit["kernel"], [[0.6, 1.0, 0.0], [0.8, 0.0, 1.0]], rtol=1e-6)
    np.testing.assert_array_equal(unit["bias"], [0.0, 0.0, 0.0])
    half = tau_normalized_linear(head, 0.5)
    np.testing.assert_allclose(half["kernel"], [[3 / 5**0.5, 1.0, 0.0], [4 / 5**0.5, 0.0, 2 / 2**0.5]], rtol=1e-6)
    np.testing.assert_array_equal(tau_normalized_linear(head, 0.0)["kernel"], head["kernel"])
    assert (resolve_head("auto", "ldam"), resolve_head("auto", "ce"), resolve_head("linear", "ldam")) == (
        "normed", "linear", "linear")
