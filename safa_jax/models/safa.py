"""SAFA's four modules (E, D, G, Q) and its forward pass for one training step.

Follows docs/method.md ("Forward pass", "Losses"), which says which parts are the paper's and
which are our reconstruction. The modules are training-only: at test time the plain backbone runs.

Gradient flow, in short: the backbone features reaching SAFA are used only through stop-gradient, so
no SAFA term trains the layers below the insertion point. The augmented features F~_t carry gradient
to E, D and G; the train step puts them through the backbone's upper part and the classification loss.
"""

import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from safa_jax.losses import safa as safa_losses
from safa_jax.models import layers, safa_pairing
from safa_jax.models.layer_ops import XLA_LAYERS, LayerOps

KAIMING_NORMAL = nnx.initializers.kaiming_normal()
SAFA_KERNEL_SIZES = (3, 1)  # config.safa.kernel_size: 3x3 (the (R) default) or 1x1.
UPPER_BN_STATS = ("all", "real")  # config.safa.upper_bn_stats, applied by the train step.


class ConvBNReLU(nnx.Module):
    """Conv (no bias) - BatchNorm - ReLU: the block every SAFA module is built from (supplementary).

    The kernel size is not public: 3x3 is our reconstruction's default, 1x1 the cheap option (R).
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int = 3, ops: LayerOps,
                 rngs: nnx.Rngs):
        self.conv = layers.conv(in_channels, out_channels, kernel_size, padding="SAME", use_bias=False,
                                kernel_init=KAIMING_NORMAL, ops=ops, rngs=rngs)
        self.norm = layers.batch_norm(out_channels, ops=ops, rngs=rngs)  # PyTorch's BatchNorm2d settings, as the backbones'

    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        """`mask` (N,) bool: in training, BatchNorm takes its statistics over these entries only."""
        norm_mask = layers.batch_norm_mask(mask, x.ndim)
        return nnx.relu(self.norm(self.conv(x), use_running_average=not train, mask=norm_mask))


class ContrastiveModule(nnx.Module):
    """Q: are A and B of one class? Conv-BN-ReLU on [A ; B] (2C -> width), global average pool, Linear(width -> 2).

    Logit 0 means "different class", logit 1 "same class".
    """

    def __init__(self, channels: int, width: int, *, kernel_size: int = 3, ops: LayerOps, rngs: nnx.Rngs):
        self.block = ConvBNReLU(2 * channels, width, kernel_size=kernel_size, ops=ops, rngs=rngs)
        self.classifier = nnx.Linear(width, 2, rngs=rngs)

    def __call__(self, first: jax.Array, second: jax.Array, *, train: bool,
                 mask: jax.Array | None = None) -> jax.Array:
        hidden = self.block(_channel_concat(first, second), train=train, mask=mask)
        return self.classifier(jnp.mean(hidden, axis=(1, 2)))


class BottleneckDelta(nnx.Module):
    """A delta module through `width` < C channels: Conv-BN-ReLU (2C -> width), then a 1x1 Conv-BN-ReLU back to C.

    Why: with a full-width E, L_r can be minimised by copying (E outputs its target, G its delta input);
    a narrow delta cannot carry the whole target feature (`config.safa.delta_channels`, (R)).
    """

    def __init__(self, in_channels: int, width: int, out_channels: int, *, kernel_size: int, ops: LayerOps,
                 rngs: nnx.Rngs):
        self.reduce = ConvBNReLU(in_channels, width, kernel_size=kernel_size, ops=ops, rngs=rngs)
        self.expand = ConvBNReLU(width, out_channels, kernel_size=1, ops=ops, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        return self.expand(self.reduce(x, train=train, mask=mask), train=train, mask=mask)


class SafaModules(nnx.Module):
    """E (delta extractor), D (sample-specific delta generator), G (feature generator) and Q (contrastive).

    E, D and G each map a channel-concatenated pair (2C) to C channels, so every delta has the shape of
    the feature F it works on. `q_width` = -1 gives Q the feature's channel count (the (R) default).
    `kernel_size` (3 or 1, (R)) is that of all four modules' convolutions. `delta_channels` = -1 makes E
    and D one full-width Conv-BN-ReLU (the (R) default); a positive width gives them a `BottleneckDelta`.
    """

    def __init__(self, channels: int, *, q_width: int, kernel_size: int = 3, delta_channels: int = -1,
                 delta_encoder_only: bool = False, ops: LayerOps = XLA_LAYERS, rngs: nnx.Rngs):
        if channels < 1:
            raise ValueError(f"channels={channels} must be a positive channel count.")
        if q_width == -1:
            q_width = channels
        elif q_width < 1:
            raise ValueError(f"q_width={q_width}: use a positive width, or -1 for the feature's channel count.")
        if kernel_size not in SAFA_KERNEL_SIZES:
            raise ValueError(f"kernel_size={kernel_size!r}; allowed: {', '.join(map(str, SAFA_KERNEL_SIZES))}.")
        if delta_channels == -1:
            make_delta = lambda: ConvBNReLU(2 * channels, channels, kernel_size=kernel_size, ops=ops, rngs=rngs)  # noqa: E731
        elif 1 <= delta_channels:
            make_delta = lambda: BottleneckDelta(2 * channels, delta_channels, channels,  # noqa: E731
                                                 kernel_size=kernel_size, ops=ops, rngs=rngs)
        else:
            raise ValueError(f"delta_channels={delta_channels}: use a positive width, or -1 for full width.")
        self.delta_extractor = make_delta()
        # The Delta-encoder (Schwartz et al.) is E and G alone: no sample-specific D, no contrastive Q.
        self.delta_generator = None if delta_encoder_only else make_delta()
        self.feature_generator = ConvBNReLU(2 * channels, channels, kernel_size=kernel_size, ops=ops, rngs=rngs)
        self.contrastive = (None if delta_encoder_only
                            else ContrastiveModule(channels, q_width, kernel_size=kernel_size, ops=ops, rngs=rngs))

    def extract_delta(self, source: jax.Array, target: jax.Array, *, train: bool,
                      mask: jax.Array | None = None) -> jax.Array:
        """E([source ; target]): the delta that takes `source` to `target`."""
        return self.delta_extractor(_channel_concat(source, target), train=train, mask=mask)

    def apply_delta(self, feature: jax.Array, delta: jax.Array, *, train: bool,
                    mask: jax.Array | None = None) -> jax.Array:
        """G([feature ; delta]): `feature` moved along `delta`."""
        return self.feature_generator(_channel_concat(feature, delta), train=train, mask=mask)

    def augment(self, tail: jax.Array, head_delta: jax.Array, *, train: bool,
                mask: jax.Array | None = None) -> jax.Array:
        """F~_t = G([F_t ; D([F_t ; delta_h])]): the head delta adapted to the tail sample, then applied."""
        tail_delta = self.delta_generator(_channel_concat(tail, head_delta), train=train, mask=mask)
        return self.apply_delta(tail, tail_delta, train=train, mask=mask)


@flax.struct.dataclass
class SafaOutput:
    """What one SAFA forward pass gives the train step.

    features: (M, H, W, C) augmented tail features F~_t. An invalid slot holds a copy of a real
        (stop-gradient) feature instead, so it stays finite and in distribution for the BatchNorms
        of the backbone's upper part; its weight is 0.
    labels: (M,) the tail labels of the slots.
    weights: (M,) 1.0 for a valid slot, 0.0 when the batch has no tail sample or no head pair.
    terms: the unweighted scalar terms "reconstruction", "contrastive", "ms_head", "ms_tail"
        (exactly 0 where switched off); combine them with `safa_losses.safa_total_loss`.
    parts: the parts of L_r ("cycle", "head_reconstruction") and of L_c ("q_real", "q_irrelevance",
        "q_preservation"), for logging and tests; 0 where their term is switched off.
    stats: the counts "valid_slots", "head_pairs", "tail_samples"; with L_r on, "e_copy_distance" and
        "g_copy_distance" (`relative_l1` of E's delta to its target and of G's output to its delta input:
        near 0 means the module copies); with L_c on, "q_same_class_pairs" (the share of Q's real pairs
        that share a class).
    """

    features: jax.Array
    labels: jax.Array
    weights: jax.Array
    terms: dict[str, jax.Array]
    parts: dict[str, jax.Array]
    stats: dict[str, jax.Array]


def head_class_mask(class_counts: Any, head_ratio: float) -> np.ndarray:
    """(K,) bool: the top max(1, floor(head_ratio * K)) classes by training count, ties to the lower class id."""
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1:
        raise ValueError(f"class_counts must be one count per class, got shape {counts.shape}.")
    if not 0.0 < head_ratio < 1.0:
        raise ValueError(f"head_ratio={head_ratio} must be in (0, 1): the fraction of classes that are head classes.")
    num_classes = counts.size
    # The tolerance keeps float products such as 0.29 * 100 = 28.999999999999996 at their intended value.
    num_head = max(1, math.floor(head_ratio * num_classes + 1e-9))
    if num_head >= num_classes:
        raise ValueError(f"head_ratio={head_ratio} makes all {num_classes} classes head classes and leaves no "
                         f"tail class; SAFA needs at least 2 classes and a smaller head_ratio.")
    head = np.zeros(num_classes, dtype=bool)
    head[np.argsort(-counts, kind="stable")[:num_head]] = True
    return head


def resolve_num_slots(num_slots: int, batch_size: int) -> int:
    """The config's `safa.num_slots`, with -1 meaning batch_size // 2 (the (R) default)."""
    if num_slots == -1:
        return max(1, batch_size // 2)
    if num_slots < 1:
        raise ValueError(f"num_slots={num_slots}: use a positive number of slots, or -1 for batch_size // 2.")
    return num_slots


def safa_augment(modules: SafaModules, features: jax.Array, labels: jax.Array, is_head_class: jax.Array,
                 key: jax.Array, *, num_slots: int, safa_config: Any, train: bool = True,
                 class_counts: Any = None, delta_encoder: bool = False) -> SafaOutput:
    """One SAFA forward pass on the batch's features at the insertion point (docs/method.md, steps 1-5).

    features: (B, H, W, C) from the backbone's lower part; labels: (B,) int; is_head_class: (K,) bool
    (`head_class_mask`); num_slots: M, or -1 for B // 2; safa_config: `config.safa`; class_counts: (K,)
    training counts, needed by `safa.tail_sampling="inverse_frequency"` only. Shapes depend on
    B and M only, never on the batch's composition, so the pass jits once and runs on a sharded batch.
    A switched-off term is not computed at all (a Python-level switch).
    `delta_encoder` (modules built with `delta_encoder_only`): the Delta-encoder as SAFA's supplementary
    compares it, F~_t = G([F_t ; delta_h]) with the head delta as it is (no D), trained by the head
    reconstruction part of L_r alone (no recycling, no Q, no mode seeking), whatever `safa_config` says.
    """
    if features.ndim != 4 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be (B, H, W, C) and labels (B,); got {features.shape} and {labels.shape}.")
    batch = features.shape[0]
    if batch < 2:
        raise ValueError(f"batch size {batch} is too small: SAFA pairs samples, so it needs at least 2.")
    num_slots = resolve_num_slots(num_slots, batch)
    features = jax.lax.stop_gradient(features)  # No SAFA term trains the layers below the insertion point.
    is_head_sample = jnp.asarray(is_head_class)[labels]
    pair_key, slot_key, ms_head_key = jax.random.split(key, 3)
    copy_stats = {}

    # 1. Head deltas, from E on stop-gradient features of same-class pairs.
    pairs = safa_pairing.pair_head_samples(labels, is_head_sample, pair_key)
    anchors, partners = features[pairs.anchors], features[pairs.partners]
    head_deltas = modules.extract_delta(anchors, partners, train=train, mask=pairs.valid)

    # 3-4. Each slot: a tail sample and a head delta; D adapts the delta, G applies it.
    tail_weights = safa_pairing.tail_sample_weights(safa_config.tail_sampling, labels, class_counts)
    slots = safa_pairing.draw_slots(~is_head_sample, pairs.valid, slot_key, num_slots, tail_weights)
    tails = features[slots.tail_samples]
    slot_deltas = head_deltas[slots.deltas]
    if delta_encoder:
        augmented = modules.apply_delta(tails, slot_deltas, train=train, mask=slots.valid)
    else:
        augmented = modules.augment(tails, slot_deltas, train=train, mask=slots.valid)
    use_reconstruction = safa_config.use_reconstruction or delta_encoder
    use_contrastive, use_ms_head, use_ms_tail = (
        (False, False, False) if delta_encoder
        else (safa_config.use_contrastive, safa_config.use_ms_head, safa_config.use_ms_tail))

    zero = jnp.zeros((), jnp.float32)
    terms = dict.fromkeys(safa_losses.TERM_NAMES, zero)
    parts = dict.fromkeys(("cycle", "head_reconstruction", "q_real", "q_irrelevance", "q_preservation"), zero)
    # The same values as `augmented`, recomputed from a stop-gradient head delta: class preservation and
    # tail mode seeking must train D and G only, and a gradient through the shared head delta would reach E.
    augmented_fixed_delta = None
    if use_contrastive or use_ms_tail:
        augmented_fixed_delta = modules.augment(tails, jax.lax.stop_gradient(slot_deltas), train=train,
                                                mask=slots.valid)

    if use_reconstruction:
        # 2. G applies a head delta to its anchor: it should give the partner.
        reconstructed = modules.apply_delta(anchors, head_deltas, train=train, mask=pairs.valid)
        parts["head_reconstruction"] = safa_losses.masked_l1(reconstructed, partners, pairs.valid)
        # How far E and G are from copying (0 = a copy): L_r is also minimised by E outputting its target
        # and G outputting its delta input, which would make the deltas carry no direction.
        copy_stats["e_copy_distance"] = safa_losses.relative_l1(head_deltas, partners, pairs.valid)
        copy_stats["g_copy_distance"] = safa_losses.relative_l1(reconstructed, head_deltas, pairs.valid)
        if not delta_encoder:
            # 5. Recycling: the delta from F~_t back to F_t must bring F~_t back to F_t.
            cycle_delta = modules.extract_delta(augmented, tails, train=train, mask=slots.valid)
            recycled = modules.apply_delta(augmented, cycle_delta, train=train, mask=slots.valid)
            parts["cycle"] = safa_losses.masked_l1(recycled, tails, slots.valid)
        terms["reconstruction"] = parts["cycle"] + parts["head_reconstruction"]

    if use_contrastive:
        first, second, q_valid = safa_pairing.contrastive_pairs(labels, safa_config.q_pairs,
                                                                jax.random.fold_in(key, 3))
        q_mask = None if safa_config.q_pairs == "halves" else q_valid
        real_logits = modules.contrastive(features[first], features[second], train=train, mask=q_mask)
        parts["q_real"] = safa_losses.pair_cross_entropy(real_logits, labels[first] == labels[second], q_valid)
        copy_stats["q_same_class_pairs"] = safa_losses.masked_mean(
            (labels[first] == labels[second]).astype(jnp.float32), q_valid)
        frozen_q = _without_param_gradient(modules.contrastive)
        # A head delta must not look like its head sample's class: trains E only.
        irrelevance_logits = frozen_q(anchors, head_deltas, train=train, mask=pairs.valid)
        parts["q_irrelevance"] = safa_losses.pair_cross_entropy(irrelevance_logits, 0, pairs.valid)
        # An augmented feature must look like its tail sample's class: trains D and G only.
        preservation_logits = frozen_q(tails, augmented_fixed_delta, train=train, mask=slots.valid)
        parts["q_preservation"] = safa_losses.pair_cross_entropy(preservation_logits, 1, slots.valid)
        terms["contrastive"] = parts["q_real"] + parts["q_irrelevance"] + parts["q_preservation"]

    if use_ms_head:
        # Deltas of different head pairs should differ as much as the head samples they start from.
        ms_first, ms_second, ms_valid = safa_pairing.pair_valid_entries(pairs.valid, ms_head_key)
        terms["ms_head"] = safa_losses.mode_seeking(head_deltas[ms_first], head_deltas[ms_second], anchors[ms_first],
                                                    anchors[ms_second], ms_valid, safa_config.ms_eps)

    if use_ms_tail:
        # One tail sample, two head deltas: the two augmented features should differ. The deltas are
        # inputs here (stop-gradient, like MSGAN's noise codes), so this term trains D and G.
        second_deltas = jax.lax.stop_gradient(head_deltas[slots.second_deltas])
        second_augmented = modules.augment(tails, second_deltas, train=train, mask=slots.valid)
        terms["ms_tail"] = safa_losses.mode_seeking(
            augmented_fixed_delta, second_augmented, jax.lax.stop_gradient(slot_deltas), second_deltas,
            slots.second_valid, safa_config.ms_eps)

    return SafaOutput(
        features=jnp.where(slots.valid[:, None, None, None], augmented, tails),
        labels=labels[slots.tail_samples],
        weights=slots.valid.astype(jnp.float32),
        terms=terms,
        parts=parts,
        stats={
            "valid_slots": jnp.sum(slots.valid),
            "head_pairs": jnp.sum(pairs.valid),
            "tail_samples": jnp.sum(~is_head_sample),
            **copy_stats,
        },
    )


def _channel_concat(first: jax.Array, second: jax.Array) -> jax.Array:
    return jnp.concatenate([first, second], axis=-1)


def _without_param_gradient(module: nnx.Module) -> nnx.Module:
    """A copy of `module` whose parameters are stop-gradient, for the terms where Q must stay frozen.

    The copy has its own batch statistics, so Q's running statistics follow its real-pair training only
    (`nnx.merge` would reuse the Variables of `rest`; the tree map builds new ones).
    """
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    return nnx.merge(graphdef, jax.lax.stop_gradient(params), jax.tree.map(lambda leaf: leaf, rest))
