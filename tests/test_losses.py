"""Base losses and the DRW / DRS schedules against hand-computed values and the LDAM-DRW definitions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from safa_jax.losses import base

# CIFAR-10-LT, rho = 100 (REFERENCE.md).
CIFAR10_LT_100 = (5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50)

# Two samples, three classes: sample 0 is class 0 with logits (2, 0, 0); sample 1 is class 2 with (0, 1, 0).
LOGITS = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
LABELS = jnp.array([0, 2])
CE_0 = math.log(math.e**2 + 2) - 2  # -log softmax_0 of (2, 0, 0)
CE_1 = math.log(math.e + 2)  # -log softmax_2 of (0, 1, 0)
CLASS_WEIGHTS = jnp.array([0.5, 1.0, 3.0])

# A third sample that weight 0 must remove; its logits are large so that it would dominate if counted.
LOGITS_WITH_EXTRA = jnp.concatenate([LOGITS, jnp.array([[5.0, -5.0, 0.0]])])
LABELS_WITH_EXTRA = jnp.array([0, 2, 1])
MASK_EXTRA = jnp.array([1.0, 1.0, 0.0])
MARGINS = jnp.array([0.5, 0.25, 0.1])


def _loss_config(name: str = "ce", train_rule: str = "none"):
    config = common.get_config().loss
    config.name = name
    config.train_rule = train_rule
    return config


def _ldam(logits, labels, **kwargs):
    return base.ldam_loss(logits, labels, margins=MARGINS, scale=2.0, **kwargs)


def _focal(logits, labels, **kwargs):
    return base.focal_loss(logits, labels, gamma=1.0, **kwargs)


LOG_PRIOR = base.log_class_prior([4, 2, 1])


def _balanced_softmax(logits, labels, **kwargs):
    return base.logit_adjusted_loss(logits, labels, log_prior=LOG_PRIOR, tau=1.0, **kwargs)


def _logit_adjusted(logits, labels, **kwargs):
    return base.logit_adjusted_loss(logits, labels, log_prior=LOG_PRIOR, tau=1.5, **kwargs)


ALL_LOSSES = {"ce": base.cross_entropy, "focal": _focal, "ldam": _ldam, "balanced_softmax": _balanced_softmax,
              "logit_adjusted": _logit_adjusted}


def test_cross_entropy_plain_mean():
    assert float(base.cross_entropy(LOGITS, LABELS)) == pytest.approx((CE_0 + CE_1) / 2, rel=1e-6)


def test_weighted_cross_entropy_is_pytorch_weighted_mean():
    # F.cross_entropy(weight=w): sum_i w[y_i] ce_i / sum_i w[y_i] = (0.5 ce_0 + 3 ce_1) / 3.5.
    expected = (0.5 * CE_0 + 3.0 * CE_1) / 3.5
    loss = base.cross_entropy(LOGITS, LABELS, class_weights=CLASS_WEIGHTS)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_focal_loss_hand_computed():
    # p = softmax prob of the true class; (1 - p) ce with gamma = 1, plain mean.
    p_0, p_1 = math.e**2 / (math.e**2 + 2), 1 / (math.e + 2)
    expected = ((1 - p_0) * CE_0 + (1 - p_1) * CE_1) / 2
    assert float(_focal(LOGITS, LABELS)) == pytest.approx(expected, rel=1e-6)


def test_focal_loss_weights_inside_and_plain_mean():
    # LDAM-DRW: ce_i = w[y_i] ce_i, then (1 - exp(-ce_i))**gamma ce_i, mean over samples (not / sum w).
    weighted = np.array([0.5 * CE_0, 3.0 * CE_1])
    expected = np.mean((1 - np.exp(-weighted)) ** 2.0 * weighted)
    loss = base.focal_loss(LOGITS, LABELS, gamma=2.0, class_weights=CLASS_WEIGHTS)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_focal_loss_gamma_zero_is_unnormalised_weighted_ce():
    loss = base.focal_loss(LOGITS, LABELS, gamma=0.0, class_weights=CLASS_WEIGHTS)
    assert float(loss) == pytest.approx((0.5 * CE_0 + 3.0 * CE_1) / 2, rel=1e-6)


def test_ldam_loss_hand_computed():
    # Sample 0 (class 0, m = 0.5): 2 * (1.5, 0, 0) = (3, 0, 0).
    # Sample 1 (class 2, m = 0.1): 2 * (0, 1, -0.1) = (0, 2, -0.2).
    ce_0 = math.log(math.e**3 + 2) - 3
    ce_1 = math.log(1 + math.e**2 + math.exp(-0.2)) + 0.2
    assert float(_ldam(LOGITS, LABELS)) == pytest.approx((ce_0 + ce_1) / 2, rel=1e-6)
    weighted = _ldam(LOGITS, LABELS, class_weights=CLASS_WEIGHTS)
    assert float(weighted) == pytest.approx((0.5 * ce_0 + 3.0 * ce_1) / 3.5, rel=1e-6)


def test_class_balanced_weights_small_case():
    # counts (1, 2), beta 0.5: raw (0.5 / 0.5, 0.5 / 0.75) = (1, 2/3), rescaled to sum 2: (1.2, 0.8).
    np.testing.assert_allclose(base.class_balanced_weights([1, 2], 0.5), [1.2, 0.8], rtol=1e-6)


def test_class_balanced_weights_cifar10_lt():
    weights = base.class_balanced_weights(CIFAR10_LT_100, 0.9999)
    assert weights.sum() == pytest.approx(10.0, rel=1e-6)
    assert np.all(np.diff(weights) > 0)  # rarer class, larger weight
    beta = 0.9999
    assert weights[-1] / weights[0] == pytest.approx((1 - beta**5000) / (1 - beta**50), rel=1e-5)


def test_class_balanced_weights_beta_zero_is_ones():
    np.testing.assert_array_equal(base.class_balanced_weights(CIFAR10_LT_100, 0.0), np.ones(10))


def test_ldam_margins_cifar10_lt():
    margins = base.ldam_margins(CIFAR10_LT_100, 0.5)
    assert margins.max() == pytest.approx(0.5) and int(np.argmax(margins)) == 9
    assert margins[0] == pytest.approx(0.5 / math.sqrt(10), rel=1e-6)  # 0.5 * (50 / 5000) ** 0.25
    np.testing.assert_allclose(margins, 0.5 * (50 / np.array(CIFAR10_LT_100)) ** 0.25, rtol=1e-6)


@pytest.mark.parametrize("counts, message", [
    ([5, 0, 2], r"1 of 3 classes have no training example \(class ids 1\)"),
    (list(range(-11, 2)), r"12 of 13 classes .*\(class ids 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more\)"),
    ([[1, 2]], "class_counts must be a non-empty 1-D sequence"),
    ([], "class_counts must be a non-empty 1-D sequence"),
])
def test_bad_class_counts_raise(counts, message):
    with pytest.raises(ValueError, match=message):
        base.class_balanced_weights(counts, 0.9)


@pytest.mark.parametrize("name", base.LOSS_NAMES)
def test_zero_sample_weight_removes_the_sample(name):
    loss_fn = ALL_LOSSES[name]
    without = loss_fn(LOGITS, LABELS, class_weights=CLASS_WEIGHTS)
    masked = loss_fn(LOGITS_WITH_EXTRA, LABELS_WITH_EXTRA, class_weights=CLASS_WEIGHTS, sample_weights=MASK_EXTRA)
    assert float(masked) == pytest.approx(float(without), rel=1e-6)
    gradient = jax.grad(
        lambda logits: loss_fn(logits, LABELS_WITH_EXTRA, class_weights=CLASS_WEIGHTS, sample_weights=MASK_EXTRA)
    )(LOGITS_WITH_EXTRA)
    np.testing.assert_array_equal(gradient[2], np.zeros(3))


@pytest.mark.parametrize("name", base.LOSS_NAMES)
def test_sample_weight_two_counts_a_sample_twice(name):
    # Weight 2 on sample 0 equals counting sample 0 twice.
    loss_fn = ALL_LOSSES[name]
    doubled = loss_fn(LOGITS, LABELS, class_weights=CLASS_WEIGHTS, sample_weights=jnp.array([2.0, 1.0]))
    repeated = loss_fn(LOGITS[jnp.array([0, 0, 1])], LABELS[jnp.array([0, 0, 1])], class_weights=CLASS_WEIGHTS)
    assert float(doubled) == pytest.approx(float(repeated), rel=1e-6)


@pytest.mark.parametrize("name", base.LOSS_NAMES)
def test_all_zero_sample_weights_give_zero_not_nan(name):
    loss_fn = ALL_LOSSES[name]
    zeros = jnp.zeros(2)
    assert float(loss_fn(LOGITS, LABELS, sample_weights=zeros)) == 0.0
    gradient = jax.grad(lambda logits: loss_fn(logits, LABELS, sample_weights=zeros))(LOGITS)
    np.testing.assert_array_equal(gradient, np.zeros_like(LOGITS))


def test_focal_gradient_finite_when_true_class_is_certain():
    # ce = 0 exactly in float32; d/dx x**0.5 at x = 0 would be infinite.
    certain = jnp.array([[200.0, 0.0, 0.0]])
    gradient = jax.grad(lambda logits: base.focal_loss(logits, jnp.array([0]), gamma=0.5))(certain)
    assert np.all(np.isfinite(gradient))


def test_drw_weights_switch_at_second_stage_epoch():
    config = _loss_config("ldam", "drw")
    balanced = base.class_balanced_weights(CIFAR10_LT_100, 0.9999)
    weights_at = jax.jit(lambda epoch: base.class_weights_at(config, CIFAR10_LT_100, epoch))
    for epoch_fn in (lambda epoch: base.class_weights_at(config, CIFAR10_LT_100, epoch), weights_at):
        np.testing.assert_array_equal(epoch_fn(0), np.ones(10))
        np.testing.assert_array_equal(epoch_fn(jnp.int32(159)), np.ones(10))
        np.testing.assert_allclose(epoch_fn(jnp.int32(160)), balanced, rtol=1e-6)
        np.testing.assert_allclose(epoch_fn(jnp.int32(199)), balanced, rtol=1e-6)


@pytest.mark.parametrize("rule, reweights", [("none", False), ("resample", False), ("drs", False),
                                                 ("reweight", True)])
def test_class_weights_of_other_rules(rule, reweights):
    config = _loss_config("ce", rule)
    balanced = base.class_balanced_weights(CIFAR10_LT_100, 0.9999)
    for epoch in (0, 160):
        expected = balanced if reweights else np.ones(10)
        np.testing.assert_allclose(base.class_weights_at(config, CIFAR10_LT_100, epoch), expected, rtol=1e-6)


@pytest.mark.parametrize("rule, sampling_at_0_159_160", [("none", (False, False, False)),
                                                        ("reweight", (False, False, False)),
                                                        ("drw", (False, False, False)),
                                                        ("resample", (True, True, True)),
                                                        ("drs", (False, False, True))])
def test_balanced_sampling_schedule(rule, sampling_at_0_159_160):
    config = _loss_config("ce", rule)
    sampling_at = jax.jit(lambda epoch: base.balanced_sampling_at(config, epoch))
    assert tuple(bool(sampling_at(jnp.int32(epoch))) for epoch in (0, 159, 160)) == sampling_at_0_159_160


def test_second_stage_epoch_is_configurable():
    config = _loss_config("ce", "drs")
    config.second_stage_epoch = 3
    assert not bool(base.balanced_sampling_at(config, 2)) and bool(base.balanced_sampling_at(config, 3))


def test_make_base_loss_ldam_drw_matches_direct_calls_under_jit():
    counts = (4, 2, 1)
    config = _loss_config("ldam", "drw")
    loss = jax.jit(base.make_base_loss(config, counts))
    margins = base.ldam_margins(counts, 0.5)
    balanced = base.class_balanced_weights(counts, 0.9999)
    sample_weights = jnp.array([1.0, 1.0, 0.0])
    before = base.ldam_loss(LOGITS_WITH_EXTRA, LABELS_WITH_EXTRA, margins=margins, scale=30.0,
                            sample_weights=sample_weights)
    after = base.ldam_loss(LOGITS_WITH_EXTRA, LABELS_WITH_EXTRA, margins=margins, scale=30.0,
                           class_weights=balanced, sample_weights=sample_weights)
    assert float(before) != pytest.approx(float(after), rel=1e-3)
    assert float(loss(LOGITS_WITH_EXTRA, LABELS_WITH_EXTRA, sample_weights, jnp.int32(159))) == pytest.approx(
        float(before), rel=1e-6)
    assert float(loss(LOGITS_WITH_EXTRA, LABELS_WITH_EXTRA, sample_weights, jnp.int32(160))) == pytest.approx(
        float(after), rel=1e-6)


@pytest.mark.parametrize("name", base.LOSS_NAMES)
def test_make_base_loss_picks_the_named_loss(name):
    counts = (4, 2, 1)
    config = _loss_config(name, "reweight")
    balanced = base.class_balanced_weights(counts, 0.9999)
    direct = {
        "ce": lambda: base.cross_entropy(LOGITS, LABELS, class_weights=balanced),
        "focal": lambda: base.focal_loss(LOGITS, LABELS, gamma=1.0, class_weights=balanced),
        "ldam": lambda: base.ldam_loss(LOGITS, LABELS, margins=base.ldam_margins(counts, 0.5), scale=30.0,
                                       class_weights=balanced),
        "balanced_softmax": lambda: base.cross_entropy(LOGITS + jnp.log(jnp.array(counts, jnp.float32)), LABELS,
                                                       class_weights=balanced),
        "logit_adjusted": lambda: base.logit_adjusted_loss(LOGITS, LABELS, log_prior=base.log_class_prior(counts),
                                                           tau=1.0, class_weights=balanced),
    }[name]()
    made = base.make_base_loss(config, counts)(LOGITS, LABELS, None, 0)
    assert float(made) == pytest.approx(float(direct), rel=1e-6)


def test_sampling_weights_by_hand():
    config = _loss_config("ce", "drs")
    config.cb_beta = 0.5  # (1 - 0.5) / (1 - 0.5**n): n = 1 -> 1, n = 2 -> 2/3, n = 4 -> 8/15.
    np.testing.assert_allclose(base.sampling_class_weights(config, [1, 2, 4, 0]), [1.0, 2 / 3, 8 / 15, 0.0])
    config.sampling_weights = "inverse_count"
    np.testing.assert_allclose(base.sampling_class_weights(config, [1, 2, 4, 0]), [1.0, 0.5, 0.25, 0.0])


@pytest.mark.parametrize("field, value, allowed", [("name", "hinge", "ldam"), ("train_rule", "Reweight", "drs"),
                                                   ("sampling_weights", "1/n", "inverse_count")])
def test_unknown_name_or_rule_raises(field, value, allowed):
    config = _loss_config()
    config[field] = value
    with pytest.raises(ValueError, match=rf"'{value}'.*{allowed}"):
        base.validate_loss_config(config, 10)
    with pytest.raises(ValueError, match=rf"'{value}'"):
        base.make_base_loss(config, CIFAR10_LT_100)


@pytest.mark.parametrize("field, value", [("cb_beta", 1.0), ("focal_gamma", -1.0), ("ldam_max_margin", 0.0),
                                          ("ldam_scale", -30.0), ("second_stage_epoch", -1)])
def test_bad_numeric_fields_raise(field, value):
    config = _loss_config()
    config[field] = value
    with pytest.raises(ValueError, match=rf"config\.loss\.{field}={value}"):
        base.validate_loss_config(config, 10)


def test_default_config_is_valid():
    base.validate_loss_config(common.get_config().loss, 10)
    base.validate_loss_config(common.get_config().loss, None)
    with pytest.raises(ValueError, match="num_classes=0"):
        base.validate_loss_config(common.get_config().loss, 0)


# --- logit adjustment and Balanced Softmax (hand-computed, 3 classes) -----------------------------------

def test_logit_adjusted_loss_and_balanced_softmax_by_hand():
    """Counts (60, 30, 10): log prior = log(0.6, 0.3, 0.1). One sample of class 2 with logits (1, 0, 0):
    adjusted logits (1 + tau log .6, tau log .3, tau log .1); CE = -log softmax at class 2."""
    counts = [60, 30, 10]
    logits, labels = jnp.array([[1.0, 0.0, 0.0]]), jnp.array([2])
    for tau in (0.0, 1.0, 2.0):
        z = np.array([1.0 + tau * np.log(0.6), tau * np.log(0.3), tau * np.log(0.1)])
        expected = -(z[2] - np.log(np.exp(z).sum()))
        config = _loss_config("logit_adjusted")
        config.la_tau = tau
        loss = base.make_base_loss(config, counts)
        np.testing.assert_allclose(loss(logits, labels, None, 0), expected, rtol=1e-6)
    # Balanced Softmax: CE on logits + log n_j = (1 + log 60, log 30, log 10): the tau = 1 value.
    z = np.array([1.0 + np.log(60.0), np.log(30.0), np.log(10.0)])
    balanced = base.make_base_loss(_loss_config("balanced_softmax"), counts)
    np.testing.assert_allclose(balanced(logits, labels, None, 0), -(z[2] - np.log(np.exp(z).sum())), rtol=1e-6)
    np.testing.assert_allclose(base.log_class_prior(counts), np.log([0.6, 0.3, 0.1]), rtol=1e-6)


def test_logit_adjusted_tau_must_not_be_negative():
    config = _loss_config("logit_adjusted")
    config.la_tau = -1.0
    with pytest.raises(ValueError, match="config.loss.la_tau=-1.0 must be >= 0"):
        base.validate_loss_config(config, 3)
