"""Layer constructors with PyTorch's conventions, shared by the backbones so that weights and outputs match.

Flax's BatchNorm momentum 0.9 is PyTorch's momentum 0.1 (Flax weights the old running value); epsilon is
PyTorch's 1e-5; scale 1 and bias 0 are PyTorch's init. Convolutions carry no bias (a BatchNorm follows) and
take explicit paddings, as PyTorch pads.
"""

from collections.abc import Callable

from flax import nnx

from safa_jax.models.batch_norm import BatchNorm


def batch_norm(num_features: int, *, rngs: nnx.Rngs) -> BatchNorm:
    return BatchNorm(num_features, momentum=0.9, epsilon=1e-5, rngs=rngs)


def conv_no_bias(in_channels: int, out_channels: int, kernel: int, stride: int, padding, *,
                 kernel_init: Callable, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(in_channels, out_channels, kernel_size=(kernel, kernel), strides=stride, padding=padding,
                    use_bias=False, kernel_init=kernel_init, rngs=rngs)
