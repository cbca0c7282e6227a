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


def draw_slots(is_tail_sample: jax.Array, pair_valid: jax.Array, key: jax.Array, num_slots: int,
               tail_weights: jax.Array | None = None) -> Slots:
    """Chooses each slot's tail sample and its two head deltas.

    Without `tail_weights`, tail samples are dealt round-robin over a random order of the batch's tail
    samples, so each is used floor(M / n) or ceil(M / n) times (less variance than drawing with
    replacement); the most frequent tail class then gets most slots. With `tail_weights` (B,) >= 0, each
    slot draws its tail sample independently with probability proportional to its weight among the
    batch's tail samples (`tail_sample_weights`). Each slot's head delta is drawn uniformly among the valid
    pairs, independently per slot; its second delta uniformly among the other valid pairs.
    """
    tail_key, pair_key, first_key, offset_key = jax.random.split(key, 4)
    slot = jnp.arange(num_slots)
    if tail_weights is None:
        tail_order, num_tail = _random_order_valid_first(is_tail_sample, tail_key)
        tail_samples = tail_order[slot % jnp.maximum(num_tail, 1)]
    else:
        usable = is_tail_sample & (tail_weights > 0)
        num_tail = jnp.sum(usable)
        logits = jnp.where(usable, jnp.log(jnp.where(usable, tail_weights, 1.0)), -jnp.inf)
        logits = jnp.where(num_tail > 0, logits, 0.0)  # No tail sample: any index; the slots are invalid.
        tail_samples = jax.random.categorical(tail_key, logits, shape=(num_slots,)).astype(jnp.int32)
    pair_order, num_pairs = _random_order_valid_first(pair_valid, pair_key)
    ranks_in_range = jnp.maximum(num_pairs, 1)
    first_rank = jax.random.randint(first_key, (num_slots,), 0, ranks_in_range)
    # An offset in [1, n - 1] reaches every other valid pair once, and never the first one.
    offset = jax.random.randint(offset_key, (num_slots,), 1, jnp.maximum(num_pairs, 2))
    valid = jnp.broadcast_to((num_tail > 0) & (num_pairs > 0), (num_slots,))
    return Slots(
        tail_samples=tail_samples,
        deltas=pair_order[first_rank],
        second_deltas=pair_order[(first_rank + offset) % ranks_in_range],
        valid=valid,
        second_valid=valid & (num_pairs >= 2),
    )


TAIL_SAMPLING = ("batch_samples", "inverse_frequency", "uniform_classes")  # config.safa.tail_sampling


def tail_sample_weights(rule: str, labels: jax.Array, class_counts: jax.Array) -> jax.Array | None:
    """Per-sample weights (B,) for drawing slots' tail samples under `config.safa.tail_sampling`.

    "batch_samples": None (every tail sample of the batch equally often, `draw_slots`' round-robin);
    "inverse_frequency": 1 / n_y with n_y the class's training count, so a class's expected share of the
    slots is proportional to (its samples in the batch) / n_y, about equal across classes on average;
    "uniform_classes": 1 / (the class's samples in this batch): every tail class present gets the same share.
    """
    if rule == "batch_samples":
        return None
    if rule == "inverse_frequency":
        return 1.0 / jnp.asarray(class_counts, jnp.float32)[labels]
    if rule == "uniform_classes":
        in_batch = jnp.sum(labels[:, None] == labels[None, :], axis=1)
        return 1.0 / in_batch.astype(jnp.float32)
    raise ValueError(f"unknown config.safa.tail_sampling={rule!r}; allowed: {', '.join(TAIL_SAMPLING)}")


Q_PAIRS = ("halves", "balanced")  # config.safa.q_pairs


def contrastive_pairs(labels: jax.Array, rule: str, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(first, second, valid), each (B // 2,): the real pairs on which Q learns same-class vs different-class.

    "halves": sample i of the first half against sample i of the second half (on CIFAR-10-LT rho=200 only
    about 29 % of them share a class). "balanced": the first B // 4 pairs join each anchor to another
    sample of its class (along a random cycle per class; invalid where its class has one sample in the
    batch), the others to a sample of another class drawn uniformly (invalid where there is none).
    """
    batch = labels.shape[0]
    half = batch // 2
    if rule == "halves":
        return jnp.arange(half), jnp.arange(half, 2 * half), jnp.ones(half, dtype=bool)
    if rule != "balanced":
        raise ValueError(f"unknown config.safa.q_pairs={rule!r}; allowed: {', '.join(Q_PAIRS)}")
    cycle_key, other_key = jax.random.split(key)
    cycles = pair_head_samples(labels, jnp.ones(batch, dtype=bool), cycle_key)
    same_partner = jnp.zeros(batch, jnp.int32).at[cycles.anchors].set(cycles.partners.astype(jnp.int32))
    has_same = jnp.zeros(batch, dtype=bool).at[cycles.anchors].set(cycles.valid)
    first = jnp.arange(half)
    differs = labels[first][:, None] != labels[None, :]
    logits = jnp.where(differs, 0.0, -jnp.inf)
    has_other = jnp.any(differs, axis=1)
    other_partner = jax.random.categorical(other_key, jnp.where(has_other[:, None], logits, 0.0)).astype(jnp.int32)
    wants_same = first < half // 2
    second = jnp.where(wants_same, same_partner[first], other_partner)
    valid = jnp.where(wants_same, has_same[first], has_other)
    return first, second, valid


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
