"""The OLTR list files (ImageNet-LT, Places-LT): parsing, class counts, shot buckets, clear errors, streaming."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from configs import common
from safa_jax.data.longtail import shot_buckets
from safa_jax.data.lt_lists import class_names_from_paths, list_file_names, parse_image_list, read_lt_lists
from safa_jax.data.streaming import load_streaming_data

SYNSETS = ("n01440764", "n01443537", "n01484850")


def write_lists(lists_dir, train_lines, test_lines, prefix="ImageNet_LT"):
    lists_dir.mkdir(parents=True, exist_ok=True)
    (lists_dir / f"{prefix}_train.txt").write_text("\n".join(train_lines) + "\n")
    (lists_dir / f"{prefix}_test.txt").write_text("\n".join(test_lines) + "\n")


def imagenet_lines(split, counts):
    """Lines in the published form, classes interleaved as in a shuffled list."""
    lines = [(i, f"{split}/{SYNSETS[label]}/{SYNSETS[label]}_{i}.JPEG {label}")
             for label, count in enumerate(counts) for i in range(count)]
    return [line for _, line in sorted(lines)]


def test_class_counts_names_and_shot_buckets_from_the_train_list(tmp_path):
    write_lists(tmp_path, imagenet_lines("train", (150, 40, 7)), imagenet_lines("val", (2, 2, 2)))
    lists = read_lt_lists("imagenet_lt", str(tmp_path))
    counts = np.bincount(lists.train.labels)
    assert counts.tolist() == [150, 40, 7]
    assert lists.class_names == SYNSETS
    assert lists.train.paths[0] == "train/n01440764/n01440764_0.JPEG"
    buckets = shot_buckets(counts)  # many > 100, medium 20..100, few < 20.
    assert [buckets[name].tolist() for name in ("many", "medium", "few")] == [
        [True, False, False], [False, True, False], [False, False, True]]
    assert np.bincount(lists.test.labels).tolist() == [2, 2, 2]


def test_places_lists_name_classes_by_their_nested_folders():
    image_list = parse_image_list("/data_256/a/airfield/00000001.jpg 0\n\n"
                                  "data_256/a/apartment_building/outdoor/00000002.jpg 1\n", "Places_LT_train.txt")
    assert image_list.paths == ("data_256/a/airfield/00000001.jpg",
                                "data_256/a/apartment_building/outdoor/00000002.jpg")
    assert image_list.line_numbers.tolist() == [1, 3]
    assert class_names_from_paths(image_list) == ("a/airfield", "a/apartment_building/outdoor")


def test_list_file_names_are_the_published_ones():
    assert list_file_names("imagenet_lt") == {"train": "ImageNet_LT_train.txt", "test": "ImageNet_LT_test.txt"}
    assert list_file_names("places_lt") == {"train": "Places_LT_train.txt", "test": "Places_LT_test.txt"}


@pytest.mark.parametrize("text, message", [
    ("a/b.JPEG 0\na/c.JPEG 1\na/d.JPEG\n", r"L.txt line 3: 'a/d.JPEG' is not '<relative image path> <integer"),
    ("a/b.JPEG 0\n\na/c.JPEG one\n", "L.txt line 3: 'a/c.JPEG one'"),
    ("a/b.JPEG -1\n", "L.txt line 1: label -1 is out of range"),
    ("\n\n", "L.txt has no image lines"),
])
def test_malformed_lines_are_rejected_with_file_and_line(text, message):
    with pytest.raises(ValueError, match=message):
        parse_image_list(text, "L.txt")


def test_missing_list_file_is_named_with_the_expected_names(tmp_path):
    (tmp_path / "ImageNet_LT_train.txt").write_text("train/a/x.JPEG 0\n")
    with pytest.raises(ValueError, match="ImageNet_LT_test.txt does not exist; imagenet_lt expects "
                                         "ImageNet_LT_train.txt and ImageNet_LT_test.txt"):
        read_lt_lists("imagenet_lt", str(tmp_path))


def test_test_label_beyond_the_train_classes_is_rejected_with_its_line(tmp_path):
    write_lists(tmp_path, imagenet_lines("train", (3, 2)), ["val/x_0.JPEG 0", "val/x_1.JPEG 2"])
    with pytest.raises(ValueError, match=r"ImageNet_LT_test.txt line 2: label 2 is out of range; allowed: 0..1"):
        read_lt_lists("imagenet_lt", str(tmp_path))


def test_class_without_training_images_is_rejected(tmp_path):
    write_lists(tmp_path, ["train/a/x.JPEG 0", "train/c/y.JPEG 2"], ["val/x.JPEG 0"], prefix="Places_LT")
    with pytest.raises(ValueError, match=r"Places_LT_train.txt has no image of class\(es\) \[1\]"):
        read_lt_lists("places_lt", str(tmp_path))


def jpeg(height, width, seed):
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def list_config(lists_dir, image_root):
    config = common.get_config().data
    config.update(dict(source=f"imagenet_lt:{lists_dir}", data_dir=str(image_root), pipeline="stream",
                       subsample=False, image_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    return config


@pytest.fixture
def imagenet_lt_tree(tmp_path):
    """A tiny ImageNet-LT: lists with 6/3/1 training and 2 test images per class, and the JPEGs they name."""
    train, test = imagenet_lines("train", (6, 3, 1)), imagenet_lines("val", (2, 2, 2))
    write_lists(tmp_path / "lists", train, test)
    for index, line in enumerate(train + test):
        path = tmp_path / "imagenet" / line.split()[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(19 + index % 4, 27 + index % 3, index))
    return tmp_path / "lists", tmp_path / "imagenet"


def test_imagenet_lt_streams_from_its_lists(imagenet_lt_tree):
    lists_dir, image_root = imagenet_lt_tree
    data = load_streaming_data(list_config(lists_dir, image_root))
    assert data.class_names == SYNSETS
    assert data.class_counts.tolist() == data.source_class_counts.tolist() == [6, 3, 1]
    np.testing.assert_array_equal(data.train_ids, np.arange(10))  # line positions in the train list.
    assert data.num_test == 6
    images, labels = next(data.train_batches(batch_size=5, seed=0, start_step=0, balanced_from_step=None))
    assert images.shape == (5, 16, 16, 3)
    batches = list(data.test_batches(batch_size=4))
    np.testing.assert_array_equal(np.concatenate([b[1][b[2]] for b in batches]), data.test_labels)


def test_missing_image_file_is_named(imagenet_lt_tree):
    lists_dir, image_root = imagenet_lt_tree
    missing = image_root / "train" / SYNSETS[2] / f"{SYNSETS[2]}_0.JPEG"  # line 3, one of those checked up front.
    missing.unlink()
    with pytest.raises(ValueError, match=f"image file {missing} \\(line 3 of ImageNet_LT_train.txt\\) does not exist"):
        load_streaming_data(list_config(lists_dir, image_root))


def test_empty_image_root_is_rejected(imagenet_lt_tree):
    lists_dir, _ = imagenet_lt_tree
    with pytest.raises(ValueError, match="data.data_dir is empty"):
        load_streaming_data(list_config(lists_dir, ""))


def test_image_missing_outside_the_checked_sample_fails_naming_it_when_read(imagenet_lt_tree):
    lists_dir, image_root = imagenet_lt_tree
    data = load_streaming_data(list_config(lists_dir, image_root))
    missing = image_root / "train" / SYNSETS[1] / f"{SYNSETS[1]}_1.JPEG"  # line 5: not in the up-front sample.
    missing.unlink()
    with pytest.raises(tf.errors.NotFoundError, match=str(missing)):
        next(data.train_batches(batch_size=10, seed=0, start_step=0, balanced_from_step=None))
