"""RSG, the rare-class sample generator (Wang et al., CVPR 2021), in static shapes for one jitted step.

Follows the official code (github.com/Jianf-Wang/RSG, `Imbalanced_Classification/models/RSG.py`):

- Center estimation: per class K, `n_center` centers c_{k,j} (C,) and a soft assignment
  gamma = softmax(pool(F) @ W_y + b_y) of each sample to its class's centers (W (K, C, n), b (K, n)).
- CESC loss: sum_j gamma_j |F - c_{y,j}|^2 over C, H, W, averaged over the batch; before generation starts,
  plus the contrastive module's cross-entropy on (first half, second half) pairs: same class or not.
- Generation (from `start_epoch`): a head sample's variation V = F_h - c_o (c_o its class's most likely
  center, detached) is transformed by a 3x3 conv T and added to a tail sample: F~ = F_t + T(V).
- MV loss: the frozen contrastive module must call (F_h, T(V)) "different class"; |T(V)| must keep |V|'s
  norm; and T(V) must point as the tail sample's own variation F_t - c_t does (the official elementwise
  form, |n(T(V)) * n(F_t - c_t) - 1| summed). The official code takes these norms over rows of C consecutive
  values of the NCHW tensor (`view(-1, C)`), which we reproduce by the same reshape of the NCHW layout.
- Pairing: with n_h head and n_t tail samples in the batch, RSG makes floor(max / min * strength)
  segments of min(n_h, n_t) pairs (every tail with successive head chunks, or every head with successive
  tail chunks). Here that is M = batch-size slots, slot s valid while s < segments * min(n_h, n_t),
  so shapes never depend on the batch's composition.
All inputs from the backbone are stop-gradient: RSG's losses train RSG only, and the generated features
train T through the classification loss.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from safa_jax.models import layers
from safa_jax.models.heads import KAIMING_NORMAL
from safa_jax.models.layer_ops import XLA_LAYERS, LayerOps


class RsgModules(nnx.Module):
    """The centers, their assignment, the contrastive module and the variation transform T.

    Initialised as the official code: W ~ N(0, 1), b = 1, centers 0; convolutions Kaiming-normal (fan-in)
    with zero biases; the contrastive classifier's weight N(0, 1), bias 0.
    """

    def __init__(self, channels: int, num_classes: int, *, n_center: int, contrastive_width: int,
                 ops: LayerOps = XLA_LAYERS, rngs: nnx.Rngs):
        self.assign_weight = nnx.Param(jax.random.normal(rngs.params(), (num_classes, channels, n_center)))
        self.assign_bias = nnx.Param(jnp.ones((num_classes, n_center)))
        self.centers = nnx.Param(jnp.zeros((num_classes, n_center, channels)))
        zeros = nnx.initializers.zeros_init()
        conv_init = dict(kernel_init=KAIMING_NORMAL, bias_init=zeros, ops=ops, rngs=rngs)
        self.transform = layers.conv(channels, channels, 3, padding=((1, 1), (1, 1)), **conv_init)
        self.contrastive_in = layers.conv(2 * channels, contrastive_width, 1, padding="VALID", **conv_init)
        self.contrastive_mid = layers.conv(contrastive_width, contrastive_width, 3, padding=((1, 1), (1, 1)),
                                           **conv_init)
        self.contrastive_fc = nnx.Linear(contrastive_width, 2, kernel_init=nnx.initializers.normal(1.0),
                                         bias_init=zeros, rngs=rngs)

    def assignment(self, features: jax.Array, labels: jax.Array) -> jax.Array:
        """gamma (N, n_center): the soft assignment of each feature map to its class's centers."""
        pooled = jnp.mean(features, axis=(1, 2))
        return jax.nn.softmax(jnp.einsum("nc,ncj->nj", pooled, self.assign_weight[...][labels])
                              + self.assign_bias[...][labels], axis=-1)

    def contrastive_logits(self, first: jax.Array, second: jax.Array) -> jax.Array:
        """(N, 2): logit 1 "same class", logit 0 "different class"."""
        hidden = self.contrastive_mid(nnx.relu(self.contrastive_in(jnp.concatenate([first, second], axis=-1))))
        return self.contrastive_fc(jnp.mean(hidden, axis=(1, 2)))


@flax.struct.dataclass
class RsgOutput:
    """features (M, H, W, C) generated (an invalid slot holds its tail feature, weight 0); labels, weights (M,);
    terms "cesc" and "mv" (unweighted); stats "valid_slots", "head_samples", "tail_samples"."""

    features: jax.Array
    labels: jax.Array
    weights: jax.Array
    terms: dict[str, jax.Array]
    stats: dict[str, jax.Array]


def _rows_of_channels(x: jax.Array) -> jax.Array:
    """The official code's `x.view(-1, C)` of an NCHW tensor, from our NHWC one."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(-1, x.shape[-1])


def _normalized_rows(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # F.normalize's floor


def rsg_slots(is_head_sample: jax.Array, strength: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(head sample, tail sample, valid) for each of the batch's B slots, RSG's pairing (module docstring)."""
    batch = is_head_sample.shape[0]
    heads = jnp.argsort((~is_head_sample).astype(jnp.int32), stable=True)  # head samples first, in batch order
    tails = jnp.argsort(is_head_sample.astype(jnp.int32), stable=True)  # tail samples first, in batch order
    n_head = jnp.sum(is_head_sample)
    n_tail = batch - n_head
    fewer, more = jnp.minimum(n_head, n_tail), jnp.maximum(n_head, n_tail)
    segments = jnp.maximum(1, jnp.floor(more * strength / jnp.maximum(fewer, 1)).astype(jnp.int32))
    slot = jnp.arange(batch)
    modulo = slot % jnp.maximum(fewer, 1)
    more_heads = n_head >= n_tail
    head_position = jnp.where(more_heads, slot, modulo)
    tail_position = jnp.where(more_heads, modulo, slot)
    valid = (slot < segments * fewer) & (fewer > 0)
    return heads[head_position], tails[tail_position], valid


def rsg_augment(modules: RsgModules, features: jax.Array, labels: jax.Array, is_head_class: jax.Array, *,
                generate: bool, strength: float) -> RsgOutput:
    """One RSG pass on the batch's features at the insertion point; `generate` from `rsg.start_epoch` on."""
    features = jax.lax.stop_gradient(features)
    batch = features.shape[0]
    gamma = modules.assignment(features, labels)  # (B, n)
    centers = modules.centers[...]
    # sum_j gamma_j sum_{c,h,w} (F - c_j)^2 = sum_j gamma_j (|F|^2 - 2 <F, c_j> summed over h, w + H W |c_j|^2)
    spatial = features.shape[1] * features.shape[2]
    class_centers = centers[labels]  # (B, n, C)
    squared = (jnp.sum(features**2, axis=(1, 2, 3))[:, None]
               - 2.0 * jnp.einsum("bhwc,bjc->bj", features, class_centers)
               + spatial * jnp.sum(class_centers**2, axis=-1))
    cesc = jnp.sum(gamma * squared) / batch
    zero = jnp.zeros((), jnp.float32)
    is_head_sample = jnp.asarray(is_head_class)[labels]
    head, tail, valid = rsg_slots(is_head_sample, strength)
    stats = {"valid_slots": jnp.sum(valid), "head_samples": jnp.sum(is_head_sample),
             "tail_samples": batch - jnp.sum(is_head_sample)}
    if not generate:
        half = batch // 2
        same = (labels[:half] == labels[half:2 * half]).astype(jnp.int32)
        logits = modules.contrastive_logits(features[:half], features[half:2 * half])
        cesc = cesc + jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), same[:, None], axis=1))
        return RsgOutput(features=features[tail], labels=labels[tail], weights=jnp.zeros(batch, jnp.float32),
                         terms={"cesc": cesc, "mv": zero}, stats=stats)

    head_features, tail_features = features[head], features[tail]
    nearest = lambda g, y: centers[y, jnp.argmax(g, axis=-1)]  # noqa: E731  (M, C), detached below
    gamma = jax.lax.stop_gradient(gamma)
    center_head = jax.lax.stop_gradient(nearest(gamma[head], labels[head]))[:, None, None, :]
    center_tail = jax.lax.stop_gradient(nearest(gamma[tail], labels[tail]))[:, None, None, :]
    variation = head_features - center_head
    transformed = modules.transform(variation)
    generated = tail_features + transformed
    frozen_q = _with_frozen_params(modules)
    q_logits = frozen_q.contrastive_logits(head_features, transformed)
    q_term = -jax.nn.log_softmax(q_logits)[:, 0]  # "different class"
    per_row_norm = jnp.abs(jnp.linalg.norm(_rows_of_channels(transformed), axis=1)
                           - jnp.linalg.norm(_rows_of_channels(variation), axis=1)).reshape(batch, -1).sum(axis=1)
    direction = jnp.abs(_normalized_rows(_rows_of_channels(tail_features - center_tail))
                        * _normalized_rows(_rows_of_channels(transformed)) - 1.0).reshape(batch, -1).sum(axis=1)
    weights = valid.astype(jnp.float32)
    mv = jnp.sum(weights * (q_term + per_row_norm + direction)) / jnp.maximum(jnp.sum(weights), 1.0)
    return RsgOutput(features=jnp.where(valid[:, None, None, None], generated, tail_features),
                     labels=labels[tail], weights=weights, terms={"cesc": cesc, "mv": mv}, stats=stats)


def _with_frozen_params(module: nnx.Module) -> nnx.Module:
    """A copy whose parameters are stop-gradient: the MV loss trains T only (the official code freezes Q)."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    return nnx.merge(graphdef, jax.lax.stop_gradient(params), rest)


def head_classes_by_count(class_counts, head_ratio: float) -> np.ndarray:
    """(K,) bool: RSG's head classes, the int(K * head_ratio) largest (the official code takes the first class
    ids of CIFAR-LT, whose ids are sorted by count); at least one, and at least one tail class."""
    counts = np.asarray(class_counts)
    num_head = min(max(1, int(len(counts) * head_ratio + 1e-9)), len(counts) - 1)
    head = np.zeros(len(counts), bool)
    head[np.argsort(-counts, kind="stable")[:num_head]] = True
    return head
