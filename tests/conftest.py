"""Test set-up: 8 fake CPU devices (for sharding-equivalence tests), a shared compilation cache, fixtures."""

import os
import pathlib
import tempfile

from safa_jax.cpu.process_settings import apply_cpu_process_settings  # noqa: I001

apply_cpu_process_settings()  # before JAX starts
# One persistent XLA compilation cache for the test workers and every process they start (they inherit the
# environment): the tests build the same tiny models again and again, and each new process would compile
# them anew. A tiny command-line run took 132 s cold and 40 s from the cache (2-core AMD EPYC, beside a
# training). Entries are keyed by the program, XLA flags and JAX version, so a stale one is never used.
# SAFA_JAX_TEST_COMPILATION_CACHE=0 turns it off; JAX_COMPILATION_CACHE_DIR, where set, is kept.
if os.environ.get("SAFA_JAX_TEST_COMPILATION_CACHE", "1") != "0":
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                          os.path.join(tempfile.gettempdir(), f"safa_jax_test_xla_cache_{os.getuid()}"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # the tiny models compile fast
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))  # bytes; oldest entries go first
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
