"""oneDNN convolutions for JAX on CPU: a drop-in `conv_general_dilated` whose forward, input gradient and
weight gradient run in oneDNN (the library PyTorch uses on CPU) through XLA FFI custom calls.

Why: XLA's CPU convolutions (Eigen) are 1.3-2x slower than oneDNN on a forward pass and 3-5x on weight
gradients for ResNet-32's shapes (docs/benchmark_log.md), and convolutions are most of a train step.
The mathematics is the same convolution; `tests/test_conv_backend.py` checks outputs and gradients against
`jax.lax.conv_general_dilated`.

The handlers (`onednn_conv.cc`) are compiled on first use by `onednn_build`.
Covered: float32, 2-D, NHWC activations with HWIO kernels (Flax's layout), unit dilation, one feature group;
anything else goes to `jax.lax.conv_general_dilated` unchanged.
"""

import ctypes
import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from safa_jax.cpu.onednn_build import OnednnUnavailable, build_library

__all__ = ["OnednnUnavailable", "conv_general_dilated", "conv_nhwc", "ensure_available", "unavailable_reason"]

_TARGETS = {  # FFI target name -> exported handler symbol in onednn_conv.cc
    "safa_onednn_conv_forward": "SafaOnednnConvForward",
    "safa_onednn_conv_backward_data": "SafaOnednnConvBackwardData",
    "safa_onednn_conv_backward_weights": "SafaOnednnConvBackwardWeights",
    "safa_keep_in_memory": "SafaKeepInMemory",  # built into the same library: safa_jax/cpu/keep_in_memory.py
}
_NHWC_SPECS = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))

_registration_lock = threading.Lock()
_registered = False


def ensure_available() -> None:
    """Builds (if not cached) and registers the library's handlers once per process; OnednnUnavailable names the
    reason."""
    global _registered
    with _registration_lock:
        if not _registered:
            handlers = ctypes.cdll.LoadLibrary(str(build_library()))
            for target, symbol in _TARGETS.items():
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(handlers, symbol)), platform="cpu")
            _registered = True


def unavailable_reason() -> str | None:
    """Why the handlers cannot be built and registered here, or None once they are."""
    try:
        ensure_available()
    except OnednnUnavailable as error:
        return str(error)
    return None


def _attributes(strides: tuple[int, int], padding: tuple[tuple[int, int], ...]) -> dict[str, np.ndarray]:
    return {"strides": np.asarray(strides, np.int64),
            "padding_lo": np.asarray([low for low, _ in padding], np.int64),
            "padding_hi": np.asarray([high for _, high in padding], np.int64)}


def _output_shape(x_shape, w_shape, strides, padding) -> tuple[int, ...]:
    spatial = tuple((size + low + high - kernel) // stride + 1
                    for size, kernel, stride, (low, high) in zip(x_shape[1:3], w_shape[:2], strides, padding))
    return (x_shape[0], *spatial, w_shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_nhwc(x: jax.Array, w: jax.Array, strides: tuple[int, int],
              padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """y = conv(x, w): x NHWC, w HWIO, both float32; `padding` is ((top, bottom), (left, right))."""
    out = jax.ShapeDtypeStruct(_output_shape(x.shape, w.shape, strides, padding), x.dtype)
    return jax.ffi.ffi_call("safa_onednn_conv_forward", out, vmap_method="sequential")(
        x, w, **_attributes(strides, padding))


def _conv_forward(x, w, strides, padding):
    return conv_nhwc(x, w, strides, padding), (x, w)


def _conv_backward(strides, padding, residuals, dy):
    x, w = residuals
    attributes = _attributes(strides, padding)
    dx = jax.ffi.ffi_call("safa_onednn_conv_backward_data", jax.ShapeDtypeStruct(x.shape, x.dtype),
                          vmap_method="sequential")(dy, w, **attributes)
    dw = jax.ffi.ffi_call("safa_onednn_conv_backward_weights", jax.ShapeDtypeStruct(w.shape, w.dtype),
                          vmap_method="sequential")(x, dy, **attributes)
    return dx, dw


conv_nhwc.defvjp(_conv_forward, _conv_backward)


def _covered(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
             kwargs) -> bool:
    unit = lambda dilation: dilation is None or all(d == 1 for d in dilation)  # noqa: E731
    if lhs.ndim != 4 or lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
        return False
    return (lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC_SPECS
            and (isinstance(padding, str) or all(low >= 0 and high >= 0 for low, high in padding))
            and unit(lhs_dilation) and unit(rhs_dilation) and feature_group_count == 1
            and kwargs.get("out_sharding") is None and kwargs.get("preferred_element_type") is None)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`jax.lax.conv_general_dilated`'s signature (what `flax.nnx.Conv` calls), on oneDNN where covered."""
    if not _covered(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, kwargs):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision, **kwargs)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    return conv_nhwc(lhs, rhs, tuple(int(s) for s in window_strides),
                     tuple((int(low), int(high)) for low, high in padding))
