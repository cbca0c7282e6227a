"""Classifier re-training (cRT; Kang et al., ICLR 2020, "Decoupling representation and classifier").

The second stage of a decoupled run: the backbone of a finished run (`config.init_from`) is frozen, its
features taken in evaluation mode (running BatchNorm statistics, no gradient), and the classifier, freshly
initialised, is trained alone with class-balanced sampling (`loss.train_rule="resample"`;
`loss.sampling_weights="inverse_count"` draws every class equally often, as Kang et al. do).
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from safa_jax.methods.base import ClassifierBatch, Method, PyTree


class CrtMethod(Method):
    """Only the classifier trains; `frozen` keeps the backbone's weights exact."""

    name = "crt"
    label = " (cRT: classifier re-trained on a frozen backbone)"
    reinitialises_classifier = True

    @staticmethod
    def validate(config: ml_collections.ConfigDict) -> None:
        if not config.init_from:
            raise ValueError("config.method='crt' re-trains the classifier of a finished run: give its run folder "
                             "as --config.init_from=RUN")
        if config.loss.train_rule != "resample":
            raise ValueError(f"config.method='crt' trains with class-balanced sampling, and "
                             f"config.loss.train_rule={config.loss.train_rule!r}; allowed: "
                             "--config.loss.train_rule=resample (with --config.loss.sampling_weights=inverse_count "
                             "for Kang et al.'s every-class-equally sampling)")

    def frozen(self, params: PyTree, variant) -> PyTree:
        """Everything but the classifier."""
        del variant
        return {"backbone": {part: jax.tree.map(lambda _, stays=(part != "head"): stays, tree)
                             for part, tree in params["backbone"].items()}}

    def classifier_batch(self, backbone: nnx.Module, params, batch_stats, x: jax.Array, y: jax.Array,
                         key: jax.Array, *, variant, precision) -> ClassifierBatch:
        del params, batch_stats, key, variant, precision
        stages = backbone.num_stages
        pooled = jax.lax.stop_gradient(backbone.upper(backbone.lower(x, stages, train=False), stages, train=False))
        return ClassifierBatch(logits=backbone.classify(pooled), labels=y,
                               sample_weights=jnp.ones(y.shape, jnp.float32))
