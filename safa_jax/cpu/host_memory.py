"""Keep freed host memory in the process instead of handing it back to the kernel after every step.

Why: XLA's CPU runtime allocates each execution's temporary buffer with malloc and frees it afterwards. For the
ResNet-32 train step at batch 128 that is one 478 MB block per step; glibc serves blocks above 32 MB with a fresh
mmap and returns them with munmap, so every step touches 478 MB of new pages: about 117,000 page faults a
step (PyTorch's step: about 400). On the project's 2-core Xeon the step ran at 307.4 images/s with these
settings and 271.9 without (bench/train_step.py, docs/benchmark_log.md).

glibc cannot be told to keep blocks that large in its mmap path, so this turns mmap off (M_MMAP_MAX=0) and
keeps the heap's freed top (M_TRIM_THRESHOLD); both only apply to the main heap, so all threads use it
(M_ARENA_MAX=1; the arena limit must be set before JAX starts its threads). The cost: the process keeps its
peak heap rather than returning it, and threads share one malloc lock. Applied by the entry points on the CPU
(safa_jax/cpu/process_settings.py); set SAFA_JAX_KEEP_MALLOC=1 to opt out. Only glibc (Linux) is touched.
"""

import ctypes
import os
import platform

# mallopt parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_TRIM_ABOVE_BYTES = 2**31 - 1  # the largest value mallopt's int takes: keep up to 2 GiB of freed heap top


def keep_freed_memory() -> bool:
    """Applies the glibc settings above; returns whether they were applied."""
    if os.environ.get("SAFA_JAX_KEEP_MALLOC") or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_ABOVE_BYTES))
    applied = [mallopt(parameter, value) == 1 for parameter, value in settings]
    return all(applied)
