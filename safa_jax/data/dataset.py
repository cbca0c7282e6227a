"""What every pipeline's loader returns: `Dataset`, the one interface the trainer, evaluation and reports read.

The in-memory `sources.LongTailedData` and the streamed `streaming.StreamingData` both implement it. Test
batches come the same way from both (`test_batches`: this process's slice of each padded global batch).
Training batches are each pipeline's own, because that is where they differ: in memory the devices hold
the split and the jitted step draws and augments its batch (`data/step_input.py`'s `InMemoryInput`), while
streamed data decodes each batch on the host (`StreamingData.train_batches`, fed by `StreamedInput`); the
class-balanced draw of both follows `losses.base.sampling_class_weights`.
"""

from collections.abc import Iterator
from typing import Protocol

import numpy as np


class Dataset(Protocol):
    class_names: tuple[str, ...]
    class_counts: np.ndarray  # (K,) training images per class, after any long-tailed selection
    source_class_counts: np.ndarray  # (K,) training images per class in the source
    train_ids: np.ndarray  # int64 (N,): each training image's id in the source's train split
    train_labels: np.ndarray  # int32 (N,)
    test_labels: np.ndarray  # int32 (M,)
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int: ...

    def test_batches(self, *, batch_size: int, process_index: int = 0, process_count: int = 1
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(uint8 images, int32 labels, bool mask) of this process's slice of each global test batch, in order;
        the last global batch padded (zero image, label 0, mask False), so each test image counts once."""
        ...


def process_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
    """The per-process share of a global batch, after checking the process coordinates."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} of process_count={process_count}; "
                         f"allowed: process_count >= 1 and 0 <= process_index < process_count.")
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(f"batch_size={batch_size} does not split over process_count={process_count}; "
                         f"allowed: a positive multiple of {process_count}.")
    return batch_size // process_count


def padded_test_positions(num_test: int, *, batch_size: int, process_index: int, process_count: int
                          ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(test positions, valid mask) of this process's slice of each global batch; padding points at position 0."""
    share = process_batch_size(batch_size, process_index, process_count)
    for start in range(0, num_test, batch_size):
        positions = np.arange(share) + start + process_index * share
        valid = positions < num_test
        yield np.where(valid, positions, 0), valid
