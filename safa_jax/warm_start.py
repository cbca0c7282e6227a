"""Starting a run from another run's trained backbone (`config.init_from=RUN`), for two-stage methods (cRT).

The backbone's parameters and BatchNorm statistics come from RUN's newest intact checkpoint, verified
against the checksums recorded when it was saved; a method that re-initialises the classifier keeps its
fresh head. The optimizer state, the step and any method modules of RUN are not taken: the new run starts
at step 0 with its own schedule.
"""

import logging
import pathlib
from typing import Any

import jax
import numpy as np

from safa_jax import checkpointing

PyTree = Any


def check_init_from(init_from: str) -> None:
    """One clear line, before anything is built, for a folder that holds no checkpoint."""
    if init_from and not (pathlib.Path(init_from) / "checkpoints").is_dir():
        raise ValueError(f"config.init_from={init_from!r} holds no checkpoints folder; allowed: the --workdir of a "
                         "trained run")


def backbone_from_run(init_from: str, params: PyTree, stats: PyTree, *, keep_classifier: bool,
                      ) -> tuple[PyTree, PyTree]:
    """(params, batch statistics) of the backbone: RUN's, with our freshly initialised head unless
    `keep_classifier`. Shapes must match ours array by array; a mismatch names the first differing array."""
    checkpoints = checkpointing.Checkpoints(init_from)
    try:
        step = checkpoints.latest_step()
        if step is None:
            raise ValueError(f"config.init_from={init_from!r}: {checkpoints.directory} has no checkpoint")
        saved = checkpoints.restore_arrays(step, checkpoints.metadata(step).get("checksums"))
    finally:
        checkpoints.close()
    params = _as_our_tree("params", saved["params"]["backbone"], params, init_from,
                          fresh=() if keep_classifier else ("head",))
    stats = _as_our_tree("batch_stats", saved["batch_stats"]["backbone"], stats, init_from, fresh=())
    logging.warning("Backbone from %s (step %d)%s", checkpoints.directory, step,
                    "" if keep_classifier else "; classifier freshly initialised")
    return params, stats


def _as_our_tree(name: str, theirs: PyTree, ours: PyTree, init_from: str, *, fresh: tuple[str, ...]) -> PyTree:
    """`theirs` (restored without a target: dicts with string keys) in the structure and dtypes of `ours`; the
    top-level parts named in `fresh` stay ours. A missing array or another shape names the first one."""
    by_path = {checkpointing.plain_path(jax.tree_util.keystr(path)): leaf
               for path, leaf in jax.tree_util.tree_flatten_with_path(theirs)[0]}
    ours_flat, treedef = jax.tree_util.tree_flatten_with_path(ours)
    leaves = []
    for path, leaf in ours_flat:
        key = checkpointing.plain_path(jax.tree_util.keystr(path))
        if key.split("/")[0] in fresh:
            leaves.append(leaf)
            continue
        loaded = by_path.get(key)
        if loaded is None or np.shape(loaded) != np.shape(leaf):
            raise ValueError(f"config.init_from={init_from!r}: its backbone {name}/{key} has shape "
                             f"{None if loaded is None else np.shape(loaded)}, this run's {np.shape(leaf)} "
                             "(None: absent); allowed: a run of the same model, width and class count")
        leaves.append(np.asarray(loaded, np.asarray(leaf).dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)
