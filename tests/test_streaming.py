"""The streaming pipeline: same ids as the in-memory folder source, order, resume, shards, crops, test coverage."""

import io

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from configs import common
from safa_jax.losses.base import sampling_class_weights
from safa_jax.data.longtail import longtail_class_counts
from safa_jax.data.sources import load_data
from safa_jax.data.streaming import (decode_center_crop, decode_random_resized_crop, global_train_batches,
                                     load_streaming_data, random_crop_window)

TRAIN_COUNTS = {"cat": 12, "dog": 10, "eel": 9}
TEST_PER_CLASS = 3
SIZE = 16


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    """4:4:4 JPEG (no chroma subsampling), so a fused crop decodes exactly the pixels of decode-then-crop."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, subsampling=0)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder_tree(tmp_path_factory):
    """PATH/{train,test}/<class>/<image>: random JPEGs of odd sizes, and one PNG among the training images."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for split, counts in (("train", TRAIN_COUNTS), ("test", dict.fromkeys(TRAIN_COUNTS, TEST_PER_CLASS))):
        for class_name, count in counts.items():
            folder = root / split / class_name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (17 + i % 5, 23 + 3 * (i % 4), 3), dtype=np.uint8)
                (folder / f"{i:02d}.jpg").write_bytes(jpeg_bytes(pixels))
    Image.fromarray(rng.integers(0, 256, (21, 30, 3), dtype=np.uint8)).save(root / "train" / "dog" / "99.png")
    return root


def stream_config(root, **overrides):
    config = common.get_config().data
    config.update(dict(source=f"folder:{root}", pipeline="stream", image_size=SIZE, imbalance_factor=4.0,
                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def folder_data(folder_tree):
    return load_streaming_data(stream_config(folder_tree))


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def test_folder_stream_selects_the_in_memory_sources_ids_and_test_batches(folder_tree, folder_data):
    in_memory = load_data(stream_config(folder_tree, pipeline="memory"))
    # n_max = the smallest source class (eel, 9); rho = 4 over 3 classes keeps 9, 9 * 4^-1/2, 9 * 4^-1.
    assert folder_data.source_class_counts.tolist() == [12, 11, 9]
    assert folder_data.class_counts.tolist() == [9, 4, 2] == longtail_class_counts(9, 3, 4.0).tolist()
    assert folder_data.class_names == in_memory.class_names == ("cat", "dog", "eel")
    np.testing.assert_array_equal(folder_data.train_ids, in_memory.train_ids)
    np.testing.assert_array_equal(folder_data.train_labels, in_memory.train_labels)
    np.testing.assert_array_equal(folder_data.test_labels, in_memory.test_labels)
    np.testing.assert_array_equal(folder_data.class_counts, in_memory.class_counts)
    for process in (0, 1):  # one Dataset interface: the same test batches, process by process, from both
        streamed = list(folder_data.test_batches(batch_size=4, process_index=process, process_count=2))
        held = list(in_memory.test_batches(batch_size=4, process_index=process, process_count=2))
        assert [images.shape for images, _, _ in streamed] == [images.shape for images, _, _ in held] == [
            (2, SIZE, SIZE, 3)] * 3  # 9 test images: global batches of 4, 4, 1 + padding; 2 per process
        for (_, labels, mask), (_, held_labels, held_mask) in zip(streamed, held):
            np.testing.assert_array_equal(labels, held_labels)
            np.testing.assert_array_equal(mask, held_mask)


def test_train_batches_have_the_planned_labels_shapes_and_dtypes(folder_data):
    weights = np.ones(3)
    plan = global_train_batches(folder_data.train_labels, 3, batch_size=4, seed=3, start_step=0,
                                balanced_from_step=2, balanced_class_weights=weights)
    batches = folder_data.train_batches(batch_size=4, seed=3, start_step=0, balanced_from_step=2,
                                        balanced_class_weights=weights)
    for (images, labels), (positions, _) in zip(take(batches, 3), take(plan, 3)):
        assert images.shape == (4, SIZE, SIZE, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int32
        np.testing.assert_array_equal(labels, folder_data.train_labels[positions])


def test_resumed_run_yields_the_uninterrupted_batches(folder_data):
    # 15 training images, batch 4: 3 steps per epoch; epochs start at steps 3 and 6, balanced from step 7.
    kwargs = dict(batch_size=4, seed=1, balanced_from_step=7, balanced_class_weights=np.ones(3))
    uninterrupted = take(folder_data.train_batches(start_step=0, **kwargs), 8)
    resumed = take(folder_data.train_batches(start_step=4, **kwargs), 4)
    for (images, labels), (expected_images, expected_labels) in zip(resumed, uninterrupted[4:]):
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(labels, expected_labels)
    assert not np.array_equal(uninterrupted[0][0], uninterrupted[3][0])  # augmentation differs per step.


def test_process_shards_partition_each_global_batch(folder_data):
    kwargs = dict(batch_size=4, seed=2, start_step=1, balanced_from_step=3, balanced_class_weights=np.ones(3))
    whole = take(folder_data.train_batches(**kwargs), 4)
    shares = [take(folder_data.train_batches(process_index=p, process_count=2, **kwargs), 4) for p in (0, 1)]
    for step, (images, labels) in enumerate(whole):
        assert shares[0][step][0].shape == (2, SIZE, SIZE, 3)
        np.testing.assert_array_equal(np.concatenate([shares[0][step][0], shares[1][step][0]]), images)
        np.testing.assert_array_equal(np.concatenate([shares[0][step][1], shares[1][step][1]]), labels)


def test_epochs_are_permutations_and_balanced_draws_cover_classes_equally():
    labels = np.repeat([0, 1, 2], [100, 10, 2])
    plan = global_train_batches(labels, 3, batch_size=8, seed=0, start_step=0, balanced_from_step=28,
                                balanced_class_weights=1.0 / np.bincount(labels))
    steps = [positions for positions, _ in take(plan, 28 + 3000)]
    # 112 examples, batch 8: 14 steps per epoch, each epoch a fresh permutation of all examples.
    first_epoch, second_epoch = np.concatenate(steps[:14]), np.concatenate(steps[14:28])
    np.testing.assert_array_equal(np.sort(first_epoch), np.arange(112))
    np.testing.assert_array_equal(np.sort(second_epoch), np.arange(112))
    assert not np.array_equal(first_epoch, second_epoch)
    drawn = np.concatenate(steps[28:])
    class_share = np.bincount(labels[drawn], minlength=3) / len(drawn)
    np.testing.assert_allclose(class_share, 1 / 3, atol=0.015)  # 24,000 draws: std 0.003.
    rare = drawn[labels[drawn] == 2]
    assert abs(np.mean(rare == 110) - 0.5) < 0.04  # within a class, each example equally likely.


def test_random_crop_windows_follow_the_area_and_aspect_ranges():
    areas, aspects = [], []
    for k in range(200):
        begin, size = random_crop_window(tf.constant([300, 400, 3]), tf.constant([k, 5], tf.int64))
        (top, left), (height, width) = begin.numpy(), size.numpy()
        assert 0 <= top <= 300 - height and 0 <= left <= 400 - width
        areas.append(height * width / (300 * 400))
        aspects.append(width / height)
    assert 0.08 * 0.97 <= min(areas) and max(areas) <= 1.0
    assert 0.75 * 0.97 <= min(aspects) and max(aspects) <= 4 / 3 * 1.03
    assert np.std(areas) > 0.1  # windows vary with the seed.


@pytest.mark.parametrize("height, width", [(37, 53), (300, 401), (17, 90)])
def test_fused_jpeg_crop_equals_decode_then_crop_at_the_output_size(height, width):
    pixels = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    jpeg = jpeg_bytes(pixels)
    png = tf.io.encode_png(tf.io.decode_jpeg(jpeg, channels=3)).numpy()  # the same pixels, decoded whole.
    for k in range(5):
        seed = tf.constant([k, height], tf.int64)
        fused, whole = (decode_random_resized_crop(encoded, seed, size=SIZE, channels=3, flip=True,
                                                   color_jitter=0.0).numpy() for encoded in (jpeg, png))
        assert fused.shape == (SIZE, SIZE, 3) and fused.dtype == np.uint8
        np.testing.assert_array_equal(fused, whole)


def test_colour_jitter_of_a_grey_image_only_scales_brightness_within_range():
    grey = tf.io.encode_png(tf.fill((20, 30, 3), tf.constant(100, tf.uint8))).numpy()
    values = set()
    for k in range(20):
        seed = tf.constant([k, 0], tf.int64)
        image = decode_random_resized_crop(grey, seed, size=SIZE, channels=3, flip=True, color_jitter=0.4).numpy()
        again = decode_random_resized_crop(grey, seed, size=SIZE, channels=3, flip=True, color_jitter=0.4).numpy()
        np.testing.assert_array_equal(image, again)
        assert len(np.unique(image)) == 1  # contrast and saturation leave a flat grey image flat and grey.
        values.add(int(image[0, 0, 0]))
    assert min(values) >= 60 and max(values) <= 140 and len(values) > 5  # 100 x [0.6, 1.4].


def test_center_crop_keeps_the_centre_after_resizing_the_shorter_side():
    # 20 x 80, white only in columns 30..49. Size 16: shorter side -> round(16 * 256 / 224) = 18, so the image
    # becomes 18 x 72 and the crop takes columns 28..43, i.e. columns 31.1..48.9 of the original: all white.
    pixels = np.zeros((20, 80, 3), np.uint8)
    pixels[:, 30:50] = 255
    image = decode_center_crop(tf.io.encode_png(pixels), size=SIZE, channels=3).numpy()
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert image.min() >= 245


@pytest.mark.parametrize("process_count", [1, 2])
def test_test_batches_cover_every_example_once_padded(folder_data, process_count):
    expected = np.stack([decode_center_crop(tf.io.read_file(path), size=SIZE, channels=3).numpy()
                         for path in folder_data.test_images.paths])
    per_process = [list(folder_data.test_batches(batch_size=4, process_index=p, process_count=process_count))
                   for p in range(process_count)]
    assert [len(batches) for batches in per_process] == [3] * process_count  # 9 examples: 4 + 4 + (1 + 3 pads).
    global_batches = [[np.concatenate(parts) for parts in zip(*shares)] for shares in zip(*per_process)]
    images, labels, mask = (np.concatenate(parts) for parts in zip(*global_batches))
    assert mask.tolist() == [True] * 9 + [False] * 3
    np.testing.assert_array_equal(images[mask], expected)
    np.testing.assert_array_equal(labels[mask], folder_data.test_labels)
    assert not images[~mask].any() and not labels[~mask].any()


def test_inaturalist_through_a_mocked_tfds_data_source():
    config = stream_config("", source="tfds:i_naturalist2018", subsample=False)
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        data = load_streaming_data(config)
        records = tfds.builder("i_naturalist2018").as_data_source(split="validation")
        labels = np.array([records[i]["label"] for i in range(6)])
        images, batch_labels = next(data.train_batches(batch_size=4, seed=0, start_step=0, balanced_from_step=None))
        test = list(data.test_batches(batch_size=4))
    assert data.num_classes == 8142  # iNaturalist 2018's classes.
    np.testing.assert_array_equal(data.train_ids, np.arange(6))
    np.testing.assert_array_equal(data.class_counts, np.bincount(data.train_labels, minlength=8142))
    np.testing.assert_array_equal(data.test_labels, labels)  # mocked splits hold the same examples.
    assert images.shape == (4, SIZE, SIZE, 3) and set(batch_labels) <= set(labels)
    assert [mask.tolist() for _, _, mask in test] == [[True] * 4, [True, True, False, False]]


@pytest.mark.parametrize("overrides, message", [
    (dict(source="memory:x"), "'memory:x'.*tfds:NAME, folder:PATH, imagenet_lt:LISTS_DIR, places_lt:LISTS_DIR"),
    (dict(mean=(), std=()), r"data.mean=\(\).*both set"),
    (dict(channels=2), "channels=2"),
    (dict(color_jitter=1.5), "color_jitter=1.5; allowed: 0"),
])
def test_bad_stream_config_is_rejected_naming_the_value(folder_tree, overrides, message):
    with pytest.raises(ValueError, match=message):
        load_streaming_data(stream_config(folder_tree, **overrides))


def test_folder_without_a_test_split_is_rejected(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "0.jpg").write_bytes(jpeg_bytes(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(ValueError, match=f"{tmp_path}/test has no"):
        load_streaming_data(stream_config(tmp_path, subsample=False))


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=5, process_index=0, process_count=2), "batch_size=5.*multiple of 2"),
    (dict(batch_size=4, process_index=2, process_count=2), "process_index=2 of process_count=2"),
])
def test_bad_process_split_is_rejected(folder_data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        folder_data.test_batches(**kwargs)


def test_batch_larger_than_the_training_set_fails_before_reading(folder_data):
    with pytest.raises(ValueError, match="15 examples, fewer than batch_size=16"):
        folder_data.train_batches(batch_size=16, seed=0, start_step=0, balanced_from_step=None)


def test_the_reference_sampling_weights_set_the_class_shares_of_streamed_draws():
    # CIFAR-10-LT's largest and smallest classes (5,000 and 25 images) under the reference sampler's weights
    # (1 - beta) / (1 - beta**n), beta = 0.9999: class shares n w / sum(n w) = 1.2707 : 1.0012, so the head
    # class gets 0.5593 of the draws, not the 0.5 of 1 / n weights.
    labels = np.repeat([0, 1], [5000, 25])
    config = common.get_config().loss
    weights = sampling_class_weights(config, np.bincount(labels))
    plan = global_train_batches(labels, 2, batch_size=100, seed=0, start_step=0, balanced_from_step=0,
                                balanced_class_weights=weights)
    drawn = np.concatenate([positions for positions, _ in take(plan, 200)])  # 20,000 draws: share sd 0.0035.
    assert abs(np.mean(labels[drawn] == 0) - 0.5593) < 0.015
    with pytest.raises(ValueError, match="balanced_class_weights is None"):
        global_train_batches(labels, 2, batch_size=100, seed=0, start_step=0, balanced_from_step=0)
