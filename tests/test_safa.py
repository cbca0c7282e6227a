"""SAFA's modules and forward pass: shapes, masking, gradient flow, ablation switches, jit and sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from configs.common import get_config
from safa_jax import sharding
from safa_jax.losses import safa as safa_losses
from safa_jax.models import layers, safa
from safa_jax.models.layer_ops import XLA_LAYERS

CHANNELS = 4
SIZE = 4
# Classes 0 and 1 are the head classes (head_ratio 0.5 of 4 classes).
CLASS_COUNTS = [10, 8, 3, 2]
IS_HEAD_CLASS = safa.head_class_mask(CLASS_COUNTS, 0.5)
# Class 0: 3 samples, class 1: 2 -> 5 head pairs; classes 2, 3: 3 tail samples.
MIXED_LABELS = np.array([0, 0, 0, 1, 1, 2, 3, 3])
ALL_HEAD_LABELS = np.array([0, 0, 1, 1, 0, 1, 0, 1])
NO_HEAD_PAIR_LABELS = np.array([0, 1, 2, 3, 2, 3, 2, 3])  # one sample of each head class.


def _default_safa_config(**overrides):
    config = get_config().safa
    config.update(overrides)
    return config


def _features(batch: int = 8, seed: int = 1) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (batch, SIZE, SIZE, CHANNELS))


def _augment(modules, features, labels, safa_config=None, seed: int = 2) -> safa.SafaOutput:
    return safa.safa_augment(modules, features, jnp.asarray(labels), IS_HEAD_CLASS, jax.random.key(seed),
                             num_slots=-1, safa_config=safa_config or _default_safa_config())


def _pure_augment(modules, safa_config=None):
    """safa_augment as a pure function of (params, batch_stats, features, labels, key), as the train step runs it."""
    graphdef, params, batch_stats = nnx.split(modules, nnx.Param, nnx.BatchStat)

    def augment(params, batch_stats, features, labels, key):
        merged = nnx.merge(graphdef, params, batch_stats)
        return safa.safa_augment(merged, features, labels, IS_HEAD_CLASS, key, num_slots=-1,
                                 safa_config=safa_config or _default_safa_config())

    return augment, params, batch_stats


@pytest.fixture(scope="module")
def modules() -> safa.SafaModules:
    return safa.SafaModules(CHANNELS, q_width=-1, rngs=nnx.Rngs(0))


# --- modules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "channels"), [
    (32, 16),  # ResNet-32 stage 1 at 32x32 input.
    (16, 32),  # stage 2 (the default placement).
    (8, 64),  # stage 3.
    (4, 2),  # a tiny width.
])
def test_module_outputs_have_the_feature_shape_and_q_gives_two_logits(size, channels):
    def run(features):
        modules = safa.SafaModules(channels, q_width=-1, rngs=nnx.Rngs(0))
        delta = modules.extract_delta(features, features[::-1], train=True)
        tail_delta = modules.delta_generator(jnp.concatenate([features, delta], axis=-1), train=True)
        generated = modules.apply_delta(features, tail_delta, train=True)
        return delta, tail_delta, generated, modules.contrastive(features, generated, train=True)

    # Shapes only: jax.eval_shape traces the real modules without compiling them.
    features = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
    delta, tail_delta, generated, logits = jax.eval_shape(run, features)
    assert delta.shape == tail_delta.shape == generated.shape == features.shape
    assert logits.shape == (2, 2)


def test_q_width_sets_the_contrastive_module_width():
    def contrastive_kernel_shapes(q_width):
        modules = nnx.eval_shape(lambda: safa.SafaModules(3, q_width=q_width, rngs=nnx.Rngs(0)))
        return modules.contrastive.block.conv.kernel.shape, modules.contrastive.classifier.kernel.shape

    assert contrastive_kernel_shapes(5) == ((3, 3, 6, 5), (5, 2))
    assert contrastive_kernel_shapes(-1) == ((3, 3, 6, 3), (3, 2))
    with pytest.raises(ValueError, match="q_width=0"):
        safa.SafaModules(3, q_width=0, rngs=nnx.Rngs(0))


def test_kernel_size_one_gives_1x1_modules_with_unchanged_outputs_shapes():
    modules = safa.SafaModules(3, q_width=-1, kernel_size=1, rngs=nnx.Rngs(0))
    for block in (modules.delta_extractor, modules.delta_generator, modules.feature_generator):
        assert block.conv.kernel.shape == (1, 1, 6, 3)
    assert modules.contrastive.block.conv.kernel.shape == (1, 1, 6, 3)
    first, second = jnp.ones((2, 4, 4, 3)), jnp.zeros((2, 4, 4, 3))
    assert modules.extract_delta(first, second, train=True).shape == (2, 4, 4, 3)
    assert modules.contrastive(first, second, train=True).shape == (2, 2)
    # A 1x1 convolution mixes channels only: each output pixel depends on its own input pixel.
    single = modules.delta_extractor(jnp.zeros((1, 4, 4, 6)).at[0, 1, 1].set(1.0), train=False)
    reference = modules.delta_extractor(jnp.zeros((1, 4, 4, 6)), train=False)
    changed = np.argwhere(np.any(np.asarray(single != reference), axis=-1))
    assert changed.tolist() == [[0, 1, 1]]
    with pytest.raises(ValueError, match="kernel_size=5; allowed: 3, 1"):
        safa.SafaModules(3, q_width=-1, kernel_size=5, rngs=nnx.Rngs(0))


def test_batch_norm_statistics_come_from_valid_entries_only():
    block = safa.ConvBNReLU(2, 3, ops=XLA_LAYERS, rngs=nnx.Rngs(0))
    reference = nnx.clone(block)
    x = jax.random.normal(jax.random.key(0), (6, 4, 4, 2))
    valid = jnp.array([True, False, True, True, False, False])
    masked = block(x, train=True, mask=valid)
    alone = reference(x[np.array([0, 2, 3])], train=True)
    np.testing.assert_allclose(masked[np.array([0, 2, 3])], alone, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(block.norm.mean[...], reference.norm.mean[...], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(block.norm.var[...], reference.norm.var[...], rtol=1e-5, atol=1e-6)


def test_batch_norm_with_no_valid_entry_uses_all_entries_and_stays_finite():
    block = safa.ConvBNReLU(2, 3, ops=XLA_LAYERS, rngs=nnx.Rngs(0))
    reference = nnx.clone(block)
    x = jax.random.normal(jax.random.key(0), (4, 4, 4, 2))
    empty_mask = block(x, train=True, mask=jnp.zeros(4, dtype=bool))
    np.testing.assert_allclose(empty_mask, reference(x, train=True), rtol=1e-5, atol=1e-6)
    assert bool(jnp.all(jnp.isfinite(block.norm.mean[...])))


def test_q_running_statistics_follow_only_its_real_pair_training(modules):
    trained = nnx.clone(modules)
    real_pairs_only = nnx.clone(modules.contrastive)
    features = _features()
    _augment(trained, features, MIXED_LABELS)
    real_pairs_only(features[:4], features[4:], train=True)
    for statistic in ("mean", "var"):
        np.testing.assert_allclose(getattr(trained.contrastive.block.norm, statistic)[...],
                                   getattr(real_pairs_only.block.norm, statistic)[...], rtol=1e-5, atol=1e-6)


# --- head classes and slot count --------------------------------------------------------------


def test_head_classes_of_cifar10_lt_are_its_two_largest():
    cifar10_lt_rho100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # REFERENCE.md.
    np.testing.assert_array_equal(safa.head_class_mask(cifar10_lt_rho100, 0.2), [True, True] + [False] * 8)
    np.testing.assert_array_equal(safa.head_class_mask(cifar10_lt_rho100[::-1], 0.2), [False] * 8 + [True, True])


def test_head_class_ties_go_to_the_lower_class_id_and_at_least_one_class_is_head():
    np.testing.assert_array_equal(safa.head_class_mask([5, 7, 7, 1, 1], 0.4), [False, True, True, False, False])
    np.testing.assert_array_equal(safa.head_class_mask([3, 3, 3, 3], 0.5), [True, True, False, False])
    np.testing.assert_array_equal(safa.head_class_mask([9, 4, 1], 0.2), [True, False, False])
    # 0.29 * 100 is 28.999999999999996 in floating point; 29 classes are meant.
    assert safa.head_class_mask(np.arange(100, 0, -1), 0.29).sum() == 29


@pytest.mark.parametrize(("counts", "head_ratio"), [([5, 3], 0.0), ([5, 3], 1.0), ([5, 3], 1.5), ([7], 0.5)])
def test_head_class_mask_rejects_ratios_that_leave_no_head_or_no_tail(counts, head_ratio):
    with pytest.raises(ValueError, match="head_ratio"):
        safa.head_class_mask(counts, head_ratio)


def test_num_slots_default_is_half_the_batch():
    assert safa.resolve_num_slots(-1, 128) == 64
    assert safa.resolve_num_slots(10, 128) == 10
    with pytest.raises(ValueError, match="num_slots=0"):
        safa.resolve_num_slots(0, 128)


# --- forward pass -------------------------------------------------------------------------------


def test_mixed_batch_gives_valid_slots_with_tail_labels_and_finite_terms(modules):
    output = _augment(modules, _features(), MIXED_LABELS)
    assert output.features.shape == (4, SIZE, SIZE, CHANNELS)
    np.testing.assert_array_equal(output.weights, np.ones(4))
    assert not np.any(IS_HEAD_CLASS[np.asarray(output.labels)])
    counts = ("valid_slots", "head_pairs", "tail_samples")
    assert {name: int(output.stats[name]) for name in counts} == {"valid_slots": 4, "head_pairs": 5, "tail_samples": 3}
    for value in (*output.terms.values(), *output.parts.values()):
        assert np.isfinite(float(value)) and float(value) > 0.0


@pytest.mark.parametrize("labels", [ALL_HEAD_LABELS, NO_HEAD_PAIR_LABELS], ids=["no_tail", "no_head_pair"])
def test_slots_are_masked_and_hold_real_features_when_nothing_can_be_generated(modules, labels):
    features = _features()
    output = _augment(modules, features, labels)
    np.testing.assert_array_equal(output.weights, np.zeros(4))
    assert int(output.stats["valid_slots"]) == 0
    # Each invalid slot holds a copy of one of the batch's real features.
    distances = jnp.abs(output.features[:, None] - features[None]).max(axis=(2, 3, 4))
    assert bool(jnp.all(distances.min(axis=1) == 0.0))
    for name in ("cycle", "q_preservation"):
        assert float(output.parts[name]) == 0.0
    assert float(output.terms["ms_tail"]) == 0.0
    assert all(np.isfinite(float(value)) for value in output.terms.values())


def test_without_head_pairs_the_head_terms_are_zero(modules):
    output = _augment(modules, _features(), NO_HEAD_PAIR_LABELS)
    assert int(output.stats["head_pairs"]) == 0
    for value in (output.terms["ms_head"], output.parts["head_reconstruction"], output.parts["q_irrelevance"]):
        assert float(value) == 0.0


def test_constant_batch_gives_finite_terms_and_mode_seeking_of_one_over_eps(modules):
    output = _augment(modules, jnp.ones((8, SIZE, SIZE, CHANNELS)), MIXED_LABELS)
    assert all(np.isfinite(float(value)) for value in (*output.terms.values(), *output.parts.values()))
    # Identical inputs give identical deltas and features: ratio 0, so 1 / ms_eps = 100.
    assert float(output.terms["ms_head"]) == pytest.approx(100.0)
    assert float(output.terms["ms_tail"]) == pytest.approx(100.0)


@pytest.mark.parametrize("name", safa_losses.TERM_NAMES)
def test_each_switch_removes_exactly_its_term(modules, name):
    features = _features()
    full_config = _default_safa_config()
    ablated_config = _default_safa_config(**{f"use_{name}": False})
    full = _augment(modules, features, MIXED_LABELS, full_config)
    ablated = _augment(modules, features, MIXED_LABELS, ablated_config)
    assert float(ablated.terms[name]) == 0.0
    difference = safa_losses.safa_total_loss(full.terms, full_config) - safa_losses.safa_total_loss(
        ablated.terms, ablated_config)
    expected = full_config[f"lambda_{name}"] * full.terms[name]
    np.testing.assert_allclose(difference, expected, rtol=1e-4, atol=1e-6)
    for other in set(safa_losses.TERM_NAMES) - {name}:
        np.testing.assert_allclose(ablated.terms[other], full.terms[other], rtol=1e-5)


@pytest.mark.parametrize(("switched_off", "convolutions"), [
    # All on: E (head deltas), G (head reconstruction), D + G (augment), E + G (cycle),
    # D + G (augment from a stop-gradient delta), D + G (second delta), Q x 3.
    ((), 13),
    (("reconstruction",), 10),
    (("contrastive",), 10),  # Q x 3; the stop-gradient augment stays for ms_tail.
    (("ms_head",), 13),  # no convolution of its own.
    (("ms_tail",), 11),
    (("contrastive", "ms_tail"), 6),
])
def test_a_switched_off_term_is_not_computed(modules, switched_off, convolutions):
    config = _default_safa_config(**{f"use_{name}": False for name in switched_off})
    augment, params, batch_stats = _pure_augment(modules, config)
    jaxpr = jax.make_jaxpr(augment)(params, batch_stats, _features(), jnp.asarray(MIXED_LABELS), jax.random.key(0))
    assert str(jaxpr).count("conv_general_dilated") == convolutions


# --- gradient flow ------------------------------------------------------------------------------


class TinyNet(nnx.Module):
    """A tiny backbone split at SAFA's insertion point: conv "lower", SAFA, then an "upper" part with a
    BatchNorm (as after stage 1 or 2 of ResNet-32) or without one (as after stage 3), pool and linear."""

    def __init__(self, rngs: nnx.Rngs):
        self.lower = nnx.Conv(3, CHANNELS, kernel_size=(3, 3), padding="SAME", rngs=rngs)
        self.safa = safa.SafaModules(CHANNELS, q_width=-1, rngs=rngs)
        self.upper_norm = layers.batch_norm(CHANNELS, ops=XLA_LAYERS, rngs=rngs)
        self.classifier = nnx.Linear(CHANNELS, len(CLASS_COUNTS), rngs=rngs)

    def upper(self, features: jax.Array, *, with_batch_norm: bool = True,
              mask: jax.Array | None = None) -> jax.Array:
        if with_batch_norm:
            features = nnx.relu(self.upper_norm(features, use_running_average=False,
                                                mask=layers.batch_norm_mask(mask, features.ndim)))
        return self.classifier(jnp.mean(features, axis=(1, 2)))


LOSSES = ("safa_total", "q_real", "q_irrelevance", "q_preservation", "ms_tail", "augmented_classification",
          "augmented_classification_real_statistics", "augmented_classification_no_upper_batch_norm",
          "real_classification")
MODULE_PATHS = {
    "lower": ("lower",), "E": ("safa", "delta_extractor"), "D": ("safa", "delta_generator"),
    "G": ("safa", "feature_generator"), "Q": ("safa", "contrastive"),
}


@pytest.fixture(scope="module")
def gradient_norms() -> dict[str, dict[str, float]]:
    """Sum of |gradient| of each loss in LOSSES with respect to each module's parameters."""
    graphdef, params, batch_stats = nnx.split(TinyNet(nnx.Rngs(0)), nnx.Param, nnx.BatchStat)
    images = jax.random.normal(jax.random.key(0), (8, SIZE, SIZE, 3))
    labels = jnp.asarray(MIXED_LABELS)
    config = _default_safa_config()

    def classification(logits, labels, weights):
        return jnp.sum(weights * optax.softmax_cross_entropy_with_integer_labels(logits, labels)) / jnp.sum(weights)

    def losses(params, batch_stats):
        # Fresh Variables in this trace: BatchNorm may only update statistics created inside jacrev.
        net = nnx.merge(graphdef, params, jax.tree.map(lambda leaf: leaf, batch_stats))
        features = net.lower(images)
        output = safa.safa_augment(net.safa, features, labels, IS_HEAD_CLASS, jax.random.key(1), num_slots=-1,
                                   safa_config=config)
        both = jnp.concatenate([features, output.features])
        both_labels = jnp.concatenate([labels, output.labels])
        augmented_only = jnp.concatenate([jnp.zeros(8), output.weights])
        is_real = jnp.arange(both.shape[0]) < 8
        return jnp.stack([
            safa_losses.safa_total_loss(output.terms, config),
            output.parts["q_real"],
            output.parts["q_irrelevance"],
            output.parts["q_preservation"],
            output.terms["ms_tail"],
            # As the train step: real and augmented features through the upper part together, the loss
            # on the augmented ones only; the upper BatchNorm's batch statistics couple the two.
            classification(net.upper(both), both_labels, augmented_only),
            classification(net.upper(both, mask=is_real), both_labels, augmented_only),
            classification(net.upper(both, with_batch_norm=False), both_labels, augmented_only),
            classification(net.upper(features), labels, jnp.ones(8)),
        ])

    jacobian = jax.jit(jax.jacrev(losses))(params, batch_stats)
    norms = {}
    for index, loss in enumerate(LOSSES):
        norms[loss] = {}
        for module, path in MODULE_PATHS.items():
            subtree = jacobian
            for key in path:
                subtree = subtree[key]
            norms[loss][module] = sum(float(jnp.abs(leaf[index]).sum()) for leaf in jax.tree.leaves(subtree))
    return norms


@pytest.mark.parametrize(("loss", "trained"), [
    ("safa_total", {"E", "D", "G", "Q"}),
    ("q_real", {"Q"}),
    ("q_irrelevance", {"E"}),  # Q is frozen for this term.
    ("q_preservation", {"D", "G"}),  # neither Q nor E.
    ("ms_tail", {"D", "G"}),
    # Through the upper BatchNorm's batch statistics, which the real features enter, classifying F~_t also
    # trains the lower layers (placements 1 and 2 of ResNet-32); also with statistics from real entries only.
    ("augmented_classification", {"lower", "E", "D", "G"}),
    ("augmented_classification_real_statistics", {"lower", "E", "D", "G"}),
    ("augmented_classification_no_upper_batch_norm", {"E", "D", "G"}),  # placement 3: no BatchNorm above.
    ("real_classification", {"lower"}),
])
def test_each_loss_trains_exactly_its_modules(gradient_norms, loss, trained):
    for module, norm in gradient_norms[loss].items():
        if module in trained:
            assert norm > 0.0, f"{loss} gives {module} no gradient"
        else:
            assert norm == 0.0, f"{loss} gives {module} a gradient ({norm})"


# --- jit and sharding ---------------------------------------------------------------------------


def test_jit_compiles_once_for_every_batch_composition_and_matches_eager(modules):
    augment, params, batch_stats = _pure_augment(modules)
    traces = []

    def counted(*args):
        traces.append(None)
        return augment(*args)

    jitted = jax.jit(counted)
    features, key = _features(), jax.random.key(2)
    outputs = [jitted(params, batch_stats, features, jnp.asarray(labels), key)
               for labels in (MIXED_LABELS, ALL_HEAD_LABELS, NO_HEAD_PAIR_LABELS)]
    assert len(traces) == 1
    shapes = [jax.tree.map(jnp.shape, output) for output in outputs]
    assert shapes[0] == shapes[1] == shapes[2]
    eager = _augment(modules, features, MIXED_LABELS)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), outputs[0], eager)


def test_batch_sharded_over_eight_devices_gives_the_single_device_result(modules):
    mesh = sharding.make_mesh(jax.devices()[:8])
    batch_sharding = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
    augment, params, batch_stats = _pure_augment(modules)
    features, labels, key = _features(), jnp.asarray(MIXED_LABELS), jax.random.key(3)
    sharded = jax.jit(augment)(
        sharding.put_replicated(params, mesh), sharding.put_replicated(batch_stats, mesh),
        jax.device_put(features, batch_sharding), jax.device_put(labels, batch_sharding), key)
    single = _augment(modules, features, MIXED_LABELS, seed=3)
    assert int(sharded.stats["valid_slots"]) == 4
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), sharded, single)
