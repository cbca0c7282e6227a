"""Base classification losses (CE, focal, LDAM) and the re-weighting / re-sampling train rules.

These reproduce the LDAM-DRW reference code (kaidic/LDAM-DRW, `losses.py` and `cifar_train.py`) so that
our baselines match the published protocol; see docs/method.md. Everything that runs per
step is a pure jnp function, so it can sit inside a jitted train step with the epoch as a traced int.

Every loss takes optional `sample_weights` (B,): SAFA appends a static number of generated features to
each batch and gives the invalid ones weight 0. Weighted means divide by the total weight of the
included samples; a batch whose weights are all zero gives loss 0 (and zero gradients), not NaN.
Masked entries must still hold finite logits, since 0 * inf is NaN.
"""

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

LOSS_NAMES = ("ce", "focal", "ldam", "balanced_softmax", "logit_adjusted")
TRAIN_RULES = ("none", "reweight", "resample", "drw", "drs")
POSTHOC = ("none", "logit_adjust", "tau_norm")  # config.eval.posthoc: applied at evaluation (safa_jax/evaluate.py)

# Rules that re-weight the loss, and rules that re-sample the data; DRW/DRS defer theirs.
_REWEIGHT_RULES = ("reweight", "drw")
_RESAMPLE_RULES = ("resample", "drs")
# How class-balanced sampling (resample / DRS) weighs a class's examples: "class_balanced" as the reference
# ImbalancedDatasetSampler of the LDAM-DRW and RSG code ((1 - beta) / (1 - beta**n_c), beta = loss.cb_beta),
# or "inverse_count" (1 / n_c: every class drawn equally often).
SAMPLING_WEIGHTS = ("class_balanced", "inverse_count")
_DEFERRED_RULES = ("drw", "drs")
_MAX_LISTED_CLASSES = 10  # class ids named in an error before "and N more".

BaseLoss = Callable[..., jax.Array]  # (logits, labels, sample_weights, epoch[, class_weighted]) -> loss


def _validated_counts(class_counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Counts as a float64 vector; a class with no example has no defined weight or margin."""
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D sequence, got shape {counts.shape}")
    empty = np.flatnonzero(counts < 1)
    if empty.size:
        shown = ", ".join(str(int(c)) for c in empty[:_MAX_LISTED_CLASSES])
        more = f" and {empty.size - _MAX_LISTED_CLASSES} more" if empty.size > _MAX_LISTED_CLASSES else ""
        raise ValueError(f"{empty.size} of {counts.size} classes have no training example (class ids {shown}{more}); "
                         "LDAM margins and class-balanced weights need every class to have at least one "
                         "(use loss.name=ce or focal with loss.train_rule=none, or data that covers every class)")
    return counts


def class_balanced_weights(class_counts: Sequence[int] | np.ndarray, beta: float) -> np.ndarray:
    """Cui et al.'s weights (1 - beta) / (1 - beta**n_j), normalised to sum to K (as LDAM-DRW does).

    beta = 0 gives all ones, which is how the reference DRW code expresses "no re-weighting".
    """
    counts = _validated_counts(class_counts)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return (weights / weights.sum() * counts.size).astype(np.float32)


def ldam_margins(class_counts: Sequence[int] | np.ndarray, max_margin: float) -> np.ndarray:
    """LDAM margins m_j proportional to n_j**(-1/4), scaled so the rarest class gets max_margin."""
    counts = _validated_counts(class_counts)
    if max_margin <= 0:
        raise ValueError(f"max_margin must be > 0, got {max_margin}")
    margins = counts**-0.25
    return (margins * (max_margin / margins.max())).astype(np.float32)


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """sum(w * v) / sum(w), and 0 when every weight is 0 (the inner `where` keeps gradients finite)."""
    total = jnp.sum(weights)
    has_weight = total > 0
    return jnp.where(has_weight, jnp.sum(weights * values) / jnp.where(has_weight, total, 1.0), 0.0)


def _per_sample_weights(
    labels: jax.Array, class_weights: jax.Array | None, sample_weights: jax.Array | None,
    class_weighted: jax.Array | None = None,
) -> jax.Array:
    """w[y_i] * s_i, with a missing factor taken as 1; w[y_i] is 1 where `class_weighted` (B,) is False."""
    weights = jnp.ones(labels.shape, jnp.float32)
    if class_weights is not None:
        per_sample = jnp.asarray(class_weights, jnp.float32)[labels]
        if class_weighted is not None:
            per_sample = jnp.where(class_weighted, per_sample, 1.0)
        weights = weights * per_sample
    if sample_weights is not None:
        weights = weights * jnp.asarray(sample_weights, jnp.float32)
    return weights


def _unweighted_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sample softmax cross-entropy (B,), in float32 whatever the logits' dtype."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    class_weights: jax.Array | None = None,
    sample_weights: jax.Array | None = None,
    class_weighted: jax.Array | None = None,
) -> jax.Array:
    """PyTorch's `F.cross_entropy(logits, y, weight=w)`: sum_i w[y_i] ce_i / sum_i w[y_i].

    `sample_weights` multiply w[y_i] in both sums, so a weight-0 sample drops out exactly. `class_weighted`
    (B,) bool: samples where it is False take class weight 1 (SAFA's augmented samples, optionally).
    """
    weights = _per_sample_weights(labels, class_weights, sample_weights, class_weighted)
    return _weighted_mean(_unweighted_cross_entropy(logits, labels), weights)


def focal_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    gamma: float,
    class_weights: jax.Array | None = None,
    sample_weights: jax.Array | None = None,
    class_weighted: jax.Array | None = None,
) -> jax.Array:
    """Focal loss as in the LDAM-DRW code: ce_i = w[y_i] ce_i, p = exp(-ce_i), mean((1 - p)**gamma ce_i).

    Class weights scale ce_i *inside* the focal term and the mean is plain (not divided by the class
    weights), unlike `cross_entropy`; only `sample_weights` enter the denominator. `class_weighted` as in
    `cross_entropy`.
    """
    weighted_ce = (_per_sample_weights(labels, class_weights, None, class_weighted)
                   * _unweighted_cross_entropy(logits, labels))
    # (1 - p) is floored at the smallest normal float: at ce_i = 0 the true gradient is 0, but
    # d/dx x**gamma is infinite there for gamma < 1 and would turn into NaN.
    one_minus_p = jnp.maximum(1.0 - jnp.exp(-weighted_ce), jnp.finfo(jnp.float32).tiny)
    per_sample = one_minus_p**gamma * weighted_ce
    return _weighted_mean(per_sample, _per_sample_weights(labels, None, sample_weights))


def ldam_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    margins: jax.Array,
    scale: float,
    class_weights: jax.Array | None = None,
    sample_weights: jax.Array | None = None,
    class_weighted: jax.Array | None = None,
) -> jax.Array:
    """LDAM: subtract m_y from the true-class logit, multiply by `scale`, then (weighted) cross-entropy.

    The logits are meant to be cosines from a NormedLinear head, hence the scale.
    """
    num_classes = logits.shape[-1]
    true_class = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    margin_per_sample = jnp.asarray(margins, jnp.float32)[labels]
    shifted = logits.astype(jnp.float32) - true_class * margin_per_sample[:, None]
    return cross_entropy(scale * shifted, labels, class_weights=class_weights, sample_weights=sample_weights,
                         class_weighted=class_weighted)


def log_class_prior(class_counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """log pi_j = log(n_j / sum n): the training label distribution, as the logit-adjustment methods use it."""
    counts = _validated_counts(class_counts)
    return np.log(counts / counts.sum()).astype(np.float32)


def logit_adjusted_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    log_prior: jax.Array,
    tau: float,
    class_weights: jax.Array | None = None,
    sample_weights: jax.Array | None = None,
    class_weighted: jax.Array | None = None,
) -> jax.Array:
    """Menon et al.'s logit-adjusted loss: cross-entropy of `logits + tau * log pi`.

    Balanced Softmax (Ren et al.) is CE of `logits + log n_j`; log n_j and log pi_j differ by log(sum n), a
    constant over classes that the softmax cancels, so Balanced Softmax is this loss at tau = 1.
    """
    adjusted = logits.astype(jnp.float32) + tau * jnp.asarray(log_prior, jnp.float32)
    return cross_entropy(adjusted, labels, class_weights=class_weights, sample_weights=sample_weights,
                         class_weighted=class_weighted)


def _in_second_stage(loss_config: ml_collections.ConfigDict, epoch: jax.Array | int) -> jax.Array:
    """Whether the rule's weights/sampling are on at `epoch` (always for the non-deferred rules)."""
    if loss_config.train_rule in _DEFERRED_RULES:
        return jnp.asarray(epoch) >= loss_config.second_stage_epoch
    return jnp.asarray(True)


def class_weights_at(
    loss_config: ml_collections.ConfigDict, class_counts: Sequence[int] | np.ndarray, epoch: jax.Array | int
) -> jax.Array:
    """Per-class loss weights (K,) at `epoch`: class-balanced under "reweight" and (deferred) "drw".

    DRW follows the reference `betas = [0, 0.9999][epoch // 160]`, i.e. ones before the second stage.
    """
    num_classes = len(class_counts)
    ones = jnp.ones((num_classes,), jnp.float32)
    if loss_config.train_rule not in _REWEIGHT_RULES:
        return ones
    balanced = jnp.asarray(class_balanced_weights(class_counts, loss_config.cb_beta))
    return jnp.where(_in_second_stage(loss_config, epoch), balanced, ones)


def balanced_from_epoch(loss_config: ml_collections.ConfigDict) -> int | None:
    """The (0-based) epoch from which batches are drawn class-balanced: 0 under "resample", the second stage
    under "drs", None under the other rules. Both input pipelines follow it."""
    if loss_config.train_rule not in _RESAMPLE_RULES:
        return None
    return loss_config.second_stage_epoch if loss_config.train_rule in _DEFERRED_RULES else 0


def balanced_sampling_at(loss_config: ml_collections.ConfigDict, epoch: jax.Array | int) -> jax.Array:
    """Bool scalar: draw class-balanced batches at `epoch` (`balanced_from_epoch` on)."""
    start = balanced_from_epoch(loss_config)
    if start is None:
        return jnp.asarray(False)
    return jnp.asarray(epoch) >= start


def sampling_class_weights(loss_config: ml_collections.ConfigDict,
                           class_counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per-class weights (K,) of one example under class-balanced sampling; P(example) is proportional to them.

    With beta = 0.9999 the reference form draws a class of n_c examples in proportion to
    n_c (1 - beta) / (1 - beta**n_c): 1.27x more often at n_c = 5,000 than at n_c = 25, while "inverse_count"
    draws every class equally often. The two agree as beta * n_c -> 0. A class without examples gets weight 0
    (there is nothing to draw), so data that leaves a class empty still trains under the other rules.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    present = counts > 0
    if loss_config.sampling_weights == "inverse_count":
        per_class = 1.0 / np.where(present, counts, 1.0)
    else:
        beta = loss_config.cb_beta
        per_class = (1.0 - beta) / (1.0 - np.power(beta, np.where(present, counts, 1.0)))
    return np.where(present, per_class, 0.0)


def tau_search(eval_config: ml_collections.ConfigDict) -> tuple[float, ...]:
    """The taus of `config.eval.tau_search` ("0,0.5,1"), each >= 0; () when empty. Needs a post-hoc method."""
    text = str(eval_config.tau_search).strip()
    if not text:
        return ()
    try:
        taus = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"config.eval.tau_search={text!r} is not a comma-separated list of numbers; "
                         "allowed: e.g. '0,0.5,1'") from None
    if any(tau < 0 for tau in taus):
        raise ValueError(f"config.eval.tau_search={text!r} has a negative tau; allowed: taus >= 0")
    if eval_config.posthoc == "none":
        raise ValueError(f"config.eval.tau_search={text!r} needs config.eval.posthoc; allowed: "
                         f"{', '.join(p for p in POSTHOC if p != 'none')}")
    return taus


def validate_loss_config(loss_config: ml_collections.ConfigDict, num_classes: int | None) -> None:
    """Fail early, with the allowed values, on a config the losses cannot run with.

    `num_classes=None` skips the class-count check, for config checks that run before the data is read.
    """
    if loss_config.name not in LOSS_NAMES:
        raise ValueError(f"config.loss.name={loss_config.name!r} is unknown; allowed: {LOSS_NAMES}")
    if loss_config.train_rule not in TRAIN_RULES:
        raise ValueError(f"config.loss.train_rule={loss_config.train_rule!r} is unknown; allowed: {TRAIN_RULES}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1")
    if loss_config.sampling_weights not in SAMPLING_WEIGHTS:
        raise ValueError(f"config.loss.sampling_weights={loss_config.sampling_weights!r} is unknown; "
                         f"allowed: {SAMPLING_WEIGHTS}")
    if loss_config.second_stage_epoch < 0:
        raise ValueError(f"config.loss.second_stage_epoch={loss_config.second_stage_epoch} must be >= 0")
    if not 0.0 <= loss_config.cb_beta < 1.0:
        raise ValueError(f"config.loss.cb_beta={loss_config.cb_beta} must be in [0, 1)")
    if loss_config.focal_gamma < 0:
        raise ValueError(f"config.loss.focal_gamma={loss_config.focal_gamma} must be >= 0")
    if loss_config.ldam_max_margin <= 0:
        raise ValueError(f"config.loss.ldam_max_margin={loss_config.ldam_max_margin} must be > 0")
    if loss_config.ldam_scale <= 0:
        raise ValueError(f"config.loss.ldam_scale={loss_config.ldam_scale} must be > 0")
    if loss_config.la_tau < 0:
        raise ValueError(f"config.loss.la_tau={loss_config.la_tau} must be >= 0 (0 is plain cross-entropy)")


def make_base_loss(loss_config: ml_collections.ConfigDict, class_counts: Sequence[int] | np.ndarray) -> BaseLoss:
    """The configured loss as `loss(logits, labels, sample_weights, epoch[, class_weighted])`, with the train
    rule's class weights (on the samples where `class_weighted` is True, default all).

    The loss and its margins are chosen here; at call time only the DRW switch depends on `epoch`.
    """
    validate_loss_config(loss_config, len(class_counts))
    if loss_config.train_rule in _REWEIGHT_RULES:
        class_balanced_weights(class_counts, loss_config.cb_beta)  # Fails here on an empty class, not when traced.
    if loss_config.name == "focal":
        loss_by_name = functools.partial(focal_loss, gamma=loss_config.focal_gamma)
    elif loss_config.name in ("balanced_softmax", "logit_adjusted"):
        tau = 1.0 if loss_config.name == "balanced_softmax" else loss_config.la_tau
        loss_by_name = functools.partial(logit_adjusted_loss, log_prior=jnp.asarray(log_class_prior(class_counts)),
                                         tau=tau)
    elif loss_config.name == "ldam":
        margins = jnp.asarray(ldam_margins(class_counts, loss_config.ldam_max_margin))
        loss_by_name = functools.partial(ldam_loss, margins=margins, scale=loss_config.ldam_scale)
    else:
        loss_by_name = cross_entropy

    def loss(
        logits: jax.Array, labels: jax.Array, sample_weights: jax.Array | None, epoch: jax.Array | int,
        class_weighted: jax.Array | None = None,
    ) -> jax.Array:
        weights = class_weights_at(loss_config, class_counts, epoch)
        return loss_by_name(logits, labels, class_weights=weights, sample_weights=sample_weights,
                            class_weighted=class_weighted)

    return loss
