"""The data sources: digits, TFDS (mocked), image folders (a tiny tree written here, and the real CIFAR-10)."""

import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from configs import cifar10_lt, common
from safa_jax.data.longtail import longtail_class_counts
from safa_jax.data.registry import validate_data_config
from safa_jax.data.sources import load_data
from tests.test_longtail import ldam_drw_reference

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def data_config(**overrides):
    config = common.get_config().data
    config.update(overrides)
    return config


@pytest.mark.parametrize("overrides, message", [
    (dict(source="tfds"), "'tfds'.*digits, tfds:NAME, folder:PATH"),
    (dict(source="folder:"), "'folder:'"),
    (dict(imbalance_factor=0.9), "imbalance_factor=0.9"),
    (dict(selection="lda"), "'lda'.*ldam, first, random"),
    (dict(channels=2), "channels=2.*1 .*or 3"),
    (dict(image_size=3), "image_size=3.*>= 4"),
    (dict(channels=3, mean=(0.5,), std=(0.2,)), r"mean=\(0.5,\).*channels=3"),
    (dict(channels=1, mean=(0.5,), std=(0.0,)), r"std=\(0.0,\)"),
])
def test_bad_data_config_is_rejected_naming_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_data_config(data_config(**overrides))


# --- digits ------------------------------------------------------------------------------------------


def digits_train_split():
    """The documented split, rebuilt here: per class the last 40 images (original order) are test."""
    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]
    is_test = np.zeros(len(digits.target), bool)
    for label in range(10):
        is_test[np.flatnonzero(digits.target == label)[-40:]] = True
    return images[~is_test], digits.target[~is_test]


def test_digits_counts_ids_and_pixels():
    train_images, train_labels = digits_train_split()
    data = load_data(data_config(source="digits", imbalance_factor=10.0, image_size=8, channels=1))
    # sklearn's digits have 178, 182, 177, 183, 181, 182, 181, 179, 174, 180 images per class; 40 go to test.
    assert data.source_class_counts.tolist() == [138, 142, 137, 143, 141, 142, 141, 139, 134, 140]
    assert data.class_counts.tolist() == longtail_class_counts(134, 10, 10.0).tolist()
    assert data.class_counts.tolist() == [134, 103, 80, 62, 48, 37, 28, 22, 17, 13]
    assert data.class_names == tuple("0123456789") and data.num_classes == 10
    assert data.train_images.shape == (544, 8, 8, 1) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (400, 8, 8, 1) and np.bincount(data.test_labels).tolist() == [40] * 10
    np.testing.assert_array_equal(data.train_images, train_images[data.train_ids])
    np.testing.assert_array_equal(data.train_labels, train_labels[data.train_ids])
    pixels = data.train_images.astype(np.float64) / 255
    np.testing.assert_allclose(data.mean, [pixels.mean()], rtol=1e-12)
    np.testing.assert_allclose(data.std, [pixels.std()], rtol=1e-9)


def test_digits_resize_and_channels_follow_the_config():
    data = load_data(data_config(source="digits", subsample=False, image_size=16, channels=3,
                                 mean=(0.5,) * 3, std=(0.25,) * 3))
    assert data.train_images.shape == (1397, 16, 16, 3) and data.class_counts.sum() == 1397
    np.testing.assert_array_equal(data.train_ids, np.arange(1397))
    assert data.mean == (0.5, 0.5, 0.5)
    # Grey converted to RGB repeats the channel.
    np.testing.assert_array_equal(data.train_images[..., 0], data.train_images[..., 2])


# --- TFDS --------------------------------------------------------------------------------------------


def test_tfds_source_reads_mocked_cifar10():
    tfds = pytest.importorskip("tensorflow_datasets")
    config = data_config(source="tfds:cifar10", imbalance_factor=2.0, selection="first", image_size=32,
                         channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    with tfds.testing.mock_data(num_examples=120):
        data = load_data(config)
        raw_train, info = tfds.load("cifar10", split="train", batch_size=1000, as_supervised=True, with_info=True)
        raw_images, raw_labels = next(iter(tfds.as_numpy(raw_train)))
    # Without prepared metadata the mocked builder names its classes "0".."9"; real data has CIFAR's names.
    assert data.class_names == tuple(info.features["label"].names) and data.num_classes == 10
    np.testing.assert_array_equal(data.source_class_counts, np.bincount(raw_labels, minlength=10))
    expected_counts = longtail_class_counts(int(data.source_class_counts.min()), 10, 2.0)
    np.testing.assert_array_equal(data.class_counts, expected_counts)
    np.testing.assert_array_equal(data.train_images, raw_images[data.train_ids])
    np.testing.assert_array_equal(data.train_labels, raw_labels[data.train_ids])
    assert data.test_images.shape == (120, 32, 32, 3)
    with tfds.testing.mock_data(num_examples=3), pytest.raises(ValueError, match="has no training images"):
        load_data(config)  # 3 examples cannot cover 10 classes.


# --- image folders -----------------------------------------------------------------------------------


def write_tree(root: pathlib.Path, files: dict[str, Image.Image | bytes]) -> pathlib.Path:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content.save(path)
    return root


def grey(value: int, size=(5, 7)) -> Image.Image:
    return Image.new("L", size, value)


def rgb(value: tuple[int, int, int], size=(11, 9)) -> Image.Image:
    return Image.new("RGB", size, value)


def folder_config(root: pathlib.Path, **overrides):
    defaults = dict(source=f"folder:{root}", subsample=False, image_size=6, channels=3,
                    mean=(0.5,) * 3, std=(0.25,) * 3)
    return data_config(**(defaults | overrides))


@pytest.fixture
def small_tree(tmp_path):
    """Class "cat": grey PNGs (5x7); class "dog": RGB JPEGs (11x9), whose left half is dark."""
    half_dark = rgb((200, 100, 50))
    half_dark.paste((0, 0, 0), (0, 0, 5, 9))
    return write_tree(tmp_path, {
        "train/cat/a.png": grey(77), "train/cat/b.png": grey(77), "train/cat/c.png": grey(77),
        "train/cat/notes.txt": b"not an image, skipped by extension",
        "train/dog/a.jpg": half_dark, "train/dog/b.jpg": rgb((200, 100, 50)),
        "test/cat/x.png": grey(77), "test/dog/y.jpg": rgb((200, 100, 50)),
    })


def test_folder_images_are_converted_and_resized(small_tree):
    data = load_data(folder_config(small_tree))
    assert data.class_names == ("cat", "dog")
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1] and data.test_labels.tolist() == [0, 1]
    np.testing.assert_array_equal(data.train_ids, np.arange(5))
    assert data.train_images.shape == (5, 6, 6, 3) and data.train_images.dtype == np.uint8
    assert (data.train_images[:3] == 77).all()  # grey 77 -> RGB (77, 77, 77)
    # A uniform JPEG decodes to its colour within a few levels.
    np.testing.assert_allclose(data.train_images[4], np.broadcast_to([200, 100, 50], (6, 6, 3)), atol=4)
    # The dark half stays on the left after the resize (width and height not swapped).
    assert data.train_images[3][:, 0].max() < 10 and data.train_images[3][:, -1].min() > 40


def test_folder_grey_conversion_uses_luma(small_tree):
    data = load_data(folder_config(small_tree, channels=1, mean=(0.5,), std=(0.25,)))
    assert data.train_images.shape == (5, 6, 6, 1)
    # ITU-R 601-2 luma: 200 * 0.299 + 100 * 0.587 + 50 * 0.114 = 124.2
    np.testing.assert_allclose(data.train_images[4], 124, atol=4)


def test_folder_decodes_only_the_selected_images(tmp_path):
    root = write_tree(tmp_path, {
        **{f"train/a/{i}.png": grey(10 * i) for i in range(4)},
        "train/b/0.png": grey(90), "train/b/1.png": grey(91), "train/b/2.png": b"broken",
        "test/a/0.png": grey(1), "test/b/0.png": grey(2),
    })
    # n_max = 3 (class b); rho = 3 keeps 3 of a and 1 of b; "first" never touches b/2.png.
    data = load_data(folder_config(root, subsample=True, imbalance_factor=3.0, selection="first"))
    assert data.source_class_counts.tolist() == [4, 3] and data.class_counts.tolist() == [3, 1]
    assert data.train_ids.tolist() == [0, 1, 2, 4]
    assert data.train_images[:, 0, 0, 0].tolist() == [0, 10, 20, 90]
    with pytest.raises(ValueError, match=r"train/b/2\.png cannot be decoded"):
        load_data(folder_config(root))


@pytest.mark.parametrize("files, message", [
    ({"train/a/0.png": grey(1)}, r"test does not exist"),
    ({"train/a/0.png": grey(1), "test/b/0.png": grey(1)}, r"class folders \('b',\), but train has \('a',\)"),
    ({"train/a/0.txt": b"x", "test/a/0.png": grey(1)}, r"train/a has no images"),
    ({"train/readme.txt": b"x", "test/a/0.png": grey(1)}, r"train has no class folders"),
])
def test_folder_layout_errors_name_the_problem(tmp_path, files, message):
    write_tree(tmp_path, files)
    with pytest.raises(ValueError, match=message):
        load_data(folder_config(tmp_path))


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path}/nowhere/train does not exist")):
        load_data(folder_config(tmp_path / "nowhere"))


def test_digits_and_folder_paths_never_import_tensorflow(small_tree):
    """A GPU machine we train on has no TensorFlow: only the TFDS source may import it."""
    script = (
        "import sys\n"
        "from configs import common, digits_lt\n"
        "from safa_jax.data import device_pipeline, sources\n"
        "sources.load_data(digits_lt.get_config().data)\n"
        "folder = common.get_config().data\n"
        f"folder.update(source='folder:{small_tree}', subsample=False, image_size=6)\n"
        "sources.load_data(folder)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('tensorflow'))\n"
        "sys.exit(f'imported: {loaded}' if loaded else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_real_cifar10_folder_rho200_is_the_ldam_drw_subset(shared_cifar10):
    config = cifar10_lt.get_config("200").data
    config.source = f"folder:{shared_cifar10}"
    data = load_data(config)
    assert data.class_names == CIFAR10_CLASSES
    assert data.source_class_counts.tolist() == [5000] * 10
    assert data.class_counts.tolist() == longtail_class_counts(5000, 10, 200).tolist()
    assert len(data.train_labels) == 11_203  # REFERENCE.md: CIFAR-10-LT rho=200
    # The LDAM-DRW code on labels laid out like the sorted file list (class-major, original order within a class).
    expected = ldam_drw_reference(np.repeat(np.arange(10), 5000), data.class_counts)
    np.testing.assert_array_equal(data.train_ids, expected)
    last = data.train_ids[-1]
    with Image.open(shared_cifar10 / "train" / CIFAR10_CLASSES[last // 5000] / f"{last % 5000:04d}.jpg") as image:
        np.testing.assert_array_equal(data.train_images[-1], np.asarray(image.convert("RGB")))
    assert data.test_images.shape == (10_000, 32, 32, 3)
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.mean == cifar10_lt.CIFAR_MEAN
