"""Static-shape pairing and slot sampling: who pairs with whom, and which samples each slot uses."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safa_jax.models import safa_pairing

HEAD_CLASSES = np.array([True, True, False, False, False])  # classes 0 and 1 of 5.


def _head_pairs(labels, seed: int) -> safa_pairing.HeadPairs:
    labels = jnp.asarray(labels, dtype=jnp.int32)
    return safa_pairing.pair_head_samples(labels, jnp.asarray(HEAD_CLASSES)[labels], jax.random.key(seed))


@pytest.mark.parametrize("seed", range(6))
def test_every_valid_head_pair_joins_two_different_samples_of_one_head_class(seed):
    labels = np.random.default_rng(seed).integers(0, 5, size=24)
    pairs = jax.device_get(_head_pairs(labels, seed))
    anchors, partners = pairs.anchors[pairs.valid], pairs.partners[pairs.valid]
    assert np.all(anchors != partners)
    assert np.all(labels[anchors] == labels[partners])
    assert np.all(HEAD_CLASSES[labels[anchors]])
    # Every head sample of a class with >= 2 samples in the batch anchors exactly one pair ...
    class_sizes = collections.Counter(labels.tolist())
    expected = sorted(i for i, y in enumerate(labels) if HEAD_CLASSES[y] and class_sizes[y] >= 2)
    assert sorted(anchors.tolist()) == expected
    # ... and is the partner of exactly one.
    assert sorted(partners.tolist()) == expected


def test_head_pairs_of_a_hand_made_batch():
    # Class 0: samples 0, 2, 4 (a 3-cycle); class 1: samples 1, 5 (paired both ways); class 2 is tail.
    pairs = jax.device_get(_head_pairs([0, 1, 0, 2, 0, 1, 2], seed=0))
    valid_pairs = {(int(a), int(p)) for a, p, v in zip(pairs.anchors, pairs.partners, pairs.valid) if v}
    assert {(1, 5), (5, 1)} <= valid_pairs
    class_0_pairs = valid_pairs - {(1, 5), (5, 1)}
    assert len(class_0_pairs) == 3
    assert {a for a, _ in class_0_pairs} == {0, 2, 4} == {p for _, p in class_0_pairs}


def test_singleton_head_classes_give_no_pair():
    pairs = _head_pairs([0, 1, 2, 3, 4, 2], seed=0)
    assert not bool(jnp.any(pairs.valid))


def _slots(is_tail, pair_valid, num_slots: int, seed: int = 0) -> safa_pairing.Slots:
    return jax.device_get(safa_pairing.draw_slots(
        jnp.asarray(is_tail), jnp.asarray(pair_valid), jax.random.key(seed), num_slots))


def test_slots_use_tail_samples_round_robin_and_valid_distinct_deltas():
    is_tail = np.array([False, True, False, True, True, False])
    pair_valid = np.array([True, False, True, True, False, False])
    slots = _slots(is_tail, pair_valid, num_slots=8)
    assert np.all(slots.valid) and np.all(slots.second_valid)
    assert np.all(is_tail[slots.tail_samples])
    # 8 slots over 3 tail samples: each is used 2 or 3 times.
    assert sorted(collections.Counter(slots.tail_samples.tolist()).values()) == [2, 3, 3]
    assert np.all(pair_valid[slots.deltas]) and np.all(pair_valid[slots.second_deltas])
    assert np.all(slots.deltas != slots.second_deltas)


def test_head_deltas_are_drawn_from_every_valid_pair_and_only_from_valid_pairs():
    pair_valid = np.array([False, True, True, False, True, False])
    slots = _slots(np.ones(6, dtype=bool), pair_valid, num_slots=200, seed=3)
    assert set(slots.deltas.tolist()) == {1, 2, 4}
    assert set(slots.second_deltas.tolist()) == {1, 2, 4}
    for first in (1, 2, 4):
        assert set(slots.second_deltas[slots.deltas == first].tolist()) == {1, 2, 4} - {first}


@pytest.mark.parametrize(("is_tail", "pair_valid"), [
    (np.zeros(4, dtype=bool), np.array([True, True, False, False])),  # no tail sample.
    (np.array([False, False, True, True]), np.zeros(4, dtype=bool)),  # no head pair.
])
def test_slots_are_masked_without_a_tail_sample_or_a_head_pair(is_tail, pair_valid):
    slots = _slots(is_tail, pair_valid, num_slots=3)
    assert slots.valid.shape == (3,) and not np.any(slots.valid) and not np.any(slots.second_valid)


def test_second_delta_is_masked_when_only_one_head_pair_exists():
    slots = _slots(np.array([True, False, True]), np.array([False, True, False]), num_slots=4)
    assert np.all(slots.valid) and not np.any(slots.second_valid)
    assert np.all(slots.deltas == 1)


def test_pair_valid_entries_joins_each_valid_entry_with_a_different_valid_one():
    valid = np.array([True, False, True, True, False, True])
    first, second, pair_valid = jax.device_get(safa_pairing.pair_valid_entries(jnp.asarray(valid), jax.random.key(1)))
    assert pair_valid.sum() == 4
    assert sorted(first[pair_valid].tolist()) == [0, 2, 3, 5] == sorted(second[pair_valid].tolist())
    assert np.all(first[pair_valid] != second[pair_valid])
    _, _, single = safa_pairing.pair_valid_entries(jnp.array([False, True, False]), jax.random.key(1))
    assert not bool(jnp.any(single))


def test_shapes_do_not_depend_on_batch_composition_under_jit():
    traces = []

    @jax.jit
    def pair_and_draw(labels, key):
        traces.append(labels.shape)
        is_head = jnp.asarray(HEAD_CLASSES)[labels]
        pairs = safa_pairing.pair_head_samples(labels, is_head, key)
        return pairs, safa_pairing.draw_slots(~is_head, pairs.valid, key, 5)

    all_head = pair_and_draw(jnp.zeros(10, dtype=jnp.int32), jax.random.key(0))
    mixed = pair_and_draw(jnp.arange(10, dtype=jnp.int32) % 5, jax.random.key(0))
    assert jax.tree.map(jnp.shape, all_head) == jax.tree.map(jnp.shape, mixed)
    assert len(traces) == 1
    assert not bool(jnp.any(all_head[1].valid)) and bool(jnp.all(mixed[1].valid))
