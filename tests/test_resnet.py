"""ResNet-50 / ResNet-152 tests: published sizes, depth, shapes, torchvision's init, the SAFA split, the registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from safa_jax.models import MODEL_NAMES, build_model
from safa_jax.models.layer_ops import XLA_LAYERS
from safa_jax.models.resnet import RESNET50_LAYERS, Bottleneck, ResNet, resnet50, torchvision_head


def _abstract(name: str, num_classes: int = 1000, **overrides) -> ResNet:
    """The model without its weights (shapes only), from the registry as the training setup builds it.

    blocks_per_stage=5 is what the large-scale configs inherit from the CIFAR defaults.
    """
    arguments = {"in_channels": 3, "width": 64, "blocks_per_stage": 5, "head": "linear", **overrides}
    return nnx.eval_shape(lambda: build_model(name, num_classes=num_classes, **arguments, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def abstract_models() -> dict[str, ResNet]:
    return {name: _abstract(name) for name in ("resnet50", "resnet152")}


def _output_shape(model: ResNet, method: str, inputs: jax.ShapeDtypeStruct, *args) -> tuple[int, ...]:
    """Shape of `model.method(inputs, *args, train=False)`, traced without computing anything."""

    def call(model: ResNet, inputs: jax.Array) -> jax.Array:
        return getattr(model, method)(inputs, *args, train=False)

    return nnx.eval_shape(call, model, inputs).shape


def _params(model: nnx.Module) -> list:
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def _random_resnet50(num_classes: int, seed: int = 0) -> ResNet:
    """A full-width ResNet-50 with random weights and BN statistics drawn by numpy.

    Building it with its own initialisers compiles one random op per kernel shape, which takes
    tens of seconds on a small CPU; the initialisers have their own test on one block.
    """
    model = _abstract("resnet50", num_classes)
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    for path, leaf in flat.items():
        if path[-1] == "kernel":  # variance 1 / fan_in keeps activations of order one
            value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        elif path[-1] in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:  # BN bias and running mean, fc bias
            value = rng.normal(scale=0.1, size=leaf.shape)
        flat[path] = jnp.asarray(value, leaf.dtype)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
    return nnx.merge(graphdef, state)


@pytest.mark.parametrize(
    "name, layers, expected_params, depth",
    [("resnet50", (3, 4, 6, 3), 25_557_032, 50), ("resnet152", (3, 8, 36, 3), 60_192_808, 152)],
)
def test_parameter_count_and_depth_match_torchvision(abstract_models, name, layers, expected_params, depth):
    model = abstract_models[name]
    assert name in MODEL_NAMES
    assert tuple(len(stage) for stage in model.stages) == layers
    assert sum(leaf.size for leaf in _params(model)) == expected_params  # torchvision's published sizes
    conv_kernels = [leaf for leaf in _params(model) if leaf.ndim == 4]
    projection_shortcuts = 4  # one 1x1 conv at the start of each stage
    # The depth counts the stem conv, three convs per bottleneck and the fc layer.
    assert len(conv_kernels) - projection_shortcuts + 1 == depth


def test_feature_shapes_at_224_px(abstract_models):
    expected = {1: (56, 56, 256), 2: (28, 28, 512), 3: (14, 14, 1024), 4: (7, 7, 2048)}
    model = abstract_models["resnet50"]
    images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    for stage, shape in expected.items():
        assert model.stage_channels(stage) == shape[2]
        assert model.feature_shape(stage, 224) == shape
        assert _output_shape(model, "lower", images, stage) == (2, *shape)
        features = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
        assert _output_shape(model, "upper", features, stage) == (2, 2048)
    assert _output_shape(model, "__call__", images) == (2, 1000)
    # ResNet-152 differs only in depth: the same shapes at every stage.
    resnet152 = abstract_models["resnet152"]
    assert [resnet152.feature_shape(stage, 224) for stage in expected] == list(expected.values())
    assert _output_shape(resnet152, "lower", images, 3) == (2, 14, 14, 1024)


def test_feature_shape_rounds_odd_sides_up(abstract_models):
    model = abstract_models["resnet50"]
    images = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32)
    # Stem conv 33 -> 17, max pool -> 9 (stage 1), then 5, 3, 2.
    assert [model.feature_shape(stage, 33)[:2] for stage in (1, 2, 3, 4)] == [(9, 9), (5, 5), (3, 3), (2, 2)]
    for stage in (1, 2, 3, 4):
        assert _output_shape(model, "lower", images, stage)[1:] == model.feature_shape(stage, 33)


@pytest.mark.parametrize("train", [False, True])
def test_lower_then_upper_equals_full_forward_at_every_stage(train):
    model = _random_resnet50(num_classes=10)
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    full = model(images, train=train)
    assert np.abs(np.asarray(full)).max() > 1e-2  # the check below would pass on a dead network
    for stage in (1, 2, 3, 4):
        features = model.lower(images, stage, train=train)
        assert features.shape == (2, *model.feature_shape(stage, 32))
        split = model.classify(model.upper(features, stage, train=train))
        np.testing.assert_allclose(split, full, rtol=1e-5, atol=1e-5)


def test_initialisation_matches_torchvision():
    # Convs: kaiming_normal_(mode="fan_out"): std sqrt(2 / (3 * 3 * 512)) for the 3x3 conv and
    # sqrt(2 / 2048) for the 1x1 expansion conv 512 -> 2048 (fan_in's would be sqrt(2 / 512)).
    block = Bottleneck(2048, 512, 1, ops=XLA_LAYERS, rngs=nnx.Rngs(0))
    assert block.conv2.kernel.shape == (3, 3, 512, 512)
    assert np.asarray(block.conv2.kernel[...]).std() == pytest.approx(np.sqrt(2.0 / (9 * 512)), rel=0.02)
    assert np.asarray(block.conv3.kernel[...]).std() == pytest.approx(np.sqrt(2.0 / 2048), rel=0.02)
    # BatchNorm: scale 1, bias 0, running mean 0, variance 1; identity block: no projection.
    assert np.all(block.bn3.scale[...] == 1) and np.all(block.bn3.bias[...] == 0)
    assert np.all(block.bn3.mean[...] == 0) and np.all(block.bn3.var[...] == 1)
    assert block.downsample is None
    # fc: PyTorch's default Linear init, weight and bias uniform(-1/sqrt(2048), 1/sqrt(2048)).
    fc = torchvision_head("linear", 2048, 1000, rngs=nnx.Rngs(0))
    bound = 1.0 / np.sqrt(2048)
    kernel = np.asarray(fc.kernel[...])
    assert np.abs(kernel).max() <= bound
    assert kernel.std() == pytest.approx(bound / np.sqrt(3.0), rel=0.02)
    bias = np.asarray(fc.bias[...])
    assert np.all(np.abs(bias) <= bound) and np.any(bias != 0)


def test_projection_shortcut_exactly_where_the_shape_changes(abstract_models):
    model = abstract_models["resnet50"]
    has_projection = [[block.downsample is not None for block in stage] for stage in model.stages]
    # Stage 1's first block widens 64 -> 256 at stride 1; stages 2..4 start with stride 2.
    assert has_projection == [[True] + [False] * (blocks - 1) for blocks in RESNET50_LAYERS]
    # v1.5: the stride sits on the 3x3 conv, not on the first 1x1.
    first_of_stage2 = model.stages[1][0]
    assert first_of_stage2.conv1.strides == 1 and first_of_stage2.conv2.strides == 2
    assert first_of_stage2.downsample[0].strides == 2


def test_stem_conv_pads_three_pixels_on_each_side_like_pytorch():
    # PyTorch padding=3, stride 2: output pixel i sees input rows 2i-3..2i+3, so an impulse at
    # (1, 1) reaches outputs 0..2 in each direction. "SAME" on 8 px pads (2, 3): only 0..1.
    model = nnx.eval_shape(lambda: resnet50(3, width=4, rngs=nnx.Rngs(0)))
    model.stem_conv.kernel.set_value(jnp.ones((7, 7, 3, 4)))
    impulse = jnp.zeros((1, 8, 8, 3)).at[0, 1, 1, 0].set(1.0)
    expected = np.zeros((1, 4, 4, 4), np.float32)
    expected[0, :3, :3, :] = 1.0
    np.testing.assert_array_equal(model.stem_conv(impulse), expected)


def test_registry_ignores_blocks_per_stage_and_passes_the_rest():
    model = _abstract("resnet50", num_classes=5, in_channels=1, width=8, blocks_per_stage=2, head="normed")
    assert tuple(len(stage) for stage in model.stages) == RESNET50_LAYERS
    assert model.stem_conv.kernel.shape == (7, 7, 1, 8)
    assert model.stage_channels(4) == 8 * 8 * 4
    assert model.head.weight.shape == (256, 5)  # the cosine head, (in, out)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"head": "cosine"}, r"unknown head 'cosine'; allowed: linear, normed"),
        ({"width": 0}, r"width must be at least 1 \(64 in torchvision\), got 0"),
        ({"layers": (3, 4, 6)}, r"layers must be 4 block counts of at least 1, got \(3, 4, 6\)"),
        ({"num_classes": 0}, r"num_classes must be at least 1, got 0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    arguments = {"num_classes": 10, "layers": RESNET50_LAYERS, "width": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        ResNet(arguments.pop("num_classes"), **arguments, rngs=nnx.Rngs(0))


def test_bad_stage_is_named(abstract_models):
    model = abstract_models["resnet50"]
    for stage in (0, 5):
        with pytest.raises(ValueError, match=rf"stage must be one of 1\.\.4, got {stage}"):
            model.stage_channels(stage)
