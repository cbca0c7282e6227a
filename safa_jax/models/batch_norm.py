"""BatchNorm, and how its normalisation is written: `config.model.batch_norm`.

- "folded" (the default): y = x * a + (bias - mean * a) with a = scale / sqrt(var + epsilon), one
  multiply-add per element, as PyTorch's CPU kernel writes it. Its gradient needs x, which is already in
  memory (the convolution's output).
- "flax": Flax's own y = (x - mean) * a + bias. Its gradient needs x - mean, which XLA writes out as one
  more activation-sized array per BatchNorm and reads back in the backward pass: the ResNet-32 train step
  on the project's 2-core Xeon is about 15 % slower this way (docs/benchmark_log.md).

Both compute the same statistics (Flax's, masks included), update the running averages the same way and
hold the same variables, so checkpoints do not depend on the choice; outputs and gradients agree to float
rounding (tests/test_batch_norm.py).
"""

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.normalization import _compute_stats  # Flax's statistics, so both forms share them.

BATCH_NORM_FORMS = ("folded", "flax")


def validate_batch_norm_form(form) -> None:
    if form not in BATCH_NORM_FORMS:
        raise ValueError(f"unknown config.model.batch_norm={form!r}; allowed: {', '.join(BATCH_NORM_FORMS)}")


class BatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` over the last axis, normalising in the form `self.form` (one of BATCH_NORM_FORMS)."""

    def __init__(self, num_features: int, *, momentum: float, epsilon: float, rngs: nnx.Rngs):
        super().__init__(num_features, momentum=momentum, epsilon=epsilon, rngs=rngs)
        self.form = "folded"

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None) -> jax.Array:
        if self.form == "flax":
            return super().__call__(x, use_running_average, mask=mask)
        use_running_average = self.use_running_average if use_running_average is None else use_running_average
        if use_running_average is None:
            raise ValueError("BatchNorm needs use_running_average (True in evaluation, False in training)")
        x, mean, var, scale, bias = self.promote_dtype(
            (x, self.mean[...], self.var[...], self.scale[...], self.bias[...]), dtype=self.dtype)
        if not use_running_average:
            mean, var = _compute_stats(x, tuple(range(x.ndim - 1)), dtype=self.dtype,
                                       use_fast_variance=self.use_fast_variance, mask=mask)
            self.mean[...] = jax.lax.stop_gradient(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
            self.var[...] = jax.lax.stop_gradient(self.momentum * self.var[...] + (1 - self.momentum) * var)
        multiplier = jax.lax.rsqrt(var + self.epsilon) * scale
        y = x * multiplier + (bias - mean * multiplier)
        return jnp.asarray(y, jnp.result_type(x, scale, bias) if self.dtype is None else self.dtype)


def use_batch_norm_form(module: nnx.Module, form: str) -> None:
    """Sets the normalisation form of every `BatchNorm` inside `module`."""
    validate_batch_norm_form(form)
    for _, node in nnx.iter_graph(module):
        if isinstance(node, BatchNorm):
            node.form = form
