"""What every benchmark prints: the machine and the versions first, so a recorded figure can be placed; medians."""

import concurrent.futures
import contextlib
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator

from safa_jax.provenance import cpu_model


def machine_description() -> str:
    """The CPU (model and vector extension), JAX's devices and the flags: what a recorded figure depends on."""
    import jax
    devices = jax.devices()
    return (f"{cpu_model()}, {os.cpu_count()} cores; JAX {jax.__version__} on {len(devices)} x "
            f"{devices[0].device_kind}; Python {sys.version.split()[0]}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


def report(label: str, rates: list[float]) -> float:
    """Prints `label: median (repeats ...)` for one variant's repeated images/s figures; returns the median."""
    median = statistics.median(rates)
    print(f"{label}: {median:.1f} (repeats {', '.join(f'{r:.1f}' for r in rates)})", flush=True)
    return median


def timed_rate(run: Callable[[int], None], *, count: int, batch_size: int) -> float:
    """images/s of one timing of `run(count)` (which runs `count` batches and waits for them)."""
    start = time.perf_counter()
    run(count)
    return count * batch_size / (time.perf_counter() - start)


def timed_rates(run: Callable[[int], None], *, warmup: int, repeats: int, count: int, batch_size: int) -> list[float]:
    """images/s of each of `repeats` timings of `run(count)`, after `run(warmup)`."""
    run(warmup)
    return [timed_rate(run, count=count, batch_size=batch_size) for _ in range(repeats)]


def timed_in_rounds(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """{name: one figure per round}: each round calls every variant's timing function once, in turn, so the
    speed changes of a shared machine fall on all variants alike (compare them with `paired_ratio`)."""
    figures = {name: [] for name in variants}
    for _ in range(rounds):
        for name, timing in variants.items():
            figures[name].append(timing())
    return figures


def paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median over rounds of numerator / denominator, each pair timed in the same round."""
    return statistics.median(n / d for n, d in zip(numerators, denominators))


@contextlib.contextmanager
def own_process() -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    """A one-worker pool whose fresh (spawned) Python process runs with glibc's malloc defaults; the same process
    serves every task submitted to the pool, so what a task builds (a compiled step) stays for the next.

    PyTorch is timed this way: its bundled OpenMP runtime and the system one that the project's oneDNN
    convolutions use do not share a process well (timed in the JAX process after the oneDNN step, PyTorch
    channels_last fell from about 420 to 346 images/s; docs/benchmark_log.md), and users run each framework in a
    process of its own. The child imports `safa_jax` (through the bench modules) but opts out of its malloc
    settings (safa_jax/cpu/host_memory.py), so PyTorch runs as it would anywhere else. Submitted functions must be
    importable (module level) and their arguments picklable.
    """
    previous = os.environ.get("SAFA_JAX_KEEP_MALLOC")
    os.environ["SAFA_JAX_KEEP_MALLOC"] = "1"  # inherited by the spawned child only while it starts
    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        pool.submit(int).result()  # starts the worker now, while the variable is set
    finally:
        if previous is None:
            del os.environ["SAFA_JAX_KEEP_MALLOC"]
        else:
            os.environ["SAFA_JAX_KEEP_MALLOC"] = previous
    with pool:
        yield pool


def in_own_process(function: Callable, *args):
    """`function(*args)` run in a process of its own (`own_process`); returns its result."""
    with own_process() as pool:
        return pool.submit(function, *args).result()
