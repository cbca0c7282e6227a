"""Static-shape pairing and slot sampling for SAFA: which samples form head pairs, and which tail
sample and head deltas each generated slot uses.

Everything here returns index arrays of a fixed size plus validity masks, built with sorts, gathers
and `jax.random`, never with boolean indexing. One compiled train step therefore serves every batch
composition, and the same code runs on a batch sharded over many devices (global-view jit: XLA moves
the data for the sorts and gathers).
"""

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class HeadPairs:
    """One candidate pair per batch sample; the delta of pair k goes from `anchors[k]` to `partners[k]`."""

    anchors: jax.Array  # (B,) int32 batch index of F_i.
    partners: jax.Array  # (B,) int32 batch index of F_j: another sample of the anchor's class.
    valid: jax.Array  # (B,) bool: the anchor is a head sample whose class has >= 2 samples in the batch.


@flax.struct.dataclass
class Slots:
    """The M generation slots: a tail sample and two different head deltas (indices into HeadPairs)."""

    tail_samples: jax.Array  # (M,) int32 batch index of the tail sample t.
    deltas: jax.Array  # (M,) int32 index of the head pair whose delta D adapts to t.
    second_deltas: jax.Array  # (M,) int32 index of a different head pair (tail mode seeking).
    valid: jax.Array  # (M,) bool: the batch has a tail sample and a valid head pair.
    second_valid: jax.Array  # (M,) bool: valid, and >= 2 valid head pairs exist, so the deltas differ.


def pair_head_samples(labels: jax.Array, is_head_sample: jax.Array, key: jax.Array) -> HeadPairs:
    """Pairs every head sample with another sample of its class, along a random cycle per class.

    The batch is sorted by class with random tie-breaks; inside each run of one class, position r is
    paired with r + 1 and the last with the first. So in a class with n >= 2 samples in the batch,
    every sample anchors exactly one pair, is the partner of exactly one, and never pairs with itself.
    """
    batch = labels.shape[0]
    order = jnp.lexsort((jax.random.uniform(key, (batch,)), labels))
    sorted_labels = labels[order]
    run_start = jnp.searchsorted(sorted_labels, sorted_labels, side="left")
    run_length = jnp.searchsorted(sorted_labels, sorted_labels, side="right") - run_start
    position = jnp.arange(batch)
    partner_position = run_start + (position - run_start + 1) % run_length
    return HeadPairs(
        anchors=order,
        partners=order[partner_position],
        valid=is_head_sample[order] & (run_length >= 2),
    )


def draw_slots(is_tail_sample: jax.Array, pair_valid: jax.Array, key: jax.Array, num_slots: int) -> Slots:
    """Chooses each slot's tail sample and its two head deltas.

    Tail samples are dealt round-robin over a random order of the batch's tail samples, so each is used
    floor(M / n) or ceil(M / n) times (less variance than drawing with replacement). Each slot's head
    delta is drawn uniformly among the valid pairs, independently per slot; its second delta uniformly
    among the other valid pairs.
    """
    tail_key, pair_key, first_key, offset_key = jax.random.split(key, 4)
    tail_order, num_tail = _random_order_valid_first(is_tail_sample, tail_key)
    pair_order, num_pairs = _random_order_valid_first(pair_valid, pair_key)
    slot = jnp.arange(num_slots)
    ranks_in_range = jnp.maximum(num_pairs, 1)
    first_rank = jax.random.randint(first_key, (num_slots,), 0, ranks_in_range)
    # An offset in [1, n - 1] reaches every other valid pair once, and never the first one.
    offset = jax.random.randint(offset_key, (num_slots,), 1, jnp.maximum(num_pairs, 2))
    valid = jnp.broadcast_to((num_tail > 0) & (num_pairs > 0), (num_slots,))
    return Slots(
        tail_samples=tail_order[slot % jnp.maximum(num_tail, 1)],
        deltas=pair_order[first_rank],
        second_deltas=pair_order[(first_rank + offset) % ranks_in_range],
        valid=valid,
        second_valid=valid & (num_pairs >= 2),
    )


def pair_valid_entries(valid: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pairs each valid entry with the next one along a random cycle over the valid entries.

    Returns (first, second, pair_valid), each of the input's length; a pair is valid when it joins two
    different valid entries, which needs at least two of them.
    """
    order, count = _random_order_valid_first(valid, key)
    rank = jnp.arange(valid.shape[0])
    second = order[(rank + 1) % jnp.maximum(count, 1)]
    return order, second, (rank < count) & (count >= 2)


def _random_order_valid_first(valid: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A random permutation of the indices with the valid ones first, and the number of valid ones."""
    sort_key = jnp.where(valid, jax.random.uniform(key, valid.shape), 2.0)
    return jnp.argsort(sort_key), jnp.sum(valid)
