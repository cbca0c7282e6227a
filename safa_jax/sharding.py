"""The sharding rules, all in one place: a 1-D device mesh, batch on the data axis, state replicated.

The train step is one global-view `jax.jit` program: XLA inserts the collectives (batch-norm statistics,
gradient sums) itself, so the same code runs on 1 device, N devices or several processes.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_divisible(batch_size: int, mesh: Mesh, field: str) -> None:
    if batch_size % mesh.size:
        raise ValueError(
            f"{field}={batch_size} is not divisible by the number of devices ({mesh.size}); "
            f"use a multiple of {mesh.size}.")


def padded_batch_size(batch_size: int, mesh: Mesh) -> int:
    """The smallest multiple of the device count that holds `batch_size` (for masked evaluation)."""
    return -(-batch_size // mesh.size) * mesh.size


def put_global(tree, target: NamedSharding):
    """Place a host pytree that every process holds in full as global arrays with the given sharding.

    Each process fills only its own devices' pieces, so this works on one process and on many.
    """
    def put(leaf):
        leaf = np.asarray(leaf)
        return jax.make_array_from_callback(leaf.shape, target, lambda index: leaf[index])
    return jax.tree.map(put, tree)


def put_replicated(tree, mesh: Mesh):
    """Place a host pytree (identical on every process) on every device of the mesh."""
    return put_global(tree, replicated(mesh))


def put_process_batch(tree, mesh: Mesh):
    """Assemble global batch arrays from each process's own slice of the batch (streamed input)."""
    return jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(batch_sharded(mesh), leaf), tree)
