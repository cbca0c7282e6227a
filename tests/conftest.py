"""Test set-up: 8 fake CPU devices (for sharding-equivalence tests) and shared fixtures."""

import pathlib

from safa_jax.cpu.process_settings import apply_cpu_process_settings  # noqa: I001

apply_cpu_process_settings()  # before JAX starts
import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = REPO_ROOT.parent / "shared" / "data" / "cifar10"


@pytest.fixture
def shared_cifar10():
    """Path to ../shared/data/cifar10, or skip with the reason."""
    if not (SHARED_CIFAR10 / "train").is_dir():
        pytest.skip(f"real CIFAR-10 image folder not found at {SHARED_CIFAR10} (the project's ../shared)")
    return SHARED_CIFAR10
