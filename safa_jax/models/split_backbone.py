"""The split forward pass SAFA needs of a backbone, shared by the CIFAR ResNets and torchvision's.

SAFA augments the feature map inside the network, so a backbone exposes its forward pass in parts:
`lower(x, s)` runs the stem and stages 1..s, `upper(F, s)` runs stages s+1..num_stages and the global
average pooling, `classify` applies the head; `model(x)` is `classify(upper(lower(x, n), n))`.
A subclass sets `num_stages`, `stages` (a list of block lists) and `head`, and defines `stem`.
The stem's and every block's output pass through `keep_block_outputs`, which a subclass takes from its
`LayerOps` at construction (safa_jax/models/layer_ops.py): unchanged, or with the oneDNN convolutions a no-op
custom call that stops XLA's CPU fusion from recomputing earlier blocks inside later ones.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from safa_jax.models.layer_ops import unchanged
from safa_jax.models.heads import HEADS


class SplitBackbone(nnx.Module):
    """Base class of the backbones: the stage loop and the split around a SAFA placement."""

    num_stages: int
    keep_block_outputs = staticmethod(unchanged)  # a subclass sets its LayerOps' own: see the module docstring

    def stem(self, x: jax.Array, *, train: bool) -> jax.Array:
        """The layers before stage 1."""
        raise NotImplementedError

    @staticmethod
    def _check_common_arguments(num_classes: int, in_channels: int, head: str) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be at least 1, got {in_channels}")
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; allowed: {', '.join(HEADS)}")

    def _check_stage(self, stage: int) -> None:
        if not isinstance(stage, int) or not 1 <= stage <= self.num_stages:
            raise ValueError(f"stage must be one of 1..{self.num_stages}, got {stage!r}")

    def _run_stages(self, out: jax.Array, first: int, stop: int, *, train: bool,
                    mask: jax.Array | None = None) -> jax.Array:
        block_args = {} if mask is None else {"mask": mask}
        for stage_index in range(first, stop):
            for block in self.stages[stage_index]:
                out = self.keep_block_outputs(block(out, train=train, **block_args))
        return out

    def lower(self, x: jax.Array, stage: int, *, train: bool) -> jax.Array:
        """Stem and stages 1..stage: the feature map F on which SAFA works (NHWC)."""
        self._check_stage(stage)
        return self._run_stages(self.keep_block_outputs(self.stem(x, train=train)), 0, stage, train=train)

    def upper(self, features: jax.Array, stage: int, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        """The stages after `stage` on a feature map from `lower(x, stage)`, then global average pooling -> (B, C).

        `mask` (B,) bool: in training, the BatchNorms take their batch statistics (and so their running
        averages, used at test time) over these entries only, e.g. the real ones among SAFA's generated.
        """
        self._check_stage(stage)
        return jnp.mean(self._run_stages(features, stage, self.num_stages, train=train, mask=mask), axis=(1, 2))

    def classify(self, pooled: jax.Array) -> jax.Array:
        """Logits from pooled features (B, C): linear, or cosines for the normed head."""
        return self.head(pooled)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.classify(self.upper(self.lower(x, self.num_stages, train=train), self.num_stages, train=train))
