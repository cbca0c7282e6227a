"""Input-pipeline throughput per CPU core: the in-memory CIFAR path against the streaming JPEG path.

(a) in memory: `device_pipeline.augment_batch` (random crop with 4-pixel padding, flip) and `normalize`,
    jitted, on a batch of 128 uint8 32x32 images already on the device (the CIFAR-LT training path);
(b) streaming: `StreamingData.train_batches` over synthetic 400x300 JPEGs written to a temporary image
    folder: file read, JPEG decode fused with RandomResizedCrop, resize to 224, flip (the ImageNet-scale path).

Each figure is the median over repeats of timed batches after a warm-up, divided by the CPU cores this
process may use (both paths spread over all of them). Run from the repository root:
    .venv/bin/python bench/input_pipeline.py [--repeats 5 --images 500]
"""

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from safa_jax.cpu.process_settings import apply_cpu_process_settings  # noqa: E402

apply_cpu_process_settings()  # before JAX starts
import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import machine_description  # noqa: E402
from configs import common, large_scale  # noqa: E402
from safa_jax.data import device_pipeline  # noqa: E402
from safa_jax.data.streaming import load_streaming_data  # noqa: E402

CIFAR_BATCH = 128
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
STREAM_BATCH = 100
JPEG_SIZE = (400, 300)  # width, height
NUM_CLASSES = 5


def in_memory_images_per_second(repeats: int, steps: int) -> list[float]:
    """Images/s of the jitted augment + normalise step, one figure per repeat of `steps` batches."""
    images = jax.device_put(np.random.default_rng(0).integers(0, 256, (CIFAR_BATCH, 32, 32, 3), dtype=np.uint8))

    @jax.jit
    def augment(batch, key):
        return device_pipeline.normalize(device_pipeline.augment_batch(batch, key, padding=4, flip=True),
                                         CIFAR_MEAN, CIFAR_STD)

    key = jax.random.key(0)
    augment(images, key).block_until_ready()  # compile
    rates = []
    for repeat in range(repeats):
        start = time.perf_counter()
        for step in range(steps):
            out = augment(images, jax.random.fold_in(key, repeat * steps + step))
        out.block_until_ready()
        rates.append(steps * CIFAR_BATCH / (time.perf_counter() - start))
    return rates


def write_jpeg_tree(root: pathlib.Path, num_images: int) -> None:
    """Photo-like JPEGs (smooth colour fields plus noise, quality 90) in root/{train,test}/<class>/."""
    rng = np.random.default_rng(0)
    width, height = JPEG_SIZE
    for index in range(num_images):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize(JPEG_SIZE, Image.Resampling.BICUBIC), np.int16)
        pixels = np.clip(smooth + rng.integers(-12, 13, (height, width, 3)), 0, 255).astype(np.uint8)
        split = "test" if index < NUM_CLASSES else "train"
        folder = root / split / f"class{index % NUM_CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{index:05d}.jpg", quality=90)


def streaming_images_per_second(root: pathlib.Path, repeats: int, batches: int) -> list[float]:
    """Images/s of the streaming training iterator at 224 px, one figure per repeat of `batches` batches."""
    config = common.get_config().data
    config.update(dict(source=f"folder:{root}", pipeline="stream", subsample=False, image_size=224,
                       mean=large_scale.IMAGENET_MEAN, std=large_scale.IMAGENET_STD))
    data = load_streaming_data(config)
    iterator = data.train_batches(batch_size=STREAM_BATCH, seed=0, start_step=0, balanced_from_step=None)
    next(iterator)  # start-up: tracing, thread pools, first fill of the prefetch buffer.
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        rates.append(batches * STREAM_BATCH / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=500, help="synthetic JPEGs to write for the streaming path")
    args = parser.parse_args()
    import tensorflow as tf

    cores = len(os.sched_getaffinity(0))
    print(machine_description())
    print(f"TensorFlow {tf.__version__}; cores usable by this process: {cores}")

    rates = in_memory_images_per_second(args.repeats, steps=50)
    median = statistics.median(rates)
    print(f"(a) in-memory CIFAR augment + normalise (jit, batch {CIFAR_BATCH}, 32 px): "
          f"{median:,.0f} images/s = {median / cores:,.0f} images/s per core "
          f"(median of {args.repeats}; range {min(rates):,.0f}..{max(rates):,.0f})")

    with tempfile.TemporaryDirectory() as folder:
        root = pathlib.Path(folder)
        write_jpeg_tree(root, args.images)
        rates = streaming_images_per_second(root, args.repeats, batches=max(1, args.images // STREAM_BATCH))
    median = statistics.median(rates)
    width, height = JPEG_SIZE
    print(f"(b) streaming JPEG read + decode/RandomResizedCrop + resize 224 + flip ({width}x{height} JPEGs, "
          f"batch {STREAM_BATCH}): {median:,.0f} images/s = {median / cores:,.1f} images/s per core "
          f"(median of {args.repeats}; range {min(rates):,.0f}..{max(rates):,.0f})")


if __name__ == "__main__":
    main()
