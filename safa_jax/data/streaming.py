"""Streaming input for datasets too large to hold in memory: tf.data reads, decodes and augments on the host.

ImageNet-LT (115,846 training images), Places-LT (62,500) and iNaturalist 2018 (435,713) do not fit in
memory as uint8 at 224 px, so each process streams its own share of every batch from disk (or gs://) and
the jitted step only normalises. `load_streaming_data(config.data)` returns a `StreamingData`; the train
loop takes one batch per step from `train_batches` and evaluates from `test_batches`.

Sources (`data_config.source`, with `data_config.pipeline == "stream"`; all forms are listed and checked in
`registry.py`):

- "folder:PATH": an image tree PATH/{train,test}/<class>/<image>, listed by tfds's `ImageFolder` builder
  (local or gs://; .jpg, .jpeg and .png files). Ids, classes and the long-tailed selection are those of the
  in-memory folder source (`sources.py`): files sorted by (class, file name), `select_longtail` on them.
  The builder's own `as_dataset` is not used for reading: it decodes whole images in a fixed order, while
  training here needs its crop fused into the JPEG decode and a seeded order that resumes by index.
- "tfds:NAME", e.g. "tfds:i_naturalist2018": a prepared TFDS dataset in `data_config.data_dir`, read by
  index through `builder.as_data_source` (random access, so the dataset must be prepared in the
  array_record format). Train on "train", test on "validation" for i_naturalist2018 ("test" otherwise).
  Class counts come from one pass over the labels at start-up (image bytes are read, not decoded).
- "imagenet_lt:LISTS_DIR" / "places_lt:LISTS_DIR": the OLTR lists in LISTS_DIR (`lt_lists.py`) over an
  ImageNet-2012 / Places365 image tree at `data_config.data_dir`. Ids are line positions in the train list.

Every source is long-tailed-subsampled when `data_config.subsample` (as the in-memory sources); the
published large-scale datasets are long-tailed already and their configs turn it off. `data_config.mean`
and `data_config.std` must be set (computing them would take a pass over decoded images).

Augmentation, per training example: RandomResizedCrop as Inception/torchvision (area 8%..100%, aspect ratio
3/4..4/3, up to 10 tries, else the whole image) with the crop fused into the JPEG decode, bilinear resize
to S x S, horizontal flip (`data.flip`), and optional colour jitter (`data.color_jitter`: brightness,
contrast and saturation factors in [1 - s, 1 + s], as iNaturalist recipes use). Non-JPEG files (a few
ImageNet "JPEG"s are PNG or CMYK) are decoded whole and cropped. With `data.augment` off, training images
get the test transform. Test: shorter side resized to 256 * S / 224, centre crop S x S.

Determinism: the batch of step t depends only on (seed, t). Epoch e is a permutation seeded by
(seed, e) and step t takes its (t mod steps_per_epoch)-th slice (the remainder of an epoch is dropped, as
on the device path); from `balanced_from_step` on, each example of step t is drawn class-balanced from
(seed, t). The random crop, flip and jitter use stateless TensorFlow ops seeded per (seed, t, position), so
a run resumed at step t yields exactly the batches of an uninterrupted run, with nothing decoded to skip
ahead, and parallel decoding cannot reorder random numbers. Process p of P reads positions
[p * B/P, (p + 1) * B/P) of each global batch of B.
"""

import dataclasses
import itertools
import logging
import typing
from collections.abc import Iterator, Sequence

import numpy as np

from safa_jax.data import longtail, lt_lists, registry
from safa_jax.data.dataset import padded_test_positions, process_batch_size
from safa_jax.data.device_pipeline import class_balanced_sample_probs, steps_per_epoch

if typing.TYPE_CHECKING:
    import tensorflow as tf

TFDS_TEST_SPLITS = {"i_naturalist2018": "validation"}
RRC_AREA_RANGE = (0.08, 1.0)
RRC_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
RRC_MAX_ATTEMPTS = 10
TEST_RESIZE_RATIO = 256 / 224  # resize 256, centre-crop 224, scaled to other sizes.
LABEL_READ_CHUNK = 4096  # records per task when reading a tfds split's labels with a thread pool.
LABEL_READ_THREADS = 16
# Independent random streams derived from the run's seed.
ORDER_STREAM, BALANCED_STREAM, AUGMENT_STREAM = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class FileImages:
    """Encoded images as files (local or gs://): image i is `paths[i]`."""

    paths: np.ndarray  # str (N,)

    def read(self, index: "tf.Tensor") -> "tf.Tensor":
        """tf.string scalar: the encoded bytes of image `index` (a tf int64 scalar), inside tf.data."""
        tf = _tensorflow()
        return tf.io.read_file(tf.gather(self.paths, index))


@dataclasses.dataclass(frozen=True)
class RecordImages:
    """Encoded images inside a TFDS random-access data source (image decoding skipped): image i is record i."""

    source: Sequence  # record i -> dict with the encoded image bytes under `image_key`.
    image_key: str

    def read(self, index: "tf.Tensor") -> "tf.Tensor":
        """tf.string scalar: the encoded bytes of record `index` (a tf int64 scalar), inside tf.data."""
        tf = _tensorflow()
        encoded = tf.numpy_function(lambda i: self.source[int(i)][self.image_key], [index], tf.string,
                                    stateful=False)
        return tf.ensure_shape(encoded, [])


@dataclasses.dataclass(frozen=True)
class StreamingData:
    """A long-tailed training split and a test split, read from disk batch by batch.

    `train_images` and `test_images` hold every image of the source's splits, indexed by id; the training
    examples are `train_ids` (with labels `train_labels`), the test examples all of `test_images`.
    """

    class_names: tuple[str, ...]
    class_counts: np.ndarray  # (K,) training images per class (after any long-tailed selection).
    source_class_counts: np.ndarray  # (K,) training images per class in the source.
    train_ids: np.ndarray  # int64 (N,): ids of the training images used, in the source's id order.
    train_labels: np.ndarray  # int32 (N,)
    test_labels: np.ndarray  # int32 (M,)
    train_images: FileImages | RecordImages
    test_images: FileImages | RecordImages
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units.
    std: tuple[float, ...]
    image_size: int
    channels: int
    augment: bool  # False: training images get the test transform.
    flip: bool
    color_jitter: float  # 0 = off.

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_test(self) -> int:
        return len(self.test_labels)

    def train_batches(self, *, batch_size: int, seed: int, start_step: int, balanced_from_step: int | None,
                      balanced_class_weights: np.ndarray | None = None, process_index: int = 0,
                      process_count: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Endless (uint8 images (b, S, S, C), int32 labels (b,)) from `start_step` on; b = batch_size / processes.

        Each process decodes only its own slice of every global batch; see the module docstring for the order.
        """
        tf = _tensorflow()
        share = process_batch_size(batch_size, process_index, process_count)
        mine = slice(process_index * share, (process_index + 1) * share)
        plan = global_train_batches(self.train_labels, self.num_classes, batch_size=batch_size, seed=seed,
                                    start_step=start_step, balanced_from_step=balanced_from_step,
                                    balanced_class_weights=balanced_class_weights)

        def process_share():  # Runs once: the returned iterator is the dataset's only pass.
            for positions, seeds in plan:
                positions, seeds = positions[mine], seeds[mine]
                yield self.train_ids[positions], self.train_labels[positions], seeds

        def load(image_id, label, example_seed):
            encoded = self.train_images.read(image_id)
            if not self.augment:
                return decode_center_crop(encoded, size=self.image_size, channels=self.channels), label
            return decode_random_resized_crop(encoded, example_seed, size=self.image_size, channels=self.channels,
                                              flip=self.flip, color_jitter=self.color_jitter), label

        signature = (tf.TensorSpec((share,), tf.int64), tf.TensorSpec((share,), tf.int32),
                     tf.TensorSpec((share, 2), tf.int64))
        return _decoded_batches(tf.data.Dataset.from_generator(process_share, output_signature=signature),
                                load, share)

    def test_batches(self, *, batch_size: int, process_index: int = 0, process_count: int = 1
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(uint8 images, int32 labels, bool mask) of this process's slice of each global test batch, in order.

        The last global batch is padded (zero images, label 0, mask False), so every test example is seen
        exactly once over all processes.
        """
        tf = _tensorflow()
        share = process_batch_size(batch_size, process_index, process_count)
        size, channels = self.image_size, self.channels

        def process_share():
            for positions, valid in padded_test_positions(self.num_test, batch_size=batch_size,
                                                          process_index=process_index, process_count=process_count):
                yield positions, np.where(valid, self.test_labels[positions], 0).astype(np.int32), valid

        def load(image_id, label, valid):
            image = tf.cond(valid,
                            lambda: decode_center_crop(self.test_images.read(image_id), size=size, channels=channels),
                            lambda: tf.zeros((size, size, channels), tf.uint8))
            return image, label, valid

        signature = (tf.TensorSpec((share,), tf.int64), tf.TensorSpec((share,), tf.int32),
                     tf.TensorSpec((share,), tf.bool))
        return _decoded_batches(tf.data.Dataset.from_generator(process_share, output_signature=signature),
                                load, share)


def global_train_batches(labels: np.ndarray, num_classes: int, *, batch_size: int, seed: int, start_step: int,
                         balanced_from_step: int | None, balanced_class_weights: np.ndarray | None = None,
                         ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (example positions (B,), int64 augmentation seeds (B, 2)) of the global batches from `start_step`.

    Numpy only, so the order is cheap to compute and test: before `balanced_from_step`, epoch e is a
    permutation seeded by (seed, e); from it on, each position draws a class c with probability proportional
    to n_c * balanced_class_weights[c], then an example of that class uniformly: P(example) is proportional
    to its class's weight, as in the in-memory pipeline. The weights are required when `balanced_from_step`
    is set (`losses.base.sampling_class_weights` gives the configured ones).
    """
    if start_step < 0:
        raise ValueError(f"start_step={start_step}; allowed: start_step >= 0.")
    labels = np.asarray(labels)
    batches_per_epoch = steps_per_epoch(len(labels), batch_size)  # Checked here, not at the first batch.
    class_probs = None
    if balanced_from_step is not None:
        class_probs = _balanced_class_probs(labels, num_classes, balanced_class_weights)
    return _global_batches(labels, num_classes, batches_per_epoch, batch_size=batch_size, seed=seed,
                           start_step=start_step, balanced_from_step=balanced_from_step, class_probs=class_probs)


def _balanced_class_probs(labels: np.ndarray, num_classes: int, class_weights: np.ndarray | None) -> np.ndarray:
    """P(class c) = n_c w_c / sum_k n_k w_k: the class shares of the in-memory pipeline's draw, P(example)
    proportional to w_c (`class_balanced_sample_probs`, the one rule), summed over each class's examples."""
    if class_weights is None:
        raise ValueError("balanced_from_step is set but balanced_class_weights is None; allowed: per-class "
                         "sampling weights (K,), e.g. losses.base.sampling_class_weights(config.loss, counts)")
    if np.shape(class_weights) != (num_classes,):
        raise ValueError(f"balanced_class_weights has shape {np.shape(class_weights)}; allowed: ({num_classes},), "
                         "one weight per class")
    return np.bincount(labels, weights=class_balanced_sample_probs(labels, class_weights), minlength=num_classes)


def _global_batches(labels: np.ndarray, num_classes: int, batches_per_epoch: int, *, batch_size: int, seed: int,
                    start_step: int, balanced_from_step: int | None,
                    class_probs: np.ndarray | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    by_class = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=num_classes)
    class_starts = np.cumsum(counts) - counts
    epoch, permutation = None, None
    for step in itertools.count(start_step):
        if balanced_from_step is not None and step >= balanced_from_step:
            rng = np.random.default_rng((seed, BALANCED_STREAM, step))
            classes = rng.choice(num_classes, size=batch_size, p=class_probs)
            positions = by_class[class_starts[classes] + rng.integers(counts[classes])]
        else:
            if step // batches_per_epoch != epoch:
                epoch = step // batches_per_epoch
                permutation = np.random.default_rng((seed, ORDER_STREAM, epoch)).permutation(len(labels))
            start = (step % batches_per_epoch) * batch_size
            positions = permutation[start:start + batch_size]
        seeds = np.random.default_rng((seed, AUGMENT_STREAM, step)).integers(2**62, size=(batch_size, 2))
        yield positions, seeds


def random_crop_window(image_shape: "tf.Tensor", seed: "tf.Tensor") -> tuple["tf.Tensor", "tf.Tensor"]:
    """(begin (y, x), size (h, w)) int32 of a RandomResizedCrop window for an image of shape (H, W, C)."""
    tf = _tensorflow()
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed, min_object_covered=0.0,
        aspect_ratio_range=RRC_ASPECT_RATIO_RANGE, area_range=RRC_AREA_RANGE, max_attempts=RRC_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True)
    return begin[:2], size[:2]


def decode_random_resized_crop(encoded: "tf.Tensor", seed: "tf.Tensor", *, size: int, channels: int, flip: bool,
                               color_jitter: float) -> "tf.Tensor":
    """Training transform of one encoded image: uint8 (size, size, channels). `seed`: int64 (2,), stateless."""
    tf = _tensorflow()
    crop_seed, flip_seed, jitter_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=3))

    def jpeg():
        begin, extent = random_crop_window(tf.image.extract_jpeg_shape(encoded), crop_seed)
        return tf.io.decode_and_crop_jpeg(encoded, tf.concat([begin, extent], 0), channels=channels)

    def other_format():
        image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
        begin, extent = random_crop_window(tf.shape(image), crop_seed)
        return tf.slice(image, tf.concat([begin, [0]], 0), tf.concat([extent, [-1]], 0))

    crop = tf.cond(tf.io.is_jpeg(encoded), jpeg, other_format)
    image = tf.image.resize(crop, (size, size), method="bilinear", antialias=True) / 255.0
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if color_jitter:
        image = _color_jitter(image, jitter_seed, color_jitter, channels)
    return _to_uint8(image * 255.0, size, channels)


def decode_center_crop(encoded: "tf.Tensor", *, size: int, channels: int) -> "tf.Tensor":
    """Test transform of one encoded image: shorter side to round(size * 256 / 224), centre crop, uint8."""
    tf = _tensorflow()
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    resize_to = round(size * TEST_RESIZE_RATIO)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    shorter = tf.minimum(height, width)
    new_height, new_width = height * resize_to // shorter, width * resize_to // shorter
    image = tf.image.resize(image, tf.stack([new_height, new_width]), method="bilinear", antialias=True)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return _to_uint8(image[top:top + size, left:left + size], size, channels)


def load_streaming_data(data_config) -> StreamingData:
    """Lists the source named by `data_config.source`, selects the long-tailed training subset, checks files."""
    registry.validate_data_config(data_config)
    kind, argument = registry.parse_source(data_config.source, "stream")
    if kind == "folder":
        source = _folder_source(argument)
    elif kind == "tfds":
        source = _tfds_source(argument, data_config.data_dir)
    else:
        source = _list_source(kind, argument, data_config.data_dir)
    num_classes = len(source.class_names)
    source_class_counts = np.bincount(source.train_labels, minlength=num_classes)
    train_ids = longtail.training_subset(source.train_labels, source.class_names, data_config)
    train_labels = source.train_labels[train_ids].astype(np.int32)
    logging.info("Streaming %s: %d of %d training images in %d classes, %d test images", data_config.source,
                 len(train_ids), len(source.train_labels), num_classes, len(source.test_labels))
    return StreamingData(
        class_names=source.class_names,
        class_counts=np.bincount(train_labels, minlength=num_classes),
        source_class_counts=source_class_counts,
        train_ids=train_ids,
        train_labels=train_labels,
        test_labels=source.test_labels.astype(np.int32),
        train_images=source.train_images,
        test_images=source.test_images,
        mean=tuple(map(float, data_config.mean)),
        std=tuple(map(float, data_config.std)),
        image_size=data_config.image_size,
        channels=data_config.channels,
        augment=data_config.augment,
        flip=data_config.flip,
        color_jitter=float(data_config.color_jitter),
    )


class _Source(typing.NamedTuple):
    """A source before the training subset is selected: labels and images of both splits, by id."""

    class_names: tuple[str, ...]
    train_labels: np.ndarray
    train_images: FileImages | RecordImages
    test_labels: np.ndarray
    test_images: FileImages | RecordImages


def _folder_source(root: str) -> _Source:
    """PATH/{train,test}/<class>/<image> through tfds's ImageFolder, in the in-memory folder source's id order."""
    import tensorflow_datasets as tfds

    if not _tensorflow().io.gfile.isdir(root):
        raise ValueError(f"image folder {root} does not exist; expected PATH/{{train,test}}/<class>/<image>.")
    builder = tfds.ImageFolder(root)
    class_names = tuple(builder.info.features["label"].names)
    class_index = {name: label for label, name in enumerate(class_names)}
    splits = {}
    for split in ("train", "test"):
        # ImageFolder has no public listing; its examples are (path, class name) in a fixed shuffle.
        examples = builder._split_examples.get(split, [])  # noqa: SLF001
        if not examples:
            raise ValueError(f"image folder {root}/{split} has no .jpg, .jpeg or .png images; expected "
                             f"PATH/{{train,test}}/<class>/<image>.")
        examples = sorted(examples, key=lambda example: (class_index[example.label], example.image_path))
        labels = np.array([class_index[example.label] for example in examples], dtype=np.int64)
        missing = sorted(set(class_names) - {example.label for example in examples})
        if missing:
            raise ValueError(f"image folder {root}/{split} has no images of class(es) {missing}; both splits "
                             f"must have the same class folders, each with images.")
        splits[split] = labels, FileImages(np.array([example.image_path for example in examples]))
    return _Source(class_names, *splits["train"], *splits["test"])


def _tfds_source(name: str, data_dir: str) -> _Source:
    """A prepared TFDS dataset read by index (array_record), with its labels read once."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir or None)
    if builder.info.supervised_keys is None:
        raise ValueError(f"data.source='tfds:{name}' has no (image, label) supervised keys; allowed: image "
                         f"classification datasets such as i_naturalist2018.")
    image_key, label_key = builder.info.supervised_keys
    splits = {}
    for split in ("train", TFDS_TEST_SPLITS.get(name, "test")):
        try:
            records = builder.as_data_source(split=split, decoders={image_key: tfds.decode.SkipDecoding()})
        except (NotImplementedError, ValueError) as error:
            raise ValueError(f"data.source='tfds:{name}' split {split!r} cannot be read by index: streaming needs "
                             f"random access, i.e. the dataset prepared as array_record (`tfds build {name} "
                             f"--file_format=array_record`, or `tfds convert_format` of a prepared copy). "
                             f"TFDS said: {error}") from error
        splits[split] = _read_labels(records, label_key), RecordImages(records, image_key)
    train, test = splits.values()
    return _Source(tuple(builder.info.features[label_key].names), *train, *test)


def _read_labels(records: Sequence, label_key: str) -> np.ndarray:
    """The label of every record, with a thread pool (the reads wait on storage)."""
    import concurrent.futures

    def read_chunk(start: int) -> list[int]:
        return [int(records[i][label_key]) for i in range(start, min(start + LABEL_READ_CHUNK, len(records)))]

    with concurrent.futures.ThreadPoolExecutor(LABEL_READ_THREADS) as pool:
        chunks = pool.map(read_chunk, range(0, len(records), LABEL_READ_CHUNK))
        return np.fromiter(itertools.chain.from_iterable(chunks), dtype=np.int64, count=len(records))


def _list_source(kind: str, lists_dir: str, image_root: str) -> _Source:
    """The OLTR lists over an image tree: ids are positions in the train list."""
    if not image_root:
        raise ValueError(f"data.data_dir is empty; data.source '{kind}:...' needs it set to the image tree the "
                         f"lists' paths are relative to (ImageNet-2012 for imagenet_lt, Places365 for places_lt).")
    lists = lt_lists.read_lt_lists(kind, lists_dir)
    images = {}
    for split, image_list in (("train", lists.train), ("test", lists.test)):
        lt_lists.check_images_exist(image_list, image_root, lt_lists.list_file_names(kind)[split])
        images[split] = FileImages(np.array([f"{image_root.rstrip('/')}/{path}" for path in image_list.paths]))
    return _Source(lists.class_names, lists.train.labels, images["train"], lists.test.labels, images["test"])


def _decoded_batches(plan: "tf.data.Dataset", load, share: int) -> Iterator:
    """Flattens per-process index batches, decodes examples in parallel (order kept) and re-batches them."""
    tf = _tensorflow()
    dataset = plan.unbatch().map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(share, drop_remainder=True).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def _color_jitter(image, seed, strength: float, channels: int):
    """Brightness, contrast and (for RGB) saturation scaled by factors drawn from [1 - s, 1 + s]; [0, 1] units."""
    tf = _tensorflow()
    brightness_seed, contrast_seed, saturation_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    image = image * tf.random.stateless_uniform([], brightness_seed, low, high)
    image = tf.image.adjust_contrast(image, tf.random.stateless_uniform([], contrast_seed, low, high))
    if channels == 3:
        image = tf.image.adjust_saturation(image, tf.random.stateless_uniform([], saturation_seed, low, high))
    return tf.clip_by_value(image, 0.0, 1.0)


def _to_uint8(image, size: int, channels: int):
    tf = _tensorflow()
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(image, (size, size, channels))


def _tensorflow():
    """TensorFlow for the input pipeline only; it must not take the accelerators JAX uses."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow's devices are initialised already: an earlier call made the setting.
        pass
    return tf
