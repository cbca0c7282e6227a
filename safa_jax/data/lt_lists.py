"""The published list files that define ImageNet-LT and Places-LT (Liu et al., OLTR, CVPR 2019).

Each line of a list is `<path relative to the image tree> <integer label>`, for example
`train/n01440764/n01440764_10026.JPEG 0` (ImageNet_LT_train.txt, over an ImageNet-2012 tree) or
`data_256/a/airfield/00000001.jpg 0` (Places_LT_train.txt, over a Places365 tree). The lists are the
datasets: 1,000 classes and 115,846 training images (1,280 down to 5 per class) for ImageNet-LT; 365
classes and 62,500 training images (4,980 down to 5) for Places-LT. Both are long-tailed as published.

The number of classes is read from the train list (largest label + 1), and every class must have at least
one training image, so a truncated or mismatched list fails here rather than as a shape error in training.
Class names are not in the lists: a class is named by the folder of its first training image, without the
list's top folder ("n01440764"; "a/airfield"). The image root is read only to check that files exist.
"""

import dataclasses
import re

import numpy as np

LIST_PREFIXES = {"imagenet_lt": "ImageNet_LT", "places_lt": "Places_LT"}
LIST_SPLITS = ("train", "test")
LIST_LINE = re.compile(r"(?P<path>.*\S)\s+(?P<label>[+-]?\d+)\s*")
EXISTENCE_SAMPLES = 8  # files per split checked up front (evenly spaced); a missing one fails in seconds.


@dataclasses.dataclass(frozen=True)
class ImageList:
    """One parsed list: image paths relative to the image tree, and their labels, in the file's order."""

    paths: tuple[str, ...]
    labels: np.ndarray  # int64 (N,)
    line_numbers: np.ndarray  # (N,) 1-based line of each entry in its file, for error messages.


@dataclasses.dataclass(frozen=True)
class LongTailedLists:
    """The train and test lists of one dataset, with the classes the train list defines."""

    train: ImageList
    test: ImageList
    class_names: tuple[str, ...]


def list_file_names(dataset: str) -> dict[str, str]:
    """{"train": "ImageNet_LT_train.txt", "test": "ImageNet_LT_test.txt"} for dataset "imagenet_lt", and so on."""
    if dataset not in LIST_PREFIXES:
        raise ValueError(f"list dataset {dataset!r} is unknown; allowed: {', '.join(LIST_PREFIXES)}.")
    return {split: f"{LIST_PREFIXES[dataset]}_{split}.txt" for split in LIST_SPLITS}


def parse_image_list(text: str, list_name: str) -> ImageList:
    """Parses `<relative path> <label>` lines; `list_name` names the file in errors. Blank lines are skipped."""
    paths, labels, line_numbers = [], [], []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = LIST_LINE.fullmatch(line.strip())
        if match is None:
            raise ValueError(f"{list_name} line {line_number}: {line.strip()!r} is not "
                             f"'<relative image path> <integer label>'.")
        label = int(match["label"])
        if label < 0:
            raise ValueError(f"{list_name} line {line_number}: label {label} is out of range; "
                             f"allowed: labels >= 0.")
        paths.append(match["path"].lstrip("/"))
        labels.append(label)
        line_numbers.append(line_number)
    if not paths:
        raise ValueError(f"{list_name} has no image lines; expected '<relative image path> <integer label>' lines.")
    return ImageList(paths=tuple(paths), labels=np.asarray(labels, dtype=np.int64),
                     line_numbers=np.asarray(line_numbers))


def check_against_train(train: ImageList, test: ImageList, train_name: str, test_name: str) -> None:
    """Checks that the train list's K = largest label + 1 classes all have images and test labels lie in 0..K-1."""
    num_classes = int(train.labels.max()) + 1
    empty = np.flatnonzero(np.bincount(train.labels, minlength=num_classes) == 0)
    if empty.size:
        raise ValueError(f"{train_name} has no image of class(es) {empty[:10].tolist()} but labels up to "
                         f"{num_classes - 1}; allowed: labels 0..K-1 with every class present.")
    outside = np.flatnonzero(test.labels >= num_classes)
    if outside.size:
        first = outside[0]
        raise ValueError(f"{test_name} line {test.line_numbers[first]}: label {test.labels[first]} is out of range; "
                         f"allowed: 0..{num_classes - 1} (the classes of {train_name}).")


def class_names_from_paths(image_list: ImageList) -> tuple[str, ...]:
    """Names of classes 0..K-1 (every one present, as `check_against_train` ensures): the folder of each class's
    first image without the list's top folder ("train/n01440764/x.JPEG" -> "n01440764")."""
    _, first = np.unique(image_list.labels, return_index=True)
    names = []
    for label, index in enumerate(first):
        folders = image_list.paths[index].split("/")[:-1]
        names.append("/".join(folders[1:] if len(folders) > 1 else folders) or str(label))
    return tuple(names)


def read_lt_lists(dataset: str, lists_dir: str) -> LongTailedLists:
    """Reads and checks the train and test lists of `dataset` ("imagenet_lt" or "places_lt") in `lists_dir`
    (a local folder or gs:// URL)."""
    import tensorflow as tf

    file_names = list_file_names(dataset)
    paths = {split: f"{lists_dir.rstrip('/')}/{file_name}" for split, file_name in file_names.items()}
    parsed = {}
    for split, path in paths.items():
        if not tf.io.gfile.exists(path):
            raise ValueError(f"list file {path} does not exist; {dataset} expects "
                             f"{' and '.join(file_names.values())} in {lists_dir}.")
        with tf.io.gfile.GFile(path) as handle:
            parsed[split] = parse_image_list(handle.read(), path)
    check_against_train(parsed["train"], parsed["test"], paths["train"], paths["test"])
    return LongTailedLists(train=parsed["train"], test=parsed["test"],
                           class_names=class_names_from_paths(parsed["train"]))


def check_images_exist(image_list: ImageList, image_root: str, list_name: str) -> None:
    """Checks an evenly spaced sample of the list's files under `image_root`; a mismatch fails before training."""
    import tensorflow as tf

    sample = np.unique(np.linspace(0, len(image_list.paths) - 1, EXISTENCE_SAMPLES).astype(int))
    for index in sample:
        path = f"{image_root.rstrip('/')}/{image_list.paths[index]}"
        if not tf.io.gfile.exists(path):
            raise ValueError(f"image file {path} (line {image_list.line_numbers[index]} of "
                             f"{list_name}) does not exist; data.data_dir={image_root!r} must be the image tree "
                             f"the list's paths are relative to.")

