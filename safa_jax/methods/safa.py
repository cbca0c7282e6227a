"""SAFA as a training method: its modules E, D, G, Q after a backbone stage, and its two compiled variants.

Before `safa.start_epoch` the step trains SAFA's modules on the batch's features (their losses reach no
backbone parameter) and classifies the real batch only; from it on, the augmented tail features join the
classification loss: two compiled programs, chosen per epoch by `variant_at`. The method itself is in
`safa_jax/models/safa.py` (modules and forward pass) and `safa_jax/losses/safa.py` (its losses).
"""

import logging
from collections.abc import Hashable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from safa_jax.config_fields import positive_int
from safa_jax.methods.base import ClassifierBatch, Method, ModuleSetup
from safa_jax.losses.safa import safa_total_loss
from safa_jax.models import NUM_STAGES
from safa_jax.models.safa import (SAFA_KERNEL_SIZES, UPPER_BN_STATS, SafaModules, head_class_mask,
                                  resolve_num_slots, safa_augment)
from safa_jax.models.safa_pairing import Q_PAIRS, TAIL_SAMPLING
from safa_jax.state import NnxBridge


class SafaMethod(Method):
    """Sample-adaptive feature augmentation (docs/method.md); `config.safa` holds its settings."""

    name = "safa"
    label = " + SAFA"
    delta_encoder = False  # the Delta-encoder subclass: E and G alone (models/safa.py, `safa_augment`)

    def __init__(self, setup: ModuleSetup):
        super().__init__(setup)
        config = setup.config
        self.config = config.safa
        self.is_head_class = head_class_mask(setup.class_counts, config.safa.head_ratio)
        self.class_counts = setup.class_counts
        channels = setup.backbone.feature_shape(config.safa.stage, config.data.image_size)[-1]
        if config.safa.q_width == -1:
            config.safa.q_width = channels
        modules = SafaModules(channels, q_width=config.safa.q_width, kernel_size=config.safa.kernel_size,
                              delta_channels=config.safa.delta_channels, delta_encoder_only=self.delta_encoder,
                              ops=setup.layer_ops, rngs=setup.rngs)
        self.bridge, self.initial_params, self.initial_stats = NnxBridge.split(modules)
        start_step = config.safa.start_epoch * setup.steps_per_epoch
        if setup.num_train_steps <= start_step:
            logging.warning("config.num_train_steps=%d ends the run before config.safa.start_epoch=%d (step %d): "
                            "SAFA's augmented features will not join the classification loss in this run",
                            setup.num_train_steps, config.safa.start_epoch, start_step)

    @staticmethod
    def validate(config: ml_collections.ConfigDict) -> None:
        if config.safa.stage > NUM_STAGES[config.model.name]:
            raise ValueError(f"config.safa.stage={config.safa.stage} is not a placement in {config.model.name}; "
                             f"allowed: 1..{NUM_STAGES[config.model.name]} (after that stage)")
        if config.safa.start_epoch >= config.num_epochs:
            raise ValueError(f"config.safa.start_epoch={config.safa.start_epoch} is not before "
                             f"config.num_epochs={config.num_epochs}: SAFA's augmented features would never join "
                             "the classification loss (the baseline at SAFA's cost); allowed: start_epoch < num_epochs")

    @staticmethod
    def resolve_config(config: ml_collections.ConfigDict) -> None:
        config.safa.num_slots = resolve_num_slots(config.safa.num_slots, config.batch_size)

    def variant_at(self, epoch: int) -> Hashable:
        """True from `safa.start_epoch` on: the augmented features join the classification loss."""
        return epoch >= self.config.start_epoch

    def classifier_batch(self, backbone: nnx.Module, params, batch_stats, x: jax.Array, y: jax.Array,
                         key: jax.Array, *, variant: Hashable, precision) -> ClassifierBatch:
        safa_cfg = self.config
        features = backbone.lower(x, safa_cfg.stage, train=True)
        modules = self.bridge.merge(params, batch_stats)
        out = safa_augment(modules, features, y, jnp.asarray(self.is_head_class), key, num_slots=safa_cfg.num_slots,
                           safa_config=safa_cfg, train=True, class_counts=jnp.asarray(self.class_counts, jnp.float32),
                           delta_encoder=self.delta_encoder)
        new_stats = NnxBridge.batch_stats_of(modules)
        out = out.replace(terms=precision.to_float32(out.terms), parts=precision.to_float32(out.parts),
                          stats=precision.to_float32(out.stats))
        metrics = {f"safa/{name}": value for name, value in out.terms.items()}
        metrics.update({f"safa/{name}": value for name, value in out.stats.items()})
        metrics.update({f"safa/part/{name}": value for name, value in out.parts.items()})
        labels, weights = y, jnp.ones(y.shape, jnp.float32)
        class_weighted = upper_mask = None
        if variant:
            features = jnp.concatenate([features, out.features.astype(features.dtype)])
            labels = jnp.concatenate([y, out.labels])
            weights = jnp.concatenate([weights, out.weights])
            is_real = jnp.arange(labels.shape[0]) < y.shape[0]
            if not safa_cfg.augmented_class_weights:
                class_weighted = is_real
            if safa_cfg.upper_bn_stats == "real":
                upper_mask = is_real
        logits = backbone.classify(backbone.upper(features, safa_cfg.stage, train=True, mask=upper_mask))
        return ClassifierBatch(logits=logits, labels=labels, sample_weights=weights, class_weighted=class_weighted,
                               extra_loss=safa_total_loss(out.terms, safa_cfg), metrics=metrics,
                               batch_stats=new_stats)


def validate_safa_section(safa: ml_collections.ConfigDict) -> None:
    """The `config.safa` section's own values, checked whichever method runs (a typo is never silently kept)."""
    if not isinstance(safa.stage, int) or safa.stage < 1:
        raise ValueError(f"config.safa.stage={safa.stage!r} is not a placement; allowed: the number of a "
                         "backbone stage to insert after (1, 2 or 3 for ResNet-32; 1-4 for ResNet-50/152)")
    if not 0.0 < safa.head_ratio < 1.0:
        raise ValueError(f"config.safa.head_ratio={safa.head_ratio} must lie in (0, 1)")
    if safa.num_slots != -1:
        positive_int(safa.num_slots, "safa.num_slots (or -1 for batch_size // 2)")
    if safa.q_width != -1:
        positive_int(safa.q_width, "safa.q_width (or -1 for the feature's channel count)")
    if safa.kernel_size not in SAFA_KERNEL_SIZES:
        raise ValueError(f"config.safa.kernel_size={safa.kernel_size!r}; "
                         f"allowed: {', '.join(map(str, SAFA_KERNEL_SIZES))}")
    if safa.start_epoch < 0:
        raise ValueError(f"config.safa.start_epoch must be >= 0, got {safa.start_epoch}")
    for field, allowed in (("tail_sampling", TAIL_SAMPLING), ("upper_bn_stats", UPPER_BN_STATS),
                           ("q_pairs", Q_PAIRS)):
        if safa[field] not in allowed:
            raise ValueError(f"unknown config.safa.{field}={safa[field]!r}; allowed: {', '.join(allowed)}")
    if safa.delta_channels != -1:
        positive_int(safa.delta_channels, "safa.delta_channels (or -1 for the feature's channel count)")
    if safa.ms_eps <= 0:
        raise ValueError(f"config.safa.ms_eps must be > 0, got {safa.ms_eps}")
    for name in ("lambda_reconstruction", "lambda_contrastive", "lambda_ms_head", "lambda_ms_tail"):
        if safa[name] < 0:
            raise ValueError(f"config.safa.{name} must be >= 0, got {safa[name]}")
