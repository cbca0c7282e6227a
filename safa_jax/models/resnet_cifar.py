"""ResNet for CIFAR (ResNet-32 by default) as in the LDAM-DRW reference code, split for SAFA.

The reference is kaidic/LDAM-DRW `models/resnet_cifar.py` (itself from akamaster's
pytorch_resnet_cifar10), on which the published long-tailed CIFAR numbers were trained. Layer
layout, option-A shortcuts, padding and initialisation match it.

SAFA augments the feature map inside the network, so the forward pass is exposed in two halves:
`lower(x, s)` runs the stem and stages 1..s, `upper(F, s)` runs stages s+1..3 and the pooling,
and `classify` applies the head. `model(x)` is `classify(upper(lower(x, 3), 3))`.

One difference from PyTorch that cannot be removed: Flax's BatchNorm keeps the biased batch
variance in its running average where PyTorch keeps the unbiased one (a factor n/(n-1) with n the
number of pixels in the batch, 1 + 8e-6 at batch 128 and 32x32).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from safa_jax.models.heads import KAIMING_NORMAL, build_head
from safa_jax.models.layer_ops import XLA_LAYERS, LayerOps
from safa_jax.models.layers import batch_norm, batch_norm_mask, conv_no_bias
from safa_jax.models.split_backbone import SplitBackbone

# PyTorch's padding=1 on every 3x3 conv. "SAME" would pad a stride-2 conv on an even size by
# (0, 1) instead of (1, 1), moving every output window one pixel off the option-A shortcut's
# x[::2, ::2] grid.
_PAD_ONE = ((1, 1), (1, 1))


def _conv3x3(in_channels: int, out_channels: int, stride: int, *, ops: LayerOps, rngs: nnx.Rngs) -> nnx.Conv:
    return conv_no_bias(in_channels, out_channels, 3, stride, _PAD_ONE, kernel_init=KAIMING_NORMAL, ops=ops,
                        rngs=rngs)


def option_a_shortcut(x: jax.Array, planes: int) -> jax.Array:
    """The parameter-free "option A" shortcut: every second pixel, channels zero-padded by planes//4 each side.

    It halves H and W and takes C channels to C + 2 * (planes // 4), which is `planes` when the
    stage doubles the width.
    """
    pad = planes // 4
    return jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))


class BasicBlock(nnx.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int, *, ops: LayerOps, rngs: nnx.Rngs):
        self.conv1 = _conv3x3(in_planes, planes, stride, ops=ops, rngs=rngs)
        self.bn1 = batch_norm(planes, ops=ops, rngs=rngs)
        self.conv2 = _conv3x3(planes, planes, 1, ops=ops, rngs=rngs)
        self.bn2 = batch_norm(planes, ops=ops, rngs=rngs)
        self.planes = planes
        self.changes_shape = stride != 1 or in_planes != planes

    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        """`mask` (N,) bool: in training, every BatchNorm takes its statistics over these entries only."""
        bn_mask = batch_norm_mask(mask, x.ndim)
        out = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train, mask=bn_mask))
        out = self.bn2(self.conv2(out), use_running_average=not train, mask=bn_mask)
        shortcut = option_a_shortcut(x, self.planes) if self.changes_shape else x
        return nnx.relu(out + shortcut)


class ResNetCifar(SplitBackbone):
    """ResNet-32 for CIFAR exactly as the LDAM-DRW reference code (resnet32 in models/resnet_cifar.py).

    Depth is 6 * blocks_per_stage + 2: blocks_per_stage=5 is ResNet-32 (about 0.46 M parameters
    for 10 classes). `width` is the stem's and stage 1's channel count (16 in the reference);
    stages 2 and 3 have 2 * width and 4 * width.
    """

    num_stages = 3

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        width: int = 16,
        blocks_per_stage: int = 5,
        head: str = "linear",
        ops: LayerOps = XLA_LAYERS,
        rngs: nnx.Rngs,
    ):
        self._check_common_arguments(num_classes, in_channels, head)
        if width < 2 or width % 2:
            raise ValueError(
                f"width must be a positive even number (option-A shortcuts pad planes // 4 channels "
                f"on each side, so 2 * width must divide by 4), got {width}"
            )
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be at least 1, got {blocks_per_stage}")
        self.width = width
        self.keep_block_outputs = ops.keep_block_outputs
        self.stem_conv = _conv3x3(in_channels, width, 1, ops=ops, rngs=rngs)
        self.stem_bn = batch_norm(width, ops=ops, rngs=rngs)
        stages = []
        in_planes = width
        for stage in range(1, self.num_stages + 1):
            planes = self.stage_channels(stage)
            first_stride = 1 if stage == 1 else 2
            blocks = [BasicBlock(in_planes, planes, first_stride, ops=ops, rngs=rngs)]
            blocks += [BasicBlock(planes, planes, 1, ops=ops, rngs=rngs) for _ in range(blocks_per_stage - 1)]
            stages.append(nnx.List(blocks))
            in_planes = planes
        self.stages = nnx.List(stages)
        self.head = build_head(head, in_planes, num_classes, rngs=rngs)

    def stage_channels(self, stage: int) -> int:
        """Channels of the feature map after `stage` (1..3)."""
        self._check_stage(stage)
        return self.width * 2 ** (stage - 1)

    def feature_shape(self, stage: int, image_size: int) -> tuple[int, int, int]:
        """(H, W, C) of `lower(x, stage)` for square inputs of side `image_size`.

        Stages 2 and 3 each halve the side, rounding up (3x3 conv, padding 1, stride 2).
        """
        self._check_stage(stage)
        if image_size < 1:
            raise ValueError(f"image_size must be at least 1, got {image_size}")
        side = image_size
        for _ in range(stage - 1):
            side = (side + 1) // 2
        return side, side, self.stage_channels(stage)

    def stem(self, x: jax.Array, *, train: bool) -> jax.Array:
        """3x3 conv, BN, ReLU."""
        return nnx.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
