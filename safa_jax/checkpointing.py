"""Orbax checkpoints of the train state plus JSON metadata (config, class counts, subset ids).

Restoring goes into an abstract state that carries the current mesh's shardings, so a checkpoint
written on 8 devices loads on 1 and the reverse. Metadata is read first, so a checkpoint of another
model is refused with a clear message before Orbax sees mismatched shapes.
"""

import logging
import pathlib
import re
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

# Config fields that fix the shapes of the saved state: they must match to restore. Fields that only change
# how a step computes (model.compute_dtype) or where training started (model.init_checkpoint) are not
# compared, so a run can resume or be evaluated with another setting.
SHAPE_DEFINING_FIELDS = ("model.name", "model.width", "model.blocks_per_stage", "model.head", "method",
                         "safa.stage", "safa.q_width", "safa.kernel_size", "safa.delta_channels", "data.channels")
# Shape-defining fields added after checkpoints were written: a checkpoint without the field had this value.
ADDED_FIELD_DEFAULTS = {"safa.delta_channels": -1}


def _method_of_older_config(config_dict: dict[str, Any]) -> str:
    """`method` of a config written before the field existed, when `safa.enabled` chose between the two."""
    return "safa" if config_dict.get("safa", {}).get("enabled") else "plain"


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by a different model or dataset than the one asked for."""


class CheckpointCorruptError(ValueError):
    """A checkpoint's files cannot be read, or its arrays differ from the checksums recorded at save."""


def state_checksums(state) -> dict[str, int]:
    """CRC-32 of every array of `state`, by its path in the tree: recorded at save, verified at restore.

    Why: a few flipped bytes in an array file restore silently (a NaN or 7e37 among the weights).
    """
    host = jax.device_get(state)
    return {jax.tree_util.keystr(path): zlib.crc32(np.ascontiguousarray(leaf).tobytes())
            for path, leaf in jax.tree_util.tree_flatten_with_path(host)[0]}


def plain_path(keystr: str) -> str:
    """A tree path without what distinguishes a dataclass field from a dict key or an int key from a digit
    string (".params['stages'][0]" and "['params']['stages']['0']" both give "params/stages/0")."""
    return "/".join(part for part in re.split(r"[.\[\]'\"]+", keystr) if part)


class Checkpoints:
    """Periodic saves into `<workdir>/checkpoints`, restore of the latest or a named step."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int = 3):
        self.directory = pathlib.Path(workdir).resolve() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "metadata"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, metadata: dict[str, Any]) -> None:
        metadata = dict(metadata, checksums=state_checksums(state))
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)), force=True)

    def metadata(self, step: int) -> dict[str, Any]:
        self._require(step)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
            metadata = dict(restored["metadata"])
        except Exception as error:  # noqa: BLE001  (Orbax raises many kinds for unreadable files)
            raise CheckpointCorruptError(f"the metadata of checkpoint step {step} cannot be read "
                                         f"({self.directory / str(step) / 'metadata'}): {_first_line(error)}") from None
        if "config" not in metadata or "split" not in metadata:
            raise CheckpointCorruptError(f"the metadata of checkpoint step {step} "
                                         f"({self.directory / str(step) / 'metadata'}) lacks its config or split")
        return metadata

    def restore(self, step: int, abstract_state, checksums: dict[str, int] | None = None) -> Any:
        """Restores the state at `step` into the shapes and shardings of `abstract_state`, and verifies it against
        `checksums` (from the step's metadata; None for checkpoints written before checksums were recorded)."""
        self._require(step)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state)))["state"]
        except Exception as error:  # noqa: BLE001
            raise CheckpointCorruptError(f"checkpoint step {step} in {self.directory} cannot be read: "
                                         f"{_first_line(error)}") from None
        self._verify(step, restored, checksums)
        return restored

    def restore_arrays(self, step: int, checksums: dict[str, int] | None = None) -> dict[str, Any]:
        """The state at `step` as nested dicts of host arrays ("params", "batch_stats", ...), without a target:
        for reading another run's parts (`safa_jax.warm_start`). Verified against `checksums` as `restore`."""
        self._require(step)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
        except Exception as error:  # noqa: BLE001
            raise CheckpointCorruptError(f"checkpoint step {step} in {self.directory} cannot be read: "
                                         f"{_first_line(error)}") from None
        self._verify(step, restored, checksums)
        return restored

    def _verify(self, step: int, restored, checksums: dict[str, int] | None) -> None:
        """Raises CheckpointCorruptError where an array's CRC-32 differs from the one recorded at save.

        Paths are compared by `plain_path`: a TrainState restored as dicts has string keys
        ("['params']['stages']['0']") where the save recorded ".params['stages'][0]"."""
        if checksums is None:
            logging.info("Checkpoint step %d has no recorded checksums (written by an older version)", step)
            return
        recorded = {plain_path(path): crc for path, crc in checksums.items()}
        differing = [path for path, crc in state_checksums(restored).items() if recorded.get(plain_path(path)) != crc]
        if differing:
            raise CheckpointCorruptError(
                f"checkpoint step {step} in {self.directory} is corrupt: {len(differing)} arrays differ from "
                f"the checksums recorded when it was saved, first {differing[0]}")

    def wait(self) -> None:
        """Blocks until asynchronous saves are on disk (call before exit)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def _require(self, step: int) -> None:
        steps = self.all_steps()
        if step not in steps:
            raise FileNotFoundError(
                f"no checkpoint at step {step} in {self.directory}; available steps: {steps or 'none'}")


def abstract_like(state, sharding) -> Any:
    """Shape/dtype/sharding skeleton of `state`, to restore into."""
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), state)


def shape_fields(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The config values that must agree between a checkpoint and the config restoring it."""
    fields = {}
    for dotted in SHAPE_DEFINING_FIELDS:
        value = config_dict
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        fields[dotted] = ADDED_FIELD_DEFAULTS.get(dotted) if value is None else value
    if fields["method"] is None:
        fields["method"] = _method_of_older_config(config_dict)
    return fields


def check_compatible_before_building(saved_config: dict[str, Any], config_dict: dict[str, Any],
                                     where: pathlib.Path) -> None:
    """The same check on the fields a config fixes before any data or model exists ("auto" and -1 wait for
    `check_compatible`), so a mismatch is reported in seconds, not after the model is built."""
    saved, wanted = shape_fields(saved_config), shape_fields(config_dict)
    diffs = [f"{name}: checkpoint {saved[name]!r}, config {wanted[name]!r}" for name in wanted
             if wanted[name] not in ("auto", -1) and saved[name] != wanted[name]]
    if diffs:
        raise CheckpointMismatchError(
            f"the checkpoint in {where} was written by a different model or dataset:\n  " + "\n  ".join(diffs))


def check_compatible(saved_config: dict[str, Any], config_dict: dict[str, Any], num_classes: int,
                     saved_num_classes: int, where: pathlib.Path) -> None:
    """Raises CheckpointMismatchError naming every differing field."""
    saved, wanted = shape_fields(saved_config), shape_fields(config_dict)
    diffs = [f"{name}: checkpoint {saved[name]!r}, config {wanted[name]!r}"
             for name in wanted if saved[name] != wanted[name]]
    if saved_num_classes != num_classes:
        diffs.append(f"number of classes: checkpoint {saved_num_classes}, data {num_classes}")
    if diffs:
        raise CheckpointMismatchError(
            f"the checkpoint in {where} was written by a different model or dataset:\n  "
            + "\n  ".join(diffs))


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
