"""ResNet-32 for CIFAR in PyTorch, the model of the LDAM-DRW reference code, for side-by-side speed figures.

Written to match `safa_jax/models/resnet_cifar.py` layer for layer: a 3x3 stem, three
stages of BasicBlocks (16, 32, 64 channels; strides 1, 2, 2), the parameter-free "option A" shortcut on a
shape change, global average pooling and a linear classifier; Kaiming-normal conv and linear weights, no
conv biases. Module names mirror the Flax model's (stem_conv, stages.S.B.conv1, head, ...) so that weights
can be copied across by name. torch is a benchmark-only dependency: the package never imports this file.
"""

import torch
import torch.nn.functional as F
from torch import nn


def _conv3x3(in_channels: int, out_channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class OptionAShortcut(nn.Module):
    """Every second pixel, channels zero-padded by planes // 4 on each side: halves H, W and doubles C."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        changes_shape = stride != 1 or in_planes != planes
        self.shortcut = OptionAShortcut(planes) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-(6 * blocks_per_stage + 2) for CIFAR; the defaults are ResNet-32 (464,154 parameters for 10 classes)."""

    def __init__(self, num_classes: int = 10, *, in_channels: int = 3, width: int = 16, blocks_per_stage: int = 5):
        super().__init__()
        if width < 2 or width % 2:
            raise ValueError(f"width={width}; allowed: a positive even number (option A pads planes // 4 a side).")
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage={blocks_per_stage}; allowed: 1 or more.")
        self.stem_conv = _conv3x3(in_channels, width, 1)
        self.stem_bn = nn.BatchNorm2d(width)
        stages, in_planes = [], width
        for stage in range(3):
            planes = width * 2**stage
            strides = [1 if stage == 0 else 2] + [1] * (blocks_per_stage - 1)
            blocks = []
            for stride in strides:
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(in_planes, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)  # weights only: the head's bias keeps torch's default.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.stem_bn(self.stem_conv(x)))
        for stage in self.stages:
            for block in stage:
                out = block(out)
        return self.head(out.mean(dim=(2, 3)))
