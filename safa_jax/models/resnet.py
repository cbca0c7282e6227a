"""ResNet-50, ResNet-152 and ResNeXt-50 (32x4d) in torchvision's layout (v1.5), split for SAFA like ResNet-32.

The large-scale recipes (RSG's public settings) train torchvision's ResNets: ResNet-50 from scratch on
iNaturalist 2018 and ImageNet-LT, ResNet-152 from ImageNet weights on Places-LT. Layout, padding
and initialisation match torchvision, so that its weights load unchanged (models/torch_import.py)
and give the same outputs.

v1.5 puts the stride of a down-sampling bottleneck on its 3x3 conv, not on the first 1x1 conv.
SAFA's placements are the four stages: `lower(x, s)` runs the stem and stages 1..s, `upper(F, s)`
runs stages s+1..4 and the pooling, `classify` applies the head. The interface is ResNetCifar's,
so the training step and SAFA use either backbone unchanged. As there, Flax's BatchNorm keeps the
biased batch variance in its running average where PyTorch keeps the unbiased one; imported
running statistics are used as they are.
"""

import jax
from flax import nnx

from safa_jax.models.heads import build_head, torch_linear_bias_init
from safa_jax.models.layer_ops import XLA_LAYERS, LayerOps
from safa_jax.models.layers import batch_norm, batch_norm_mask, conv_no_bias
from safa_jax.models.split_backbone import SplitBackbone

RESNET50_LAYERS = (3, 4, 6, 3)
RESNET152_LAYERS = (3, 8, 36, 3)
BOTTLENECK_EXPANSION = 4
RESNEXT50_GROUPS, RESNEXT50_BASE_WIDTH = 32, 4  # "32x4d": 32 groups of 4 channels at the first stage

# torchvision initialises every conv with kaiming_normal_(mode="fan_out", nonlinearity="relu").
KAIMING_NORMAL_FAN_OUT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch's explicit paddings. "SAME" would pad a stride-2 layer on an even input by (0, 1) where
# PyTorch pads (1, 1) or (3, 3), shifting every output window by one pixel.
_STEM_PAD = ((3, 3), (3, 3))
_PAD_ONE = ((1, 1), (1, 1))
_NO_PAD = ((0, 0), (0, 0))


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int, *, groups: int = 1, ops: LayerOps,
          rngs: nnx.Rngs) -> nnx.Conv:
    # A grouped conv's fan-out init counts one group's inputs, as torchvision's: PyTorch's fan-out of a grouped
    # weight (out, in / groups, k, k) is out * k * k, the same as Flax's for HWIO (k, k, in / groups, out).
    padding = {1: _NO_PAD, 3: _PAD_ONE, 7: _STEM_PAD}[kernel]
    return conv_no_bias(in_channels, out_channels, kernel, stride, padding, kernel_init=KAIMING_NORMAL_FAN_OUT,
                        groups=groups, ops=ops, rngs=rngs)


class Bottleneck(nnx.Module):
    """1x1 (reduce) - 3x3 (with the stride) - 1x1 (expand x4), each with BN; shortcut added before the last ReLU.

    ResNeXt: the 3x3 conv is grouped (`groups`) and the inner width is planes * base_width / 64 * groups.

    A projection shortcut (1x1 conv with the stride, then BN) replaces the identity where the
    shape changes; it is a two-entry list so that its names follow torchvision's `downsample.0/1`.
    """

    def __init__(self, in_channels: int, planes: int, stride: int, *, groups: int = 1, base_width: int = 64,
                 ops: LayerOps, rngs: nnx.Rngs):
        out_channels = planes * BOTTLENECK_EXPANSION
        inner = int(planes * base_width / 64) * groups  # torchvision's `width`: planes for ResNet, 2 planes for 32x4d
        self.conv1 = _conv(in_channels, inner, 1, 1, ops=ops, rngs=rngs)
        self.bn1 = batch_norm(inner, ops=ops, rngs=rngs)
        self.conv2 = _conv(inner, inner, 3, stride, groups=groups, ops=ops, rngs=rngs)
        self.bn2 = batch_norm(inner, ops=ops, rngs=rngs)
        self.conv3 = _conv(inner, out_channels, 1, 1, ops=ops, rngs=rngs)
        self.bn3 = batch_norm(out_channels, ops=ops, rngs=rngs)
        changes_shape = stride != 1 or in_channels != out_channels
        self.downsample = (
            nnx.List([_conv(in_channels, out_channels, 1, stride, ops=ops, rngs=rngs), batch_norm(out_channels, ops=ops, rngs=rngs)])
            if changes_shape
            else None
        )

    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        """`mask` (N,) bool: in training, every BatchNorm takes its statistics over these entries only."""
        bn_mask = batch_norm_mask(mask, x.ndim)
        out = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train, mask=bn_mask))
        out = nnx.relu(self.bn2(self.conv2(out), use_running_average=not train, mask=bn_mask))
        out = self.bn3(self.conv3(out), use_running_average=not train, mask=bn_mask)
        shortcut = x
        if self.downsample is not None:
            conv, bn = self.downsample
            shortcut = bn(conv(x), use_running_average=not train, mask=bn_mask)
        return nnx.relu(out + shortcut)


def torchvision_head(head: str, in_features: int, num_classes: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """torchvision's fc keeps PyTorch's default Linear init: weight and bias both uniform(+-1/sqrt(fan_in)).

    (kaiming_uniform_ with a=sqrt(5) on the weight has exactly that bound.) The cosine head has no
    torchvision counterpart and keeps the LDAM reference's init.
    """
    if head == "linear":
        uniform = torch_linear_bias_init(in_features)
        return nnx.Linear(in_features, num_classes, kernel_init=uniform, bias_init=uniform, rngs=rngs)
    return build_head(head, in_features, num_classes, rngs=rngs)


class ResNet(SplitBackbone):
    """torchvision's bottleneck ResNet (v1.5): `layers` blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.

    7x7/2 stem conv, BN, ReLU, 3x3/2 max pool, then four stages of bottlenecks with `width`,
    2 * width, 4 * width and 8 * width inner channels (64..512 in torchvision) and four times that
    many output channels; stages 2..4 start with stride 2. Global average pool, then the head.
    """

    num_stages = 4

    def __init__(
        self,
        num_classes: int,
        *,
        layers: tuple[int, ...],
        in_channels: int = 3,
        width: int = 64,
        head: str = "linear",
        groups: int = 1,
        base_width: int = 64,
        ops: LayerOps = XLA_LAYERS,
        rngs: nnx.Rngs,
    ):
        self._check_common_arguments(num_classes, in_channels, head)
        if width < 1:
            raise ValueError(f"width must be at least 1 (64 in torchvision), got {width}")
        if int(width * base_width / 64) < 1:
            raise ValueError(f"width={width} gives ResNeXt's first stage no channel per group "
                             f"(width * {base_width} / 64 < 1); allowed: width >= {-(-64 // base_width)}")
        if len(layers) != self.num_stages or min(layers) < 1:
            raise ValueError(f"layers must be {self.num_stages} block counts of at least 1, got {layers!r}")
        self.width = width
        self.keep_block_outputs = ops.keep_block_outputs
        self.stem_conv = _conv(in_channels, width, 7, 2, ops=ops, rngs=rngs)
        self.stem_bn = batch_norm(width, ops=ops, rngs=rngs)
        stages = []
        block_in = width
        for stage, num_blocks in enumerate(layers, start=1):
            planes = width * 2 ** (stage - 1)
            first_stride = 1 if stage == 1 else 2
            shape = dict(groups=groups, base_width=base_width, ops=ops, rngs=rngs)
            blocks = [Bottleneck(block_in, planes, first_stride, **shape)]
            block_in = planes * BOTTLENECK_EXPANSION
            blocks += [Bottleneck(block_in, planes, 1, **shape) for _ in range(num_blocks - 1)]
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.head = torchvision_head(head, block_in, num_classes, rngs=rngs)

    def stage_channels(self, stage: int) -> int:
        """Channels of the feature map after `stage` (1..4): 256, 512, 1024, 2048 at width 64."""
        self._check_stage(stage)
        return self.width * 2 ** (stage - 1) * BOTTLENECK_EXPANSION

    def feature_shape(self, stage: int, image_size: int) -> tuple[int, int, int]:
        """(H, W, C) of `lower(x, stage)` for square inputs of side `image_size`.

        The stem conv, the max pool and stages 2..4 each halve the side, rounding up
        (224 px: 56, 28, 14, 7).
        """
        self._check_stage(stage)
        if image_size < 1:
            raise ValueError(f"image_size must be at least 1, got {image_size}")
        side = image_size
        for _ in range(stage + 1):
            side = (side + 1) // 2
        return side, side, self.stage_channels(stage)

    def stem(self, x: jax.Array, *, train: bool) -> jax.Array:
        """7x7/2 conv, BN, ReLU, 3x3/2 max pool."""
        out = nnx.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
        # Padding with -inf, as PyTorch's MaxPool2d(padding=1): a padded pixel never wins.
        return nnx.max_pool(out, window_shape=(3, 3), strides=(2, 2), padding=_PAD_ONE)


def _torchvision_resnet(num_classes: int, layers: tuple[int, ...], *, in_channels: int = 3, width: int = 64,
                       blocks_per_stage: int | None = None, head: str = "linear", groups: int = 1,
                       base_width: int = 64, ops: LayerOps = XLA_LAYERS, rngs: nnx.Rngs) -> ResNet:
    del blocks_per_stage  # The registry's argument for the CIFAR family; here the depth is in the name.
    return ResNet(num_classes, layers=layers, in_channels=in_channels, width=width, head=head, groups=groups,
                  base_width=base_width, ops=ops, rngs=rngs)


def resnet50(num_classes: int, **kwargs) -> ResNet:
    """ResNet-50 (25,557,032 parameters for 1000 classes). `blocks_per_stage` (the registry's argument
    for the CIFAR family) is ignored; `width` is the stem's channel count (64).
    """
    return _torchvision_resnet(num_classes, RESNET50_LAYERS, **kwargs)


def resnet152(num_classes: int, **kwargs) -> ResNet:
    """ResNet-152 (60,192,808 parameters for 1000 classes); arguments as for `resnet50`."""
    return _torchvision_resnet(num_classes, RESNET152_LAYERS, **kwargs)


def resnext50_32x4d(num_classes: int, **kwargs) -> ResNet:
    """ResNeXt-50 32x4d (25,028,904 parameters for 1000 classes), the backbone of RSG's ImageNet-LT numbers;
    arguments as for `resnet50` (`width` >= 16, so that each of the 32 groups keeps a channel)."""
    return _torchvision_resnet(num_classes, RESNET50_LAYERS, groups=RESNEXT50_GROUPS,
                               base_width=RESNEXT50_BASE_WIDTH, **kwargs)
