"""Layer constructors with PyTorch's conventions, shared by the backbones so that weights and outputs match.

Flax's BatchNorm momentum 0.9 is PyTorch's momentum 0.1 (Flax weights the old running value); epsilon is
PyTorch's 1e-5; scale 1 and bias 0 are PyTorch's init. Convolutions carry no bias (a BatchNorm follows) and
take explicit paddings, as PyTorch pads. Every constructor takes the model's `LayerOps` (how its layers compute,
safa_jax/models/layer_ops.py).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from safa_jax.models.batch_norm import BatchNorm
from safa_jax.models.layer_ops import LayerOps


def batch_norm(num_features: int, *, ops: LayerOps, rngs: nnx.Rngs) -> BatchNorm:
    return BatchNorm(num_features, momentum=0.9, epsilon=1e-5, form=ops.batch_norm_form, rngs=rngs)


def conv(in_channels: int, out_channels: int, kernel_size: int, *, ops: LayerOps, rngs: nnx.Rngs,
         **conv_args) -> nnx.Conv:
    """`nnx.Conv` with a square kernel, computing with `ops`' convolution; `conv_args` are nnx.Conv's others."""
    return nnx.Conv(in_channels, out_channels, kernel_size=(kernel_size, kernel_size),
                    conv_general_dilated=ops.conv_general_dilated, rngs=rngs, **conv_args)


def conv_no_bias(in_channels: int, out_channels: int, kernel: int, stride: int, padding, *,
                 kernel_init: Callable, ops: LayerOps, groups: int = 1, rngs: nnx.Rngs) -> nnx.Conv:
    return conv(in_channels, out_channels, kernel, strides=stride, padding=padding, feature_group_count=groups,
                use_bias=False, kernel_init=kernel_init, ops=ops, rngs=rngs)


def batch_norm_mask(valid: jax.Array | None, ndim: int) -> jax.Array | None:
    """(N,) bool -> (N, 1, ..., 1), as BatchNorm broadcasts it against an `ndim` input; None stays None.

    With no valid entry, every entry counts instead: an empty mask would give NaN statistics (0 / 0),
    and NaN forward values poison masked losses' gradients even where their weight is 0.
    """
    if valid is None:
        return None
    valid = valid | ~jnp.any(valid)
    return valid.reshape(valid.shape + (1,) * (ndim - 1))
