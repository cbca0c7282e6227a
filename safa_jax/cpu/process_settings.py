"""Process settings for training on the CPU, applied by the entry points before JAX starts, never on import.

Two settings pay on the CPU only (docs/benchmark_log.md): XLA's YNNPACK fusion flag (`xla_flags`) and glibc's
malloc kept from unmapping XLA's per-step buffer (`host_memory`). On a TPU host the single malloc arena
would serialise tf.data's threads, so they are applied only when the platform will be the CPU, decided
before JAX starts from:

1. `JAX_PLATFORMS`, where set: the CPU when its first entry is `cpu`;
2. otherwise an accelerator as JAX would find one: a TPU (the `libtpu` package and `/dev/accel*` or
   `/dev/vfio/*` devices) or a GPU (a JAX CUDA/ROCm plugin package and `/dev/nvidia*` or `/dev/kfd`);
   with neither, the CPU.

The entry points (`python -m safa_jax.main`, `safa_jax.convert_torchvision`, the bench scripts, the tests'
conftest) call `apply_cpu_process_settings()` first; it prints one line naming what it set and the
variables that turn each off (SAFA_JAX_KEEP_XLA_FLAGS=1, SAFA_JAX_KEEP_MALLOC=1).
"""

import glob
import importlib.util
import os
import sys

from safa_jax.cpu import host_memory, xla_flags

GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def platform_will_be_cpu(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    tpu = _has_module("libtpu") and bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))
    gpu = any(_has_module(name) for name in GPU_PLUGINS) and bool(glob.glob("/dev/nvidia[0-9]*")
                                                                   or os.path.exists("/dev/kfd"))
    return not (tpu or gpu)


def apply_cpu_process_settings(*, quiet: bool = False) -> list[str]:
    """Applies the CPU settings where the platform will be the CPU; returns (and prints) what was set."""
    if not platform_will_be_cpu():
        return []
    applied = []
    flag = xla_flags.apply_cpu_defaults()
    if flag:
        applied.append(f"XLA_FLAGS += {flag} (SAFA_JAX_KEEP_XLA_FLAGS=1 turns it off)")
    if host_memory.keep_freed_memory():
        applied.append("glibc malloc keeps freed memory mapped (SAFA_JAX_KEEP_MALLOC=1 turns it off)")
    if applied and not quiet:
        print("safa_jax: CPU process settings: " + "; ".join(applied), file=sys.stderr, flush=True)
    return applied
