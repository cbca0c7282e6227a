"""Compute precision: the one place that decides which dtype the forward pass runs in (`config.model.compute_dtype`).

"bfloat16" is the usual mixed-precision choice on TPUs and recent GPUs (H100, H200): convolutions and
matrix products run in bfloat16 (faster on those chips' matrix units, half the activation memory), while
everything that accumulates over many steps stays float32:

- the parameters are stored float32 and cast to bfloat16 copies inside the differentiated function, so
  their gradients come back float32 to the float32 master copy, and the optimizer state (momentum)
  stays float32; a bfloat16 master copy would lose small updates (8 bits of mantissa: an update below
  1/256 of a weight rounds away);
- BatchNorm running statistics stay float32: Flax computes batch statistics in float32 (its
  `force_float32_reductions`), so the updated running averages keep their float32 dtype;
- the logits are cast to float32 before the softmax losses, so the log-sum-exp and the loss reductions
  run in float32. SAFA's own terms are computed inside `safa_augment` from bfloat16 features (JAX's
  means accumulate in float32, the results are rounded to bfloat16) and cast to float32 before they are
  weighted and summed.

Train (`safa_jax.train`) and evaluation (`safa_jax.evaluate`) both go through `Precision`, so they cast
the same things the same way. With "float32" every method returns its argument unchanged: the float32
path is exactly the one without this module.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ("float32", "bfloat16")  # the values `config.model.compute_dtype` allows.


def _is_float(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)


def _cast_floats(tree: Any, dtype: Any) -> Any:
    """Every floating-point leaf of `tree` cast to `dtype`; integer and boolean leaves untouched."""
    return jax.tree.map(lambda leaf: leaf.astype(dtype) if _is_float(leaf) else leaf, tree)


@dataclasses.dataclass(frozen=True)
class Precision:
    """The casting policy of one run: compute in `compute_dtype`, keep and return float32."""

    compute_dtype: str = "float32"

    def __post_init__(self):
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"unknown config.model.compute_dtype={self.compute_dtype!r}; "
                             f"allowed: {', '.join(COMPUTE_DTYPES)}")

    @classmethod
    def from_config(cls, model_config: Any) -> "Precision":
        """From `config.model` (its `compute_dtype` field)."""
        return cls(model_config.compute_dtype)

    @property
    def is_float32(self) -> bool:
        return self.compute_dtype == "float32"

    def to_compute(self, tree: Any) -> Any:
        """Parameters or input images for the forward pass: floating leaves cast to the compute dtype.

        Call it inside the function that `jax.grad` differentiates, on the float32 parameters it takes:
        the cast's transpose brings the gradient back to float32.
        """
        return tree if self.is_float32 else _cast_floats(tree, jnp.dtype(self.compute_dtype))

    def to_float32(self, tree: Any) -> Any:
        """Logits, loss inputs and metrics: floating leaves cast to float32 before any loss or reduction."""
        return tree if self.is_float32 else _cast_floats(tree, jnp.float32)
