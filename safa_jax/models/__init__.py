"""Backbone registry: configs name a model and a head; build_model turns them into a module.

A new backbone (ResNet-50, ...) is one more entry in _BUILDERS.
"""

from collections.abc import Callable

from flax import nnx

from safa_jax.models.heads import HEADS, NormedLinear
from safa_jax.models.layer_ops import XLA_LAYERS, LayerOps
from safa_jax.models.resnet import ResNet, resnet50, resnet152, resnext50_32x4d
from safa_jax.models.resnet_cifar import ResNetCifar

# "resnet32" is the CIFAR ResNet family of the reference; blocks_per_stage=5 makes it ResNet-32.
# "resnet50" / "resnet152" / "resnext50_32x4d" are torchvision's (fixed depth: blocks_per_stage is ignored;
# width = stem width, 64).
_BUILDERS: dict[str, Callable[..., nnx.Module]] = {
    "resnet32": ResNetCifar,
    "resnet50": resnet50,
    "resnet152": resnet152,
    "resnext50_32x4d": resnext50_32x4d,
}
MODEL_NAMES = tuple(_BUILDERS)
# Stages of each backbone (SAFA's placements 1..N), known before any model is built.
NUM_STAGES = {"resnet32": ResNetCifar.num_stages, "resnet50": ResNet.num_stages, "resnet152": ResNet.num_stages,
              "resnext50_32x4d": ResNet.num_stages}

__all__ = ["HEADS", "MODEL_NAMES", "NUM_STAGES", "NormedLinear", "ResNetCifar", "build_model"]


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    width: int,
    blocks_per_stage: int,
    head: str,
    ops: LayerOps = XLA_LAYERS,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """The backbone `name` (one of MODEL_NAMES), computing with `ops`; the model validates the other arguments."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODEL_NAMES)}")
    return _BUILDERS[name](
        num_classes,
        in_channels=in_channels,
        width=width,
        blocks_per_stage=blocks_per_stage,
        head=head,
        ops=ops,
        rngs=rngs,
    )
