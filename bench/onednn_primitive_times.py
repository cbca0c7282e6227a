"""Where the oneDNN time of a ResNet-32 train step goes, in JAX (conv_backend="onednn") and in PyTorch.

Both frameworks run their convolutions in oneDNN on this CPU (JAX through safa_jax/cpu, PyTorch
built in). Each framework's step runs in a child process with ONEDNN_VERBOSE=1; this script sums the
execution times oneDNN reports per primitive kind over the timed steps and prints milliseconds per step,
next to the step's wall time, so what is left of a gap between the two is placed: in oneDNN (which
version, which kernel) or outside it (XLA's own fusions, PyTorch's BatchNorm and elementwise kernels).

Run from the repository root:  .venv/bin/python bench/onednn_primitive_times.py [--steps 8]
"""

import argparse
import collections
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safa_jax.cpu.process_settings import apply_cpu_process_settings  # noqa: E402

apply_cpu_process_settings()  # before JAX starts

START = "TIMED STEPS START"
BATCH = 128  # configs/cifar10_lt.py's batch_size, which the JAX step uses


def timed_ms_per_step(run: Callable[[int], None], steps: int) -> float:
    """Wall ms per step of `run(steps)` after `run(3)`; START is printed between the two."""
    run(3)
    print(START, flush=True)
    start = time.perf_counter()
    run(steps)
    return (time.perf_counter() - start) / steps * 1e3


def jax_steps() -> Callable[[int], None]:
    """run(count): `count` steps of the project's ResNet-32 step (batch 128) with oneDNN convolutions."""
    from bench.train_throughput import step_runner, synthetic_cifar_lt
    from configs import cifar10_lt

    config = cifar10_lt.get_config("100")
    config.model.conv_backend = "onednn"
    return step_runner(config, synthetic_cifar_lt(), with_augmented=False)


def torch_steps() -> Callable[[int], None]:
    """run(count): `count` steps of the reference ResNet-32 step in channels_last (batch 128), bench/train_step.py's."""
    from bench import train_step

    return train_step.torch_steps("channels_last", argparse.Namespace(width=16, blocks_per_stage=5, batch_size=BATCH))


def primitive_ms(log: str, steps: int, batch: int) -> dict[str, tuple[float, float]]:
    """{"primitive prop_kind": (ms per step, calls per step)} from ONEDNN_VERBOSE lines after START.

    JAX splits each convolution of a `batch`-image step into pieces that run at once on XLA's threads
    (safa_jax/cpu/onednn_conv.cc): a piece of mb images counts mb / batch of its time and of a call, so
    the figures are wall time per step, as PyTorch's (one primitive, all threads).
    """
    totals, calls = collections.Counter(), collections.Counter()
    for line in log.split(START, 1)[1].splitlines():
        fields = line.split(",")
        if not line.startswith("onednn_verbose") or "exec" not in fields:
            continue
        at = fields.index("exec")  # oneDNN 3.2: "...,exec,cpu,..."; newer: "...,primitive,exec,cpu,..."
        if fields[at + 1] != "cpu":
            continue
        kind = f"{fields[at + 2]} {fields[at + 4]}".strip()
        images = re.match(r"mb(\d+)_", fields[-2])
        share = int(images.group(1)) / batch if images else 1.0
        totals[kind] += float(fields[-1]) * share
        calls[kind] += share
    return {kind: (totals[kind] / steps, calls[kind] / steps) for kind in sorted(totals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--child", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        wall = timed_ms_per_step({"jax": jax_steps, "torch": torch_steps}[args.child](), args.steps)
        print(f"wall ms per step: {wall:.1f}")
        return

    from bench.common import machine_description
    print("machine:", machine_description())
    print(f"ResNet-32 train step, batch {BATCH}, 32x32x3 float32; oneDNN primitive times (ONEDNN_VERBOSE) summed "
          f"over {args.steps} steps after 3 warm-up steps; JAX conv_backend='onednn', PyTorch channels_last")
    for framework in ("jax", "torch"):
        env = {**os.environ, "ONEDNN_VERBOSE": "1"}
        if framework == "torch":
            env["SAFA_JAX_KEEP_MALLOC"] = "1"  # PyTorch with glibc's defaults, as bench/common.py's in_own_process
        result = subprocess.run([sys.executable, __file__, f"--child={framework}", f"--steps={args.steps}"],
                                cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        wall = next(line for line in result.stdout.splitlines() if line.startswith("wall ms per step"))
        table = primitive_ms(result.stdout, args.steps, batch=BATCH)
        print(f"{framework}: {wall}; oneDNN total {sum(ms for ms, _ in table.values()):.1f} ms per step")
        for kind, (ms, count) in table.items():
            print(f"  {kind:<36} {ms:7.1f} ms per step ({count:.0f} calls)")


if __name__ == "__main__":
    main()
