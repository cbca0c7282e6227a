"""The in-memory pipeline's sources: `load_data(config.data)` reads a whole long-tailed split into memory.

Sources (`data_config.source`, with `data_config.pipeline == "memory"`; all forms are listed and checked in
`registry.py`):

- "digits": scikit-learn's bundled 8x8 digits (1,797 images, 10 classes, no download). Pixel values
  0..16 become 0..255. Split: per class, in the original order, the last 40 images are the test set
  (400 test images) and the rest are the training split.
- "tfds:NAME" (e.g. tfds:cifar10): the "train" and "test" splits of a TFDS dataset with fixed-shape
  images, read whole into memory. TensorFlow is imported on this path only, so the other sources run on
  machines without it.
- "folder:PATH": PATH/{train,test}/<class>/<image>. Classes are the sorted class folders of train (test
  must have the same ones); files are sorted by name within a class, and an image's id is its position
  in the train file list sorted by (class, file name). Only the images that the long-tailed selection
  keeps are decoded, with a thread pool.

Every source then goes through the same steps: long-tailed subsampling of the training split
(`longtail.py`, with n_max = the smallest per-class count of the source's train split), conversion to
`image_size` x `image_size` x `channels` uint8 (Pillow, bilinear resize), and per-channel mean/std.
"""

import concurrent.futures
import dataclasses
import pathlib
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from safa_jax.data import longtail, registry
from safa_jax.data.dataset import padded_test_positions

DIGITS_TEST_PER_CLASS = 40
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
PIL_MODES = {1: "L", 3: "RGB"}  # for each of registry.PIL_CHANNELS
TFDS_READ_BATCH = 10_000  # tfds' batch_size=-1 needs split sizes that mocked datasets do not have.
STATS_CHUNK = 1024  # images per chunk when computing mean/std, to keep the float copy small.


@dataclasses.dataclass(frozen=True)
class LongTailedData:
    """The long-tailed training split and the balanced test split, as host arrays."""

    train_images: np.ndarray  # uint8 (N, S, S, C)
    train_labels: np.ndarray  # int32 (N,)
    train_ids: np.ndarray  # int64 (N,): index of each kept image within the source's full train split.
    test_images: np.ndarray  # uint8 (M, S, S, C)
    test_labels: np.ndarray  # int32 (M,)
    class_names: tuple[str, ...]
    class_counts: np.ndarray  # (K,) training images per class after subsampling.
    source_class_counts: np.ndarray  # (K,) training images per class in the source.
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units.
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def test_batches(self, *, batch_size: int, process_index: int = 0, process_count: int = 1
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(uint8 images, int32 labels, bool mask) of this process's slice of each global test batch (`Dataset`)."""
        for positions, valid in padded_test_positions(len(self.test_labels), batch_size=batch_size,
                                                      process_index=process_index, process_count=process_count):
            images = self.test_images[positions]  # a copy: the padding is zeroed in it
            images[~valid] = 0
            yield images, np.where(valid, self.test_labels[positions], 0).astype(np.int32), valid


@dataclasses.dataclass(frozen=True)
class _Source:
    """A source before subsampling: labels of the full train split, images decoded on demand."""

    class_names: tuple[str, ...]
    train_labels: np.ndarray
    load_train_images: Callable[[np.ndarray], np.ndarray]  # train ids -> conformed uint8 images.
    load_test: Callable[[], tuple[np.ndarray, np.ndarray]]  # -> (conformed uint8 images, labels).


def load_data(data_config) -> LongTailedData:
    """Reads the source named by `data_config.source`, subsamples it long-tailed and conforms the images."""
    registry.validate_data_config(data_config)
    source = _open_source(data_config)
    num_classes = len(source.class_names)
    source_class_counts = np.bincount(source.train_labels, minlength=num_classes)
    train_ids = longtail.training_subset(source.train_labels, source.class_names, data_config)
    train_images = source.load_train_images(train_ids)
    train_labels = source.train_labels[train_ids].astype(np.int32)
    test_images, test_labels = source.load_test()
    if len(data_config.mean):
        mean, std = tuple(map(float, data_config.mean)), tuple(map(float, data_config.std))
    else:
        mean, std = _channel_mean_std(train_images)
    return LongTailedData(
        train_images=train_images,
        train_labels=train_labels,
        train_ids=train_ids,
        test_images=test_images,
        test_labels=test_labels.astype(np.int32),
        class_names=source.class_names,
        class_counts=np.bincount(train_labels, minlength=num_classes),
        source_class_counts=source_class_counts,
        mean=mean,
        std=std,
    )


def _open_source(data_config) -> _Source:
    kind, argument = registry.parse_source(data_config.source, "memory")
    size, channels = data_config.image_size, data_config.channels
    if kind == "folder":
        return _folder_source(pathlib.Path(argument), size, channels)
    if kind == "digits":
        images, labels, class_names, is_test = _digits_arrays()
        train, test = (images[~is_test], labels[~is_test]), (images[is_test], labels[is_test])
    else:
        train, test, class_names = _tfds_arrays(argument, data_config.data_dir)
    return _Source(
        class_names=class_names,
        train_labels=train[1],
        load_train_images=lambda ids: _conform_arrays(train[0][ids], size, channels),
        load_test=lambda: (_conform_arrays(test[0], size, channels), test[1]),
    )


def _digits_arrays() -> tuple[np.ndarray, np.ndarray, tuple[str, ...], np.ndarray]:
    """Images (uint8, N x 8 x 8 x 1), labels, class names and the test mask of the digits split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    is_test = np.zeros(len(labels), dtype=bool)
    for label in range(len(digits.target_names)):
        is_test[np.flatnonzero(labels == label)[-DIGITS_TEST_PER_CLASS:]] = True
    return images, labels, tuple(str(name) for name in digits.target_names), is_test


def _tfds_arrays(name: str, data_dir: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray],
                                                    tuple[str, ...]]:
    """((train images, labels), (test images, labels), class names) of a TFDS dataset, as numpy."""
    import tensorflow_datasets as tfds

    splits, info = tfds.load(name, split=["train", "test"], data_dir=data_dir or None,
                             batch_size=TFDS_READ_BATCH, as_supervised=True, with_info=True)
    image_key, label_key = info.supervised_keys
    image_shape = info.features[image_key].shape
    if None in image_shape:
        raise ValueError(f"data.source='tfds:{name}' has images of variable shape {image_shape}; "
                         f"allowed: datasets with fixed-shape images (e.g. cifar10, cifar100, mnist).")

    def to_numpy(dataset) -> tuple[np.ndarray, np.ndarray]:
        batches = list(tfds.as_numpy(dataset))
        return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]).astype(np.int64)

    train, test = (to_numpy(dataset) for dataset in splits)
    return train, test, tuple(info.features[label_key].names)


def _folder_source(root: pathlib.Path, size: int, channels: int) -> _Source:
    train_files, train_labels, class_names = _list_image_folder(root / "train", None)
    test_files, test_labels, _ = _list_image_folder(root / "test", class_names)
    return _Source(
        class_names=class_names,
        train_labels=train_labels,
        load_train_images=lambda ids: _decode_files([train_files[i] for i in ids], size, channels),
        load_test=lambda: (_decode_files(test_files, size, channels), test_labels),
    )


def _list_image_folder(split_dir: pathlib.Path, expected_classes: tuple[str, ...] | None):
    """(files sorted by class then name, labels, class names) of one split folder."""
    if not split_dir.is_dir():
        raise ValueError(f"image folder {split_dir} does not exist; expected PATH/{{train,test}}/<class>/<image>.")
    class_names = tuple(sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not class_names:
        raise ValueError(f"image folder {split_dir} has no class folders; expected {split_dir}/<class>/<image>.")
    if expected_classes is not None and class_names != expected_classes:
        raise ValueError(f"image folder {split_dir} has class folders {class_names}, but train has "
                         f"{expected_classes}; both splits must have the same class folders.")
    files, labels = [], []
    for label, class_name in enumerate(class_names):
        class_files = sorted(p for p in (split_dir / class_name).iterdir()
                             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not class_files:
            raise ValueError(f"class folder {split_dir / class_name} has no images; "
                             f"allowed file types: {', '.join(IMAGE_SUFFIXES)}.")
        files.extend(class_files)
        labels.extend([label] * len(class_files))
    return files, np.asarray(labels, dtype=np.int64), class_names


def _decode_files(paths: list[pathlib.Path], size: int, channels: int) -> np.ndarray:
    """Decodes and conforms image files in a thread pool (Pillow releases the GIL while decoding)."""

    def decode(path: pathlib.Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                return _conform_image(image, size, channels)
        except (OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"image file {path} cannot be decoded: {error}") from error

    pool = concurrent.futures.ThreadPoolExecutor()
    try:
        return np.stack(list(pool.map(decode, paths)))
    finally:
        pool.shutdown(cancel_futures=True)  # A bad file stops the run without decoding the rest.


def _conform_arrays(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 (N, H, W, C') arrays -> (N, size, size, channels), through the same Pillow path as files."""
    if images.shape[1:] == (size, size, channels):
        return images
    pixels = images[..., 0] if images.shape[-1] == 1 else images
    return np.stack([_conform_image(Image.fromarray(image), size, channels) for image in pixels])


def _conform_image(image: Image.Image, size: int, channels: int) -> np.ndarray:
    image = image.convert(PIL_MODES[channels])
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., None] if channels == 1 else pixels


def _channel_mean_std(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std in [0, 1] units, from exact integer sums."""
    channels = images.shape[-1]
    total = np.zeros(channels, dtype=np.int64)
    total_of_squares = np.zeros(channels, dtype=np.int64)
    for start in range(0, len(images), STATS_CHUNK):
        chunk = images[start:start + STATS_CHUNK].reshape(-1, channels).astype(np.int64)
        total += chunk.sum(axis=0)
        total_of_squares += (chunk * chunk).sum(axis=0)
    count = images.size // channels
    mean = total / count
    std = np.sqrt(np.maximum(total_of_squares / count - mean**2, 0.0))
    if (std == 0).any():
        raise ValueError(f"the training images have a constant channel (std={tuple(std / 255)}); "
                         f"set data.mean and data.std explicitly.")
    return tuple(float(m) for m in mean / 255), tuple(float(s) for s in std / 255)
