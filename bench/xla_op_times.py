"""Where the time of the JAX ResNet-32 train step goes, per kind of XLA operation, from a profiler trace.

Traces --steps steps of the project's step (after compilation and 3 warm-up steps) with `jax.profiler`, reads
the trace back (`jax.profiler.ProfileData`) and prints milliseconds per step for each kind of operation: the
oneDNN convolutions (`ffi_call`), YNNPACK's reductions (`ynn_fusion`) and each kind of XLA fusion (named after
its root operations, e.g. `broadcast_subtract_fusion`), largest first. Operations on XLA's two threads can
overlap, so the column can sum to more than the wall time. This is how the materialised `x - mean` of Flax's
BatchNorm form showed up (docs/benchmark_log.md).
Run from the repository root:  .venv/bin/python bench/xla_op_times.py [--batch_norm flax] [--top 12]
"""

import argparse
import collections
import pathlib
import re
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from safa_jax.cpu.process_settings import apply_cpu_process_settings  # noqa: E402

apply_cpu_process_settings()  # before JAX starts
import jax  # noqa: E402

from bench.common import machine_description  # noqa: E402
from bench.train_throughput import conv_backend_in_use, step_runner, synthetic_cifar_lt  # noqa: E402
from configs import cifar10_lt  # noqa: E402
from safa_jax.models.batch_norm import BATCH_NORM_FORMS  # noqa: E402

# Trace events that are not operations of the compiled step (runtime bookkeeping, Python frames).
_NOT_OPERATIONS = re.compile(r"^(\$|end: |ThunkExecutor|Pjit|PjRt|CommonPjRt|PythonRefManager|SlinkyThreadPool|"
                             r"Wait for|Handle |ParseArguments)")


def operation_kind(event_name: str) -> str | None:
    """`add_maximum_fusion.17` -> `add_maximum_fusion`; None for events that are not operations."""
    return None if _NOT_OPERATIONS.match(event_name) else re.sub(r"\.\d+$", "", event_name)


def ms_per_kind(events: list[tuple[str, int]], steps: int) -> list[tuple[str, float, float]]:
    """[(kind, ms per step, calls per step)] from (event name, duration ns) pairs, largest first."""
    nanoseconds, calls = collections.Counter(), collections.Counter()
    for name, duration in events:
        kind = operation_kind(name)
        if kind is not None:
            nanoseconds[kind] += duration
            calls[kind] += 1
    return [(kind, total / steps / 1e6, calls[kind] / steps) for kind, total in nanoseconds.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=12, help="how many kinds to print")
    parser.add_argument("--batch_norm", default="folded", choices=BATCH_NORM_FORMS)
    args = parser.parse_args()
    config = cifar10_lt.get_config("100")
    config.model.batch_norm = args.batch_norm
    print("machine:", machine_description())
    print(f"ResNet-32 train step, batch 128, 32x32x3 float32, convolutions: {conv_backend_in_use('auto')}, "
          f"config.model.batch_norm={args.batch_norm!r}; {args.steps} traced steps after 3 warm-up steps", flush=True)
    run = step_runner(config, synthetic_cifar_lt(), with_augmented=False)
    run(3)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        start = time.perf_counter()
        run(args.steps)
        wall = (time.perf_counter() - start) / args.steps * 1e3
        jax.profiler.stop_trace()
        trace = next(pathlib.Path(trace_dir).rglob("*.xplane.pb"))
        profile = jax.profiler.ProfileData.from_file(str(trace))
        events = [(event.name, event.duration_ns) for plane in profile.planes for line in plane.lines
                  for event in line.events]
    print(f"wall ms per step (traced): {wall:.1f}")
    for kind, ms, count in ms_per_kind(events, args.steps)[:args.top]:
        print(f"  {kind:<32} {ms:7.1f} ms per step ({count:.0f} calls)")


if __name__ == "__main__":
    main()
