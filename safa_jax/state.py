"""The training state as a plain pytree, and the bridge between it and NNX modules.

Parameters and batch statistics are kept as pure nested dicts of arrays: they checkpoint with Orbax as
they are, shard with one NamedSharding, and feed optax directly. An `NnxBridge` holds a module's graph
definition and rebuilds the module from such dicts inside a pure (jitted) function, which avoids the
per-call Python graph walk of `nnx.jit` (the Flax performance guide).
"""

import dataclasses
from typing import Any

import flax
import jax
import optax
from flax import nnx

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes; `params`/`batch_stats` map module name -> pure dict."""

    step: jax.Array
    params: dict[str, PyTree]
    batch_stats: dict[str, PyTree]
    opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class NnxBridge:
    """Graph definition and state templates of one NNX module, for pure functions over pure dicts."""

    graphdef: nnx.GraphDef
    param_template: nnx.State
    stats_template: nnx.State

    @classmethod
    def split(cls, module: nnx.Module) -> tuple["NnxBridge", PyTree, PyTree]:
        """Returns the bridge and the module's parameters and batch statistics as pure dicts."""
        graphdef, params, stats = nnx.split(module, nnx.Param, nnx.BatchStat)
        bridge = cls(graphdef, params, stats)
        return bridge, nnx.to_pure_dict(params), nnx.to_pure_dict(stats)

    def merge(self, params: PyTree, batch_stats: PyTree) -> nnx.Module:
        """A fresh module whose variables are `params` and `batch_stats` (works under tracing)."""
        param_state = jax.tree.map(lambda leaf: leaf, self.param_template)
        stats_state = jax.tree.map(lambda leaf: leaf, self.stats_template)
        nnx.replace_by_pure_dict(param_state, params)
        nnx.replace_by_pure_dict(stats_state, batch_stats)
        return nnx.merge(self.graphdef, param_state, stats_state)

    @staticmethod
    def batch_stats_of(module: nnx.Module) -> PyTree:
        """The (possibly updated) batch statistics of a merged module, as a pure dict."""
        return nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))


def count_params(params: PyTree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(params))
