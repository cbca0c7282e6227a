"""RSG as a training method (`config.method="rsg"`, settings in `config.rsg`): its modules after a backbone
stage, its CESC and MV losses, and its two compiled variants (before and from `rsg.start_epoch`, when the
generated rare-class features join the classification loss). The generator is `safa_jax/models/rsg.py`.

Defaults are the official CIFAR code's: after stage 2 of ResNet-32, 15 centers per class, contrastive
width 256, head classes the 20 % largest, transfer strength 1, generation from epoch 160 (`epoch_thresh`
159), loss = L_cls + 0.1 L_cesc + 0.01 L_mv.
"""

from collections.abc import Hashable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from safa_jax.methods.base import ClassifierBatch, Method, ModuleSetup
from safa_jax.models import NUM_STAGES
from safa_jax.models.rsg import RsgModules, head_classes_by_count, rsg_augment
from safa_jax.state import NnxBridge


class RsgMethod(Method):
    """The rare-class sample generator of Wang et al. (CVPR 2021)."""

    name = "rsg"
    label = " + RSG"

    def __init__(self, setup: ModuleSetup):
        super().__init__(setup)
        config = setup.config
        self.config = config.rsg
        self.is_head_class = head_classes_by_count(setup.class_counts, config.rsg.head_ratio)
        channels = setup.backbone.feature_shape(config.rsg.stage, config.data.image_size)[-1]
        modules = RsgModules(channels, len(setup.class_counts), n_center=config.rsg.n_center,
                             contrastive_width=config.rsg.contrastive_width, ops=setup.layer_ops, rngs=setup.rngs)
        self.bridge, self.initial_params, self.initial_stats = NnxBridge.split(modules)

    @staticmethod
    def validate(config: ml_collections.ConfigDict) -> None:
        rsg = config.rsg
        if not isinstance(rsg.stage, int) or not 1 <= rsg.stage <= NUM_STAGES[config.model.name]:
            raise ValueError(f"config.rsg.stage={rsg.stage!r} is not a placement in {config.model.name}; "
                             f"allowed: 1..{NUM_STAGES[config.model.name]} (after that stage)")
        if not 0.0 < rsg.transfer_strength <= 1.0:
            raise ValueError(f"config.rsg.transfer_strength={rsg.transfer_strength} must lie in (0, 1] (the official "
                             "pairing needs whole chunks of the more numerous group)")
        if not 0.0 < rsg.head_ratio < 1.0:
            raise ValueError(f"config.rsg.head_ratio={rsg.head_ratio} must lie in (0, 1)")
        for field in ("n_center", "contrastive_width"):
            if not isinstance(rsg[field], int) or rsg[field] < 1:
                raise ValueError(f"config.rsg.{field} must be a positive integer, got {rsg[field]!r}")
        if not 0 <= rsg.start_epoch < config.num_epochs:
            raise ValueError(f"config.rsg.start_epoch={rsg.start_epoch} is not in 0..config.num_epochs-1="
                             f"{config.num_epochs - 1}: RSG would never generate")
        if rsg.lambda_cesc < 0 or rsg.lambda_mv < 0:
            raise ValueError(f"config.rsg.lambda_cesc={rsg.lambda_cesc} and lambda_mv={rsg.lambda_mv} must be >= 0")

    def frozen(self, params, variant: Hashable):
        """As the official code's optimizer sees it: before generation T has no gradient (PyTorch's SGD skips it,
        weight decay included); from generation on the contrastive module is frozen (requires_grad=False)."""
        def stays(part: str) -> bool:
            return part.startswith("contrastive") if variant else part == "transform"

        frozen = jax.tree.map(lambda _: False, params)
        frozen[self.name] = {part: jax.tree.map(lambda _, s=stays(part): s, tree)
                             for part, tree in params[self.name].items()}
        return frozen

    def variant_at(self, epoch: int) -> Hashable:
        """True from `rsg.start_epoch` on: generated features join the classification loss."""
        return epoch >= self.config.start_epoch

    def classifier_batch(self, backbone: nnx.Module, params, batch_stats, x: jax.Array, y: jax.Array,
                         key: jax.Array, *, variant: Hashable, precision) -> ClassifierBatch:
        del key
        rsg = self.config
        features = backbone.lower(x, rsg.stage, train=True)
        modules = self.bridge.merge(params, batch_stats)
        out = rsg_augment(modules, features, y, jnp.asarray(self.is_head_class), generate=bool(variant),
                          strength=rsg.transfer_strength)
        terms = precision.to_float32(out.terms)
        metrics = {f"rsg/{name}": value for name, value in {**terms, **out.stats}.items()}
        labels, weights, upper_mask = y, jnp.ones(y.shape, jnp.float32), None
        if variant:
            features = jnp.concatenate([features, out.features.astype(features.dtype)])
            labels = jnp.concatenate([y, out.labels])
            weights = jnp.concatenate([weights, out.weights])
            # The upper BatchNorms see the real and the valid generated features, as RSG concatenates only those.
            upper_mask = jnp.concatenate([jnp.ones(y.shape, bool), out.weights > 0])
        logits = backbone.classify(backbone.upper(features, rsg.stage, train=True, mask=upper_mask))
        extra = rsg.lambda_cesc * terms["cesc"] + rsg.lambda_mv * terms["mv"]
        return ClassifierBatch(logits=logits, labels=labels, sample_weights=weights, extra_loss=extra,
                               metrics=metrics, batch_stats=NnxBridge.batch_stats_of(modules))
