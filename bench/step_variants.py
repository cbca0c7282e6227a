"""Two variants of the ResNet-32 train step in one process, interleaved: what one choice in the step is worth.

--compare batch_norm: BatchNorm's forms (`config.model.batch_norm`), "folded" (x * a + (bias - mean * a))
  against "flax" ((x - mean) * a + bias).
--compare keep_block_outputs: with the oneDNN convolutions, the backbone keeping every block's output in
  memory (`safa_jax/cpu/keep_in_memory.py`, the default) against leaving XLA's CPU fusion free to
  recompute earlier blocks inside later ones.
--compare loss: cross-entropy with the linear head against LDAM with its cosine ("normed") head, the base
  losses of the reproduction suites.
Both steps are compiled first; then every round times --steps steps of each variant in turn, so the load
changes of a shared machine fall on both alike. Prints each variant's median ms per step and the median over
rounds of the per-round speed-up of the first variant over the second.
Run from the repository root:  .venv/bin/python bench/step_variants.py --compare batch_norm [--rounds 10 --safa]
(named bench/batch_norm_forms.py until the fifth session, when it compared the BatchNorm forms only)
"""

import argparse
import contextlib
import functools
import pathlib
import statistics
import sys
from unittest import mock

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from safa_jax.cpu.process_settings import apply_cpu_process_settings  # noqa: E402

apply_cpu_process_settings()  # before JAX starts

from bench.common import machine_description, paired_ratio, timed_in_rounds, timed_rate  # noqa: E402
from bench.train_throughput import conv_backend_in_use, step_runner, synthetic_cifar_lt  # noqa: E402
from configs import cifar10_lt  # noqa: E402
from safa_jax.cpu import keep_in_memory  # noqa: E402
from safa_jax.models.layer_ops import unchanged  # noqa: E402
from safa_jax.suite_spec import with_overrides  # noqa: E402

# comparison -> ((variant name, config overrides, backbone keeps its block outputs) for both variants)
COMPARISONS = {
    "batch_norm": (("folded", {"model.batch_norm": "folded"}, True), ("flax", {"model.batch_norm": "flax"}, True)),
    "keep_block_outputs": (("kept", {"model.conv_backend": "onednn"}, True),
                           ("recomputed", {"model.conv_backend": "onednn"}, False)),
    "loss": (("ce", {"loss.name": "ce"}, True), ("ldam", {"loss.name": "ldam"}, True)),
}


def variant_timer(args: argparse.Namespace, overrides: dict, keeps_block_outputs: bool):
    """timer(): images/s of --steps steps of one variant of the step, compiled and warmed up here."""
    config = cifar10_lt.get_config("100")
    config.batch_size = args.batch_size
    config.method = "safa" if args.safa else "plain"
    with_overrides(config, overrides)
    not_kept = mock.patch.object(keep_in_memory, "keep_in_memory", unchanged)  # what LayerOps for oneDNN take
    with contextlib.nullcontext() if keeps_block_outputs else not_kept:
        run = step_runner(config, synthetic_cifar_lt(), with_augmented=args.safa)
    run(2)
    return functools.partial(timed_rate, run, count=args.steps, batch_size=args.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", required=True, choices=tuple(COMPARISONS))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant and round")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--safa", action="store_true", help="the step with SAFA (augmented features classified)")
    args = parser.parse_args()
    variants = COMPARISONS[args.compare]
    print("machine:", machine_description())
    print(f"ResNet-32 train step{' with SAFA' if args.safa else ''}, batch {args.batch_size}, 32x32x3 float32, "
          f"convolutions: {conv_backend_in_use(variants[0][1].get('model.conv_backend', 'auto'))}; "
          f"{args.rounds} rounds x {args.steps} steps per variant, after 2 warm-up steps", flush=True)
    rates = timed_in_rounds({name: variant_timer(args, overrides, keeps) for name, overrides, keeps in variants},
                            args.rounds)
    for name, _, _ in variants:
        ms = [1e3 * args.batch_size / rate for rate in rates[name]]
        rounds = ", ".join(f"{m:.0f}" for m in ms)
        print(f"{name:<10} ms per step: median {statistics.median(ms):.1f} (rounds {rounds})")
    first, second = (name for name, _, _ in variants)
    print(f"{first}/{second} speed-up (median of rounds): {paired_ratio(rates[first], rates[second]):.3f}")


if __name__ == "__main__":
    main()
