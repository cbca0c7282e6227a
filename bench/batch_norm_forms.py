"""The ResNet-32 train step with each of BatchNorm's forms (`config.model.batch_norm`), in one process, interleaved.

Both steps are compiled first; then every round times --steps steps of each form in turn, so the load changes
of a shared machine fall on both alike. Prints each form's median ms per step and the median over rounds of
the per-round speed-up of "folded" (x * a + (bias - mean * a)) over "flax" ((x - mean) * a + bias).
Run from the repository root:  .venv/bin/python bench/batch_norm_forms.py [--rounds 10 --steps 4 --safa]
"""

import argparse
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import safa_jax  # noqa: E402,F401  (XLA flags before JAX starts)

from bench.common import machine_description  # noqa: E402
from bench.train_throughput import conv_backend_in_use, step_runner, synthetic_cifar_lt  # noqa: E402
from configs import cifar10_lt  # noqa: E402
from safa_jax.models.batch_norm import BATCH_NORM_FORMS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per form and round")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--safa", action="store_true", help="the step with SAFA (augmented features classified)")
    args = parser.parse_args()
    print("machine:", machine_description())
    print(f"ResNet-32 train step{' with SAFA' if args.safa else ''}, batch {args.batch_size}, 32x32x3 float32, "
          f"convolutions: {conv_backend_in_use('auto')}; {args.rounds} rounds x {args.steps} steps per form, "
          f"after 2 warm-up steps", flush=True)
    data, runners = synthetic_cifar_lt(), {}
    for form in BATCH_NORM_FORMS:
        config = cifar10_lt.get_config("100")
        config.batch_size = args.batch_size
        config.safa.enabled = args.safa
        config.model.batch_norm = form
        runners[form] = step_runner(config, data, with_augmented=args.safa)
        runners[form](2)
    seconds = {form: [] for form in BATCH_NORM_FORMS}
    for _ in range(args.rounds):
        for form in BATCH_NORM_FORMS:
            start = time.perf_counter()
            runners[form](args.steps)
            seconds[form].append((time.perf_counter() - start) / args.steps)
    for form in BATCH_NORM_FORMS:
        print(f"{form:<7} ms per step: median {1e3 * statistics.median(seconds[form]):.1f} "
              f"(rounds {', '.join(f'{1e3 * s:.0f}' for s in seconds[form])})")
    speedups = [flax / folded for flax, folded in zip(seconds["flax"], seconds["folded"])]
    print(f"folded/flax speed-up (median of rounds): {statistics.median(speedups):.3f}")


if __name__ == "__main__":
    main()
