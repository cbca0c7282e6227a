"""Long-tailed subsampling of a balanced training split, as the CIFAR-LT reference code does it.

Class i (0-based) of K keeps `n_i = int(n_max * (1/rho) ** (i / (K - 1)))` images (the LDAM-DRW code's profile). Which
images it keeps is a choice that changes results by a fraction of a point, so all three published or
common variants are here and the chosen indices are returned for the run to record:

- "ldam": the LDAM-DRW code (`IMBALANCECIFAR10.gen_imbalanced_data`): `np.random.seed(seed)` once, then
  per class in order `np.random.shuffle` that class's indices and keep the first n_i. A private
  `np.random.RandomState(seed)` gives the same stream without resetting the caller's global RNG.
- "first": the RSG code: the first n_i images of each class in the given order.
- "random": a seeded choice without replacement per class from numpy's modern Generator.

Numpy only: this runs on the host before anything is sent to a device.
"""

import logging

import numpy as np

SELECTIONS = ("ldam", "first", "random")

MANY_SHOT_ABOVE = 100  # many-shot: more than 100 training images.
FEW_SHOT_BELOW = 20  # few-shot: fewer than 20; medium-shot is 20..100 inclusive.
ALREADY_LONG_TAILED = 2.0  # a source whose largest class is over 2x its smallest is warned about before subsampling.


def longtail_class_counts(n_max: int, num_classes: int, imbalance_factor: float) -> np.ndarray:
    """Images kept per class under the exponential profile with n_max / n_min = imbalance_factor."""
    if imbalance_factor < 1:
        raise ValueError(f"imbalance_factor={imbalance_factor} is below 1; allowed: any value >= 1 "
                         f"(1 keeps every class at n_max={n_max}).")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}; a long-tailed profile needs at least 2 classes.")
    if n_max < 1:
        raise ValueError(f"n_max={n_max}; the largest class must keep at least 1 image.")
    counts = np.array([int(n_max * (1.0 / imbalance_factor) ** (i / (num_classes - 1)))
                       for i in range(num_classes)], dtype=np.int64)
    if counts[-1] < 1:
        raise ValueError(
            f"imbalance_factor={imbalance_factor} leaves the last class with 0 of n_max={n_max} images; "
            f"allowed: imbalance_factor <= n_max={n_max}.")
    return counts


def validate_subsampling(data_config) -> None:
    """Checks of `data.imbalance_factor` and `data.selection` shared by the in-memory and streamed sources."""
    if data_config.imbalance_factor < 1:
        raise ValueError(f"data.imbalance_factor={data_config.imbalance_factor} is below 1; "
                         f"allowed: any value >= 1.")
    if data_config.selection not in SELECTIONS:
        raise ValueError(f"data.selection={data_config.selection!r} is unknown; "
                         f"allowed: {', '.join(SELECTIONS)}.")


def training_subset(labels: np.ndarray, class_names: tuple[str, ...], data_config) -> np.ndarray:
    """Ids of the training subset: the long-tailed selection when `data_config.subsample`, else every image.

    n_max is the smallest class count of the source's train split (the balanced size for CIFAR).
    """
    if not data_config.subsample:
        return np.arange(len(labels), dtype=np.int64)
    class_counts = np.bincount(labels, minlength=len(class_names))
    if class_counts.min() == 0:
        empty = int(class_counts.argmin())
        raise ValueError(f"class {empty} ({class_names[empty]!r}) of data.source={data_config.source!r} has no "
                         f"training images; subsampling needs every class (or data.subsample=False).")
    counts = longtail_class_counts(int(class_counts.min()), len(class_names), data_config.imbalance_factor)
    if class_counts.max() > ALREADY_LONG_TAILED * class_counts.min():
        logging.warning(
            "data.source=%r is already long-tailed (%d to %d training images per class); subsampling it to "
            "data.imbalance_factor=%g from the smallest class keeps %d of its %d images. "
            "data.subsample=False trains on it as it is.", data_config.source, class_counts.min(),
            class_counts.max(), data_config.imbalance_factor, int(counts.sum()), len(labels))
    return select_longtail(labels, counts, data_config.selection, data_config.selection_seed)


def select_longtail(labels: np.ndarray, counts: np.ndarray, selection: str, seed: int) -> np.ndarray:
    """Indices into `labels` that keep counts[c] images of class c, grouped by class, in selection order."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection={selection!r} is unknown; allowed: {', '.join(SELECTIONS)}.")
    labels = np.asarray(labels)
    counts = np.asarray(counts)
    available = np.bincount(labels, minlength=len(counts))
    if len(available) > len(counts):
        raise ValueError(f"labels go up to {len(available) - 1} but counts has only {len(counts)} classes.")
    short = np.flatnonzero(available < counts)
    if short.size:
        c = short[0]
        raise ValueError(f"class {c} has {available[c]} images but {counts[c]} were asked for; "
                         f"allowed: at most the class's own count.")
    legacy_rng = np.random.RandomState(seed)  # One stream for all classes, as np.random.seed(seed) once.
    rng = np.random.default_rng(seed)
    kept = []
    for c, n_keep in enumerate(counts):
        class_indices = np.flatnonzero(labels == c)
        if selection == "ldam":
            legacy_rng.shuffle(class_indices)
            kept.append(class_indices[:n_keep])
        elif selection == "first":
            kept.append(class_indices[:n_keep])
        else:
            kept.append(rng.choice(class_indices, size=n_keep, replace=False))
    return np.concatenate(kept).astype(np.int64)


def shot_buckets(class_counts: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean class masks for the many (> 100) / medium (20..100) / few (< 20) shot report."""
    class_counts = np.asarray(class_counts)
    return {
        "many": class_counts > MANY_SHOT_ABOVE,
        "medium": (class_counts >= FEW_SHOT_BELOW) & (class_counts <= MANY_SHOT_ABOVE),
        "few": class_counts < FEW_SHOT_BELOW,
    }
