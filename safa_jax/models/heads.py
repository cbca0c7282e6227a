"""Classifier heads and the weight initialisers shared by the backbones.

The initialisers reproduce PyTorch's, because the published long-tailed results (LDAM-DRW, RSG,
SAFA) were all trained from the LDAM-DRW reference code, and matching its start point removes one
source of difference when we compare against those numbers.
"""

import jax
import jax.numpy as jnp
from flax import nnx

HEADS = ("linear", "normed")

# torch.nn.init.kaiming_normal_ with its defaults: fan_in mode, gain sqrt(2) (a=0), and an
# untruncated normal. Flax's own he_normal truncates, so it is not the same distribution.
KAIMING_NORMAL = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")

# torch.nn.functional.normalize's floor on the norm: a zero vector maps to zero instead of NaN.
_NORMALIZE_EPS = 1e-12


def torch_linear_bias_init(fan_in: int) -> nnx.Initializer:
    """PyTorch nn.Linear's default bias init, uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    The LDAM-DRW code re-initialises only the Linear weight (Kaiming), so its bias keeps this.
    """
    bound = 1.0 / fan_in**0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def l2_normalize(x: jax.Array, axis: int) -> jax.Array:
    """x divided by its L2 norm along `axis`, as torch.nn.functional.normalize (norm floored at 1e-12)."""
    norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
    return x / jnp.maximum(norm, _NORMALIZE_EPS)


def _unit_column_uniform_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """uniform(-1, 1), then every column scaled to unit L2 norm.

    This is what the reference's `uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)` does: renorm along
    dim 1 caps each column's norm at 1e-5 (a uniform column is far longer, so every column is
    rescaled), and the product with 1e5 brings it to norm 1.
    """
    weight = jax.random.uniform(key, shape, dtype, minval=-1.0, maxval=1.0)
    return l2_normalize(weight, axis=0)


class NormedLinear(nnx.Module):
    """LDAM's cosine classifier: logits are cosines between the feature and each class's weight column.

    The cosine bounds the logits to [-1, 1]; the LDAM loss multiplies them by its scale s (30).
    """

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        self.weight = nnx.Param(_unit_column_uniform_init(rngs.params(), (in_features, out_features)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return l2_normalize(x, axis=1) @ l2_normalize(self.weight[...], axis=0)


def resolve_head(head: str, loss_name: str) -> str:
    """`model.head`, with "auto" resolved: LDAM's cosine classifier ("normed") under the LDAM loss, else "linear"."""
    if head == "auto":
        return "normed" if loss_name == "ldam" else "linear"
    return head


def tau_normalized_linear(head_params: dict, tau: float) -> dict:
    """Kang et al.'s tau-normalisation of a trained linear head: class j's weights w_j / ||w_j||^tau, no bias.

    `head_params` holds a (features, K) `kernel` and a (K,) `bias`. The authors' tau-normalised classifier
    scores f . w_j / ||w_j||^tau without the bias, so the bias is set to 0 (tau = 0 gives the plain weights
    without their bias; tau = 1 unit-norm weights). A zero weight column keeps its zeros.
    """
    kernel = jnp.asarray(head_params["kernel"])
    norms = jnp.maximum(jnp.linalg.norm(kernel, axis=0, keepdims=True), _NORMALIZE_EPS)
    return {**head_params, "kernel": kernel / norms**tau, "bias": jnp.zeros_like(head_params["bias"])}


def build_head(head: str, in_features: int, num_classes: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """The classifier named `head` (one of HEADS), initialised as in the LDAM-DRW reference."""
    if head == "linear":
        return nnx.Linear(
            in_features,
            num_classes,
            kernel_init=KAIMING_NORMAL,
            bias_init=torch_linear_bias_init(in_features),
            rngs=rngs,
        )
    if head == "normed":
        return NormedLinear(in_features, num_classes, rngs=rngs)
    raise ValueError(f"unknown head {head!r}; allowed: {', '.join(HEADS)}")
