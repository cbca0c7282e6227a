"""The ResNet-32 train step with each of BatchNorm's forms (`config.model.batch_norm`), in one process, interleaved.

Both steps are compiled first; then every round times --steps steps of each form in turn, so the load changes
of a shared machine fall on both alike. Prints each form's median ms per step and the median over rounds of
the per-round speed-up of "folded" (x * a + (bias - mean * a)) over "flax" ((x - mean) * a + bias).
Run from the repository root:  .venv/bin/python bench/batch_norm_forms.py [--rounds 10 --steps 4 --safa]
"""

import argparse
import functools
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import safa_jax  # noqa: E402,F401  (XLA flags before JAX starts)

from bench.common import machine_description, paired_ratio, timed_in_rounds, timed_rate  # noqa: E402
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
    data, timings = synthetic_cifar_lt(), {}
    for form in BATCH_NORM_FORMS:
        config = cifar10_lt.get_config("100")
        config.batch_size = args.batch_size
        config.safa.enabled = args.safa
        config.model.batch_norm = form
        run = step_runner(config, data, with_augmented=args.safa)
        run(2)
        timings[form] = functools.partial(timed_rate, run, count=args.steps, batch_size=args.batch_size)
    rates = timed_in_rounds(timings, args.rounds)
    for form in BATCH_NORM_FORMS:
        ms = [1e3 * args.batch_size / rate for rate in rates[form]]
        print(f"{form:<7} ms per step: median {statistics.median(ms):.1f} (rounds {', '.join(f'{m:.0f}' for m in ms)})")
    print(f"folded/flax speed-up (median of rounds): {paired_ratio(rates['folded'], rates['flax']):.3f}")

if __name__ == "__main__":
    main()
