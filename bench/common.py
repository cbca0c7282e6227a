"""What every benchmark prints: the machine and the versions first, so a recorded figure can be placed; medians."""

import concurrent.futures
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import jax
    devices = jax.devices()
    return (f"{cpu}, {os.cpu_count()} cores; JAX {jax.__version__} on {len(devices)} x {devices[0].device_kind}; "
            f"Python {sys.version.split()[0]}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


def report(label: str, rates: list[float]) -> float:
    """Prints `label: median (repeats ...)` for one variant's repeated images/s figures; returns the median."""
    median = statistics.median(rates)
    print(f"{label}: {median:.1f} (repeats {', '.join(f'{r:.1f}' for r in rates)})", flush=True)
    return median


def timed_rates(run: Callable[[int], None], *, warmup: int, repeats: int, count: int, batch_size: int) -> list[float]:
    """images/s of each of `repeats` timings of `run(count)` (which runs `count` batches and waits for them),
    after `run(warmup)`."""
    run(warmup)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(count)
        rates.append(count * batch_size / (time.perf_counter() - start))
    return rates


def in_own_process(function: Callable, *args):
    """`function(*args)` run in a fresh (spawned) Python process with glibc's malloc defaults; returns its result.

    PyTorch is timed this way: its bundled OpenMP runtime and the system one that the project's oneDNN
    convolutions use do not share a process well (timed in the JAX process after the oneDNN step, PyTorch
    channels_last fell from about 420 to 346 images/s; docs/benchmarks.md), and users run each framework in a
    process of its own. The child imports `safa_jax` (through the bench modules) but opts out of its malloc
    settings (safa_jax/host_memory.py), so PyTorch runs as it would anywhere else. `function` must be
    importable (module level) and its arguments picklable.
    """
    previous = os.environ.get("SAFA_JAX_KEEP_MALLOC")
    os.environ["SAFA_JAX_KEEP_MALLOC"] = "1"  # inherited by the spawned child only while it starts
    try:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(function, *args).result()
    finally:
        if previous is None:
            del os.environ["SAFA_JAX_KEEP_MALLOC"]
        else:
            os.environ["SAFA_JAX_KEEP_MALLOC"] = previous
