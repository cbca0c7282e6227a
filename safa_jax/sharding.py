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


def put_replicated(tree, mesh: Mesh):
    """Place a host pytree (identical on every process) on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
