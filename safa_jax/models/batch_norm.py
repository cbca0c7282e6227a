"""BatchNorm, and how its normalisation is written: `config.model.batch_norm`.

- "folded" (the default): y = x * a + (bias - mean * a) with a = scale / sqrt(var + epsilon), one
  multiply-add per element, as PyTorch's CPU kernel writes it. Its gradient needs x, which is already in
  memory (the convolution's output).
- "flax": Flax's own y = (x - mean) * a + bias. Its gradient needs x - mean, which XLA writes out as one
  more activation-sized array per BatchNorm and reads back in the backward pass: the ResNet-32 train step
  on the project's 2-core Xeon is about 15 % slower this way (docs/benchmark_log.md).

Both compute the same statistics (Flax's, masks included), update the running averages the same way and
hold the same variables, so checkpoints do not depend on the choice; outputs and gradients agree to float
rounding (tests/test_batch_norm.py). A model takes its form at construction (`LayerOps.batch_norm_form`,
safa_jax/models/layer_ops.py).
"""

import jax
import jax.numpy as jnp
from flax import nnx

BATCH_NORM_FORMS = ("folded", "flax")


def validate_batch_norm_form(form) -> None:
    if form not in BATCH_NORM_FORMS:
        raise ValueError(f"unknown config.model.batch_norm={form!r}; allowed: {', '.join(BATCH_NORM_FORMS)}")


def batch_statistics(x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Mean and variance over all axes but the last, over the entries `mask` marks (all where None), as
    `nnx.BatchNorm` computes them (its default `use_fast_variance`): E[x^2] - E[x]^2 clipped at 0, at least
    float32. Ours so that both forms share one rule without a private Flax function; equal to Flax's to the
    bit (tests/test_batch_norm.py)."""
    x = jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))
    axes = tuple(range(x.ndim - 1))
    squares = jax.lax.square(x)  # before the means, as Flax orders them: the same program, to the bit
    mean, mean_of_squares = x.mean(axes, where=mask), squares.mean(axes, where=mask)
    return mean, jnp.maximum(0.0, mean_of_squares - jax.lax.square(mean))


class BatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` over the last axis, normalising in the form `form` (one of BATCH_NORM_FORMS)."""

    def __init__(self, num_features: int, *, momentum: float, epsilon: float, form: str = "folded",
                 rngs: nnx.Rngs):
        validate_batch_norm_form(form)
        super().__init__(num_features, momentum=momentum, epsilon=epsilon, rngs=rngs)
        self.form = form

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
            mean, var = batch_statistics(x, mask)
            self.mean[...] = jax.lax.stop_gradient(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
            self.var[...] = jax.lax.stop_gradient(self.momentum * self.var[...] + (1 - self.momentum) * var)
        multiplier = jax.lax.rsqrt(var + self.epsilon) * scale
        y = x * multiplier + (bias - mean * multiplier)
        return jnp.asarray(y, jnp.result_type(x, scale, bias) if self.dtype is None else self.dtype)

