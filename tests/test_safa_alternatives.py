"""The alternatives to SAFA's reconstructed defaults (config.safa.tail_sampling, augmented_class_weights,
upper_bn_stats, delta_channels, q_pairs) and the copy measures, against hand-computed values."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.common import get_config
from safa_jax import checkpointing
from safa_jax.config_checks import validate_config
from safa_jax.data.longtail import longtail_class_counts
from safa_jax.losses import base, safa as safa_losses
from safa_jax.models import resnet_cifar, safa, safa_pairing


def test_weighted_tail_draws_follow_the_weights_among_tail_samples():
    is_tail = jnp.array([False, False, True, True, True, True])
    weights = jnp.array([5.0, 5.0, 1.0, 2.0, 3.0, 0.0])  # head samples and weight 0 are never drawn.
    slots = safa_pairing.draw_slots(is_tail, jnp.array([True, True, False, False, False, False]),
                                    jax.random.key(0), 30_000, weights)
    shares = np.bincount(np.asarray(slots.tail_samples), minlength=6) / 30_000
    np.testing.assert_allclose(shares, [0, 0, 1 / 6, 2 / 6, 3 / 6, 0], atol=0.01)
    assert bool(slots.valid.all())


def test_weighted_tail_draws_without_tail_sample_are_invalid():
    slots = safa_pairing.draw_slots(jnp.zeros(4, bool), jnp.ones(4, bool), jax.random.key(0), 3,
                                    jnp.ones(4))
    assert not bool(slots.valid.any())


def test_tail_sample_weights_by_hand():
    labels = jnp.array([0, 1, 1, 2])
    counts = jnp.array([100.0, 10.0, 5.0])
    np.testing.assert_allclose(safa_pairing.tail_sample_weights("inverse_frequency", labels, counts),
                               [0.01, 0.1, 0.1, 0.2], rtol=1e-6)
    np.testing.assert_allclose(safa_pairing.tail_sample_weights("uniform_classes", labels, counts),
                               [1.0, 0.5, 0.5, 1.0])
    assert safa_pairing.tail_sample_weights("batch_samples", labels, counts) is None
    with pytest.raises(ValueError, match="tail_sampling='x'.*batch_samples"):
        safa_pairing.tail_sample_weights("x", labels, counts)


def test_batch_samples_rule_gives_most_slots_to_the_most_frequent_tail_class():
    """The default's slot shares on CIFAR-10-LT rho=200 (head classes 0 and 1): proportional to n_y over the
    tail classes, 44.9 % to class 2 and 0.73 % to class 9; the weighted rules even them out."""
    counts = longtail_class_counts(5000, 10, 200.0)
    tail = counts[2:].astype(float)
    np.testing.assert_allclose(tail[0] / tail.sum(), 0.449, atol=0.001)
    np.testing.assert_allclose(tail[-1] / tail.sum(), 0.0073, atol=0.0002)
    # A batch with every tail class in proportion to its count: inverse-frequency weights give each an equal share.
    labels = jnp.asarray(np.repeat(np.arange(2, 10), (tail / 5).astype(int)))
    weights = safa_pairing.tail_sample_weights("inverse_frequency", labels, jnp.asarray(counts, jnp.float32))
    per_class = np.bincount(np.asarray(labels), weights=np.asarray(weights), minlength=10)[2:]
    np.testing.assert_allclose(per_class / per_class.sum(), np.full(8, 1 / 8), atol=0.02)


def test_balanced_contrastive_pairs():
    labels = jnp.array([0, 0, 0, 1, 1, 2, 3, 0, 1, 2, 0, 0, 1, 3, 2, 0])
    first, second, valid = safa_pairing.contrastive_pairs(labels, "balanced", jax.random.key(1))
    first, second, valid, labels = map(np.asarray, (first, second, valid, labels))
    np.testing.assert_array_equal(first, np.arange(8))
    same = labels[first] == labels[second]
    assert valid.all()  # every class of the first four anchors has another sample; every anchor another class.
    assert same[:4].all() and (second[:4] != first[:4]).all()
    assert not same[4:].any()
    halves = safa_pairing.contrastive_pairs(jnp.asarray(labels), "halves", jax.random.key(1))
    np.testing.assert_array_equal(halves[1], np.arange(8, 16))


def test_balanced_contrastive_pair_of_a_lone_sample_is_invalid():
    labels = jnp.array([5, 1, 1, 1, 1, 1, 1, 0])  # anchor 0 (class 5) is alone in the batch.
    _, _, valid = safa_pairing.contrastive_pairs(labels, "balanced", jax.random.key(0))
    assert not bool(valid[0]) and bool(valid[1:].all())


def test_class_weights_skip_unweighted_samples():
    """CE with class weights w = (1, 3): sum_i w_i ce_i / sum_i w_i, with w = 1 for the third sample."""
    logits = jnp.array([[2.0, 0.0], [0.5, 1.0], [1.0, -1.0]])
    labels = jnp.array([0, 1, 1])
    ce = -jax.nn.log_softmax(logits)[jnp.arange(3), labels]
    expected = (1 * ce[0] + 3 * ce[1] + 1 * ce[2]) / 5
    got = base.cross_entropy(logits, labels, class_weights=jnp.array([1.0, 3.0]),
                             class_weighted=jnp.array([True, True, False]))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    all_weighted = base.cross_entropy(logits, labels, class_weights=jnp.array([1.0, 3.0]))
    np.testing.assert_allclose(all_weighted, (ce[0] + 3 * ce[1] + 3 * ce[2]) / 7, rtol=1e-6)


def test_upper_part_with_real_statistics_ignores_the_generated_entries():
    """upper(real + junk, mask=real) on the real entries equals upper(real) alone, and so do the running means."""
    def model():
        return resnet_cifar.ResNetCifar(3, width=4, blocks_per_stage=1, rngs=nnx.Rngs(0))
    real = jax.random.normal(jax.random.key(0), (4, 8, 8, 4))
    junk = 100.0 * jax.random.normal(jax.random.key(1), (4, 8, 8, 4)) + 7.0
    alone, masked = model(), model()
    expected = alone.upper(real, 1, train=True)
    got = masked.upper(jnp.concatenate([real, junk]), 1, train=True, mask=jnp.arange(8) < 4)[:4]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    mean_of = lambda m: np.asarray(m.stages[1][0].bn1.mean[...])  # noqa: E731
    np.testing.assert_allclose(mean_of(masked), mean_of(alone), rtol=1e-5, atol=1e-6)
    unmasked = model()
    unmasked.upper(jnp.concatenate([real, junk]), 1, train=True)
    assert not np.allclose(mean_of(unmasked), mean_of(alone), atol=1e-3)


def test_delta_bottleneck_keeps_the_shapes_and_narrows_the_delta():
    full = safa.SafaModules(8, q_width=-1, rngs=nnx.Rngs(0))
    narrow = safa.SafaModules(8, q_width=-1, delta_channels=2, rngs=nnx.Rngs(0))
    assert isinstance(narrow.delta_extractor, safa.BottleneckDelta)
    assert narrow.delta_extractor.reduce.conv.kernel.shape == (3, 3, 16, 2)
    assert narrow.delta_generator.expand.conv.kernel.shape == (1, 1, 2, 8)
    features = jax.random.normal(jax.random.key(0), (8, 4, 4, 8))
    labels = jnp.array([0, 0, 0, 1, 1, 2, 3, 3])
    config = get_config().safa
    outputs = [safa.safa_augment(m, features, labels, safa.head_class_mask([10, 8, 3, 2], 0.5), jax.random.key(2),
                                 num_slots=-1, safa_config=config) for m in (full, narrow)]
    assert outputs[0].features.shape == outputs[1].features.shape == (4, 4, 4, 8)
    assert all(np.isfinite(float(v)) for v in outputs[1].terms.values())
    with pytest.raises(ValueError, match="delta_channels=0"):
        safa.SafaModules(8, q_width=-1, delta_channels=0, rngs=nnx.Rngs(0))


def test_delta_channels_is_shape_defining_and_old_checkpoints_had_full_width():
    old = {"safa": {"enabled": True, "stage": 2}}  # a checkpoint's config written before the field existed.
    assert checkpointing.shape_fields(old)["safa.delta_channels"] == -1
    new = {"safa": {"enabled": True, "stage": 2, "delta_channels": 4}}
    with pytest.raises(checkpointing.CheckpointMismatchError, match="safa.delta_channels: checkpoint -1, config 4"):
        checkpointing.check_compatible(old, new, 10, 10, "here")


def test_relative_l1_and_the_copy_measures():
    b = jnp.array([[1.0, -3.0], [2.0, 2.0]])
    valid = jnp.array([True, True])
    assert float(safa_losses.relative_l1(b, b, valid)) == 0.0
    np.testing.assert_allclose(safa_losses.relative_l1(jnp.zeros_like(b), b, valid), 1.0)
    np.testing.assert_allclose(safa_losses.relative_l1(b + 1.0, b, jnp.array([True, False])), 0.5)
    modules = safa.SafaModules(4, q_width=-1, rngs=nnx.Rngs(0))

    def stats(q_pairs):
        config = get_config().safa
        config.q_pairs = q_pairs
        return safa.safa_augment(modules, jax.random.normal(jax.random.key(0), (8, 4, 4, 4)),
                                 jnp.array([0, 0, 0, 1, 1, 2, 3, 3]), safa.head_class_mask([10, 8, 3, 2], 0.5),
                                 jax.random.key(1), num_slots=-1, safa_config=config).stats

    halves, balanced = stats("halves"), stats("balanced")
    assert float(halves["e_copy_distance"]) > 0 and float(halves["g_copy_distance"]) > 0
    # Halves pair 0-1, 0-2, 0-3, 1-3: no pair shares a class; balanced: anchors 0, 1 same-class, 2, 3 not.
    assert float(halves["q_same_class_pairs"]) == 0.0 and float(balanced["q_same_class_pairs"]) == 0.5


@pytest.mark.parametrize(("field", "value", "message"), [
    ("tail_sampling", "rare", "config.safa.tail_sampling='rare'; allowed: batch_samples, inverse_frequency"),
    ("upper_bn_stats", "none", "config.safa.upper_bn_stats='none'; allowed: all, real"),
    ("q_pairs", "all", "config.safa.q_pairs='all'; allowed: halves, balanced"),
    ("delta_channels", 0, "config.safa.delta_channels"),
])
def test_bad_alternative_values_are_refused(field, value, message):
    config = get_config()
    config.safa[field] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_config(config)


def test_safa_start_epoch_at_or_past_the_end_is_refused():
    config = get_config()
    config.method = "safa"
    config.num_epochs, config.safa.start_epoch = 30, 40
    config.optim.decay_epochs, config.loss.second_stage_epoch = (20, 25), 20
    with pytest.raises(ValueError, match="config.safa.start_epoch=40 is not before config.num_epochs=30"):
        validate_config(config)
    config.method = "plain"  # the baseline never reads config.safa.
    validate_config(config)


def test_checkpoints_written_with_safa_enabled_map_to_the_method_field():
    # Configs written before config.method existed said safa.enabled; a new config says method.
    assert checkpointing.shape_fields({"safa": {"enabled": True, "stage": 2}})["method"] == "safa"
    assert checkpointing.shape_fields({"safa": {"enabled": False, "stage": 2}})["method"] == "plain"
    assert checkpointing.shape_fields({"method": "safa", "safa": {"stage": 2}})["method"] == "safa"
    with pytest.raises(checkpointing.CheckpointMismatchError, match="method: checkpoint 'safa', config 'plain'"):
        checkpointing.check_compatible({"safa": {"enabled": True, "stage": 2}}, {"method": "plain", "safa": {"stage": 2}},
                                       10, 10, pathlib.Path("run"))
