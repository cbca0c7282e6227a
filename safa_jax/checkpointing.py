"""Orbax checkpoints of the train state plus JSON metadata (config, class counts, subset ids).

Restoring goes into an abstract state that carries the current mesh's shardings, so a checkpoint
written on 8 devices loads on 1 and the reverse. Metadata is read first, so a checkpoint of another
model is refused with a clear message before Orbax sees mismatched shapes.
"""

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

# Config fields that fix the shapes of the saved state: they must match to restore. Fields that only change
# how a step computes (model.compute_dtype) or where training started (model.init_checkpoint) are not
# compared, so a run can resume or be evaluated with another setting.
SHAPE_DEFINING_FIELDS = ("model.name", "model.width", "model.blocks_per_stage", "model.head", "safa.enabled",
                         "safa.stage", "safa.q_width", "safa.kernel_size", "safa.delta_channels", "data.channels")
# Shape-defining fields added after checkpoints were written: a checkpoint without the field had this value.
ADDED_FIELD_DEFAULTS = {"safa.delta_channels": -1}


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by a different model or dataset than the one asked for."""


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
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)), force=True)

    def metadata(self, step: int) -> dict[str, Any]:
        self._require(step)
        restored = self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
        return dict(restored["metadata"])

    def restore(self, step: int, abstract_state) -> Any:
        """Restores the state at `step` into the shapes and shardings of `abstract_state`."""
        self._require(step)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
        return restored["state"]

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
    return fields


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
