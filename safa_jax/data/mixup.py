"""mixup (Zhang et al., ICLR 2018) inside the jitted step: one mixing weight per batch, a shuffled partner per row.

As the mixup and MiSLAS reference code: lam ~ Beta(alpha, alpha) once per batch, a random permutation of the
batch, x~ = lam x + (1 - lam) x[perm], and the loss lam L(x~, y) + (1 - lam) L(x~, y[perm]). Each of the two
terms is the configured base loss with its own label's class weights (DRW's, say), so both mixed labels get
the weights their classes would get unmixed. Mixing the normalised images is the same as mixing the raw ones,
since normalisation is affine and the two weights sum to 1, so both input pipelines mix after `draw`.
"""

from collections.abc import Callable

import jax


def mix_batch(x: jax.Array, y: jax.Array, key: jax.Array, *, alpha: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(mixed images, partner labels y[perm], lam) for a batch x (B, ...) with labels y (B,)."""
    lam_key, perm_key = jax.random.split(key)
    lam = jax.random.beta(lam_key, alpha, alpha)
    perm = jax.random.permutation(perm_key, x.shape[0])
    mixed = lam.astype(x.dtype) * x + (1.0 - lam).astype(x.dtype) * x[perm]
    return mixed, y[perm], lam


def mixed_loss(base_loss: Callable, logits: jax.Array, y: jax.Array, y_partner: jax.Array, lam: jax.Array,
               sample_weights: jax.Array, epoch) -> jax.Array:
    """lam * loss(logits, y) + (1 - lam) * loss(logits, y_partner), each with its own labels' class weights."""
    return (lam * base_loss(logits, y, sample_weights, epoch)
            + (1.0 - lam) * base_loss(logits, y_partner, sample_weights, epoch))


def validate_mixup_config(config) -> None:
    """mixup_alpha >= 0 (0: off), with the plain method only: SAFA's head/tail split needs one class per sample."""
    alpha = config.data.mixup_alpha
    if not isinstance(alpha, (int, float)) or alpha < 0:
        raise ValueError(f"config.data.mixup_alpha={alpha!r} must be a number >= 0 (0 = off; MiSLAS uses 1.0)")
    if alpha > 0 and config.method != "plain":
        raise ValueError(f"config.data.mixup_alpha={alpha} with config.method={config.method!r}: its samples are "
                         "paired by their single class, which a mixed sample does not have; allowed: "
                         "config.method='plain' with mixup")
