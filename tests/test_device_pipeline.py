"""The on-device pipeline: epoch coverage, determinism, balanced sampling, crop/flip by hand, normalisation."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safa_jax.data.device_pipeline import (augment_batch, balanced_batch_indices, class_balanced_sample_probs,
                                           crop_and_flip, epoch_batch_indices, epoch_order, normalize,
                                           steps_per_epoch)

KEY = jax.random.key(0)


def test_steps_per_epoch_drops_the_remainder():
    assert steps_per_epoch(10, 3) == 3
    assert steps_per_epoch(12, 3) == 4


@pytest.mark.parametrize("num_examples, batch_size, message", [(3, 4, "3 examples.*batch_size=4"),
                                                               (10, 0, "batch_size=0")])
def test_steps_per_epoch_rejects_impossible_batches(num_examples, batch_size, message):
    with pytest.raises(ValueError, match=message):
        steps_per_epoch(num_examples, batch_size)


def batches(steps, num_examples=12, batch_size=3, key=KEY) -> np.ndarray:
    """Each step's indices as the train step gets them: its epoch's order (made once per epoch), then its slice."""
    spe = steps_per_epoch(num_examples, batch_size)
    order = jax.jit(lambda epoch: epoch_order(key, epoch, num_examples=num_examples))
    draw = jax.jit(lambda order, step: epoch_batch_indices(order, step, batch_size=batch_size))
    return np.stack([np.asarray(draw(order(step // spe), step)) for step in steps])


def test_each_epoch_visits_every_example_exactly_once():
    first, second = batches(range(4)).ravel(), batches(range(4, 8)).ravel()
    assert sorted(first.tolist()) == list(range(12)) and sorted(second.tolist()) == list(range(12))
    assert first.tolist() != second.tolist()  # a fresh permutation per epoch


def test_remainder_examples_are_dropped_without_repeats():
    epoch = batches(range(3), num_examples=10, batch_size=3).ravel()
    assert len(set(epoch.tolist())) == 9 and set(epoch.tolist()) <= set(range(10))


def test_batches_depend_only_on_key_and_step():
    # A resumed run starts at step 5 with the same key and must see the batches of an uninterrupted one.
    np.testing.assert_array_equal(batches([5, 6, 2]), batches(range(8))[[5, 6, 2]])
    eager = epoch_batch_indices(epoch_order(KEY, 1, num_examples=12), 6, batch_size=3)
    np.testing.assert_array_equal(eager, batches([6])[0])
    assert not np.array_equal(batches([5], key=jax.random.key(1)), batches([5]))


def test_class_balanced_probs_by_hand():
    np.testing.assert_allclose(class_balanced_sample_probs(np.array([0, 0, 1]), np.array([1.0, 2.0])),
                               [0.25, 0.25, 0.5])
    counts = np.array([3, 1])
    np.testing.assert_allclose(class_balanced_sample_probs(np.array([0, 0, 0, 1]), 1.0 / counts),
                               [1 / 6, 1 / 6, 1 / 6, 1 / 2])


@pytest.mark.parametrize("labels, weights, message", [
    ([0, 2], [1.0, 1.0], "labels span 0..2.*2 entries"),
    ([0, 1], [1.0, -1.0], "negative"),
    ([0, 1], [0.0, 0.0], "weight 0"),
])
def test_class_balanced_probs_reject_bad_input(labels, weights, message):
    with pytest.raises(ValueError, match=message):
        class_balanced_sample_probs(np.array(labels), np.array(weights))


def test_balanced_sampling_follows_the_probabilities():
    labels = np.repeat([0, 1], [90, 10])
    probs = jnp.asarray(class_balanced_sample_probs(labels, 1.0 / np.bincount(labels)), jnp.float32)
    draw = jax.jit(jax.vmap(lambda step: balanced_batch_indices(KEY, step, sample_probs=probs, batch_size=50)))
    indices = np.asarray(draw(jnp.arange(200))).ravel()  # 10,000 draws
    # Each class half the time (binomial sd 0.005); each rare example 1/20 of the time (sd about 22 of 500).
    assert abs((labels[indices] == 1).mean() - 0.5) < 0.03
    rare_hits = np.bincount(indices, minlength=100)[90:]
    assert (abs(rare_hits - 500) < 120).all()
    np.testing.assert_array_equal(draw(jnp.arange(3)), draw(jnp.arange(3)))


# A 3x3 one-channel image; zero-padded by 1 it is the 5x5 grid
#   0 0 0 0 0
#   0 1 2 3 0
#   0 4 5 6 0
#   0 7 8 9 0
#   0 0 0 0 0
IMAGE = np.arange(1, 10, dtype=np.uint8).reshape(3, 3, 1)


def test_crop_and_flip_by_hand():
    images = jnp.asarray(np.stack([IMAGE] * 4))
    offsets = jnp.array([[0, 0], [2, 1], [2, 1], [1, 1]])
    flips = jnp.array([False, False, True, False])
    out = np.asarray(crop_and_flip(images, offsets, flips, padding=1))[..., 0]
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [0, 1, 2], [0, 4, 5]])
    np.testing.assert_array_equal(out[1], [[4, 5, 6], [7, 8, 9], [0, 0, 0]])
    np.testing.assert_array_equal(out[2], [[6, 5, 4], [9, 8, 7], [0, 0, 0]])
    np.testing.assert_array_equal(out[3], IMAGE[..., 0])


def test_augment_without_padding_or_flip_is_scaling():
    images = jnp.asarray(np.stack([IMAGE, 255 - IMAGE]))
    out = augment_batch(images, KEY, padding=0, flip=False)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, np.asarray(images) / 255.0, rtol=1e-6)


def numpy_crops(image: np.ndarray, padding: int) -> dict[tuple[int, int, bool], np.ndarray]:
    """Every crop of the zero-padded image and its mirror, keyed by (row, col, flipped), in numpy."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    crops = {}
    for row, col in itertools.product(range(2 * padding + 1), repeat=2):
        crop = padded[row:row + height, col:col + width]
        crops[row, col, False], crops[row, col, True] = crop, crop[:, ::-1]
    return crops


def test_augment_outputs_are_padded_crops_or_their_mirrors():
    images = np.random.default_rng(0).integers(1, 256, (32, 4, 4, 3), dtype=np.uint8)
    out = np.asarray(augment_batch(jnp.asarray(images), KEY, padding=2, flip=True))
    chosen = []
    for image, augmented in zip(images, out):
        matches = [choice for choice, crop in numpy_crops(image, 2).items() if np.allclose(augmented, crop / 255.0)]
        assert len(matches) == 1
        chosen.append(matches[0])
    assert 0 < sum(flip for _, _, flip in chosen) < len(chosen)  # both flips occur ...
    assert len({(row, col) for row, col, _ in chosen}) > 5  # ... and many offsets


def test_normalize_by_hand_and_rejects_wrong_lengths():
    images = jnp.array([[[[0.5, 0.2]]]])
    np.testing.assert_allclose(normalize(images, (0.5, 0.1), (0.25, 0.2)), [[[[0.0, 0.5]]]], atol=1e-6)
    with pytest.raises(ValueError, match=r"mean has shape \(3,\).*\(2,\)"):
        normalize(images, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))


@pytest.mark.parametrize("sampling_weights, head_share", [("class_balanced", 0.5593), ("inverse_count", 0.5)])
def test_the_trainer_draws_resampled_batches_with_the_configured_weights(sampling_weights, head_share):
    # 5,000 and 25 images (CIFAR-10-LT's extremes): the reference sampler's weights (1 - beta) / (1 - beta**n),
    # beta = 0.9999, give class shares 1.2707 : 1.0012 (head 0.5593); 1 / n weights give 1 : 1.
    from types import SimpleNamespace

    from configs import common
    from safa_jax import sharding
    from safa_jax.data.step_input import InMemoryInput

    labels = np.repeat([0, 1], [5000, 25]).astype(np.int32)
    config = common.get_config()
    config.loss.train_rule, config.loss.sampling_weights, config.batch_size = "resample", sampling_weights, 100
    data = SimpleNamespace(train_images=np.zeros((len(labels), 1, 1, 1), np.uint8), train_labels=labels,
                           class_counts=np.bincount(labels), mean=(0.0,), std=(1.0,))
    batch_input = InMemoryInput(SimpleNamespace(data=data, config=config, mesh=sharding.make_mesh(),
                                                steps_per_epoch=50))
    args = batch_input.batch_args(0)
    draw = jax.jit(jax.vmap(lambda step: batch_input.batch_indices(args, KEY, step, 0)))
    drawn = np.asarray(draw(jnp.arange(200))).ravel()  # 20,000 draws: share sd 0.0035.
    assert abs(np.mean(labels[drawn] == 0) - head_share) < 0.015
