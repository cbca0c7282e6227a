"""A short training budget on the real CIFAR-10-LT images (an image folder; the project keeps one at ../shared/data/cifar10 for its benchmarks): images/s and test accuracy.

Not the paper's protocol (200 epochs): a compressed schedule of --epochs epochs (warm-up 1 epoch, lr x0.1
for the last epoch; SAFA's augmented features and DRW from the second epoch on), the same budget for
every variant, run one after the other in this process. Prints one line per variant and a table.
Run from the repository root:
  .venv/bin/python bench/cifar10_lt_short.py --rho=100 --epochs=3 --variants=ce,ce_safa
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from safa_jax.cpu.process_settings import apply_cpu_process_settings  # noqa: E402

apply_cpu_process_settings()  # before JAX starts
from absl import logging  # noqa: E402

from bench.common import machine_description  # noqa: E402
from configs import cifar10_lt  # noqa: E402
from safa_jax.data.sources import load_data  # noqa: E402
from safa_jax.train import train_and_evaluate  # noqa: E402

SHARED_CIFAR10 = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
VARIANTS = {
    "ce": dict(loss="ce", rule="none", safa=False),
    "ce_safa": dict(loss="ce", rule="none", safa=True),
    "ldam_drw": dict(loss="ldam", rule="drw", safa=False),
    "ldam_drw_safa": dict(loss="ldam", rule="drw", safa=True),
}


def variant_config(name: str, rho: float, epochs: int):
    spec = VARIANTS[name]
    config = cifar10_lt.get_config(str(rho))
    config.data.source = f"folder:{SHARED_CIFAR10}"
    config.loss.name, config.loss.train_rule = spec["loss"], spec["rule"]
    config.method = "safa" if spec["safa"] else "plain"
    config.num_epochs = epochs
    config.optim.warmup_epochs = 1
    config.optim.decay_epochs = (epochs - 1,)
    config.optim.decay_factors = (0.1,)
    config.loss.second_stage_epoch = 1
    config.safa.start_epoch = 1
    config.eval_every_epochs = 0
    config.log_every_steps = 50
    config.checkpoint_every_steps = 100_000
    return config


def _fmt(value: float | None) -> str:
    return "n/a (no class)" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rho", type=float, default=100.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variants", default="ce,ce_safa")
    args = parser.parse_args()
    if not (SHARED_CIFAR10 / "train").is_dir():
        sys.exit(f"real CIFAR-10 not found at {SHARED_CIFAR10}")
    logging.set_verbosity(logging.WARNING)
    print("machine:", machine_description())
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; allowed: {', '.join(VARIANTS)}")
    data = load_data(variant_config(names[0], args.rho, args.epochs).data)
    print(f"CIFAR-10-LT rho={args.rho:g}: {len(data.train_labels)} training images, counts "
          f"{data.class_counts.tolist()}; {len(data.test_labels)} test images; {args.epochs} epochs each")
    rows = []
    for name in names:
        config = variant_config(name, args.rho, args.epochs)
        with tempfile.TemporaryDirectory() as workdir:
            start = time.perf_counter()
            summary = train_and_evaluate(config, workdir, data=data)
            seconds = time.perf_counter() - start
            images = summary["step"] * config.batch_size
            rows.append((name, summary, seconds, images / seconds))
            print(f"{name}: {summary['step']} steps in {seconds:.0f} s ({images / seconds:.1f} images/s "
                  f"including compile and evaluation); " + json.dumps(
                      {k: _fmt(summary[k]) for k in ("top1_accuracy", "top1_error", "many_shot_accuracy",
                                                     "medium_shot_accuracy", "few_shot_accuracy")}))
    print("\n| variant | top-1 error % | many | medium | few | wall s | images/s |\n|---|---|---|---|---|---|---|")
    for name, s, seconds, rate in rows:
        print(f"| {name} | {_fmt(s['top1_error'])} | {_fmt(s['many_shot_accuracy'])} | "
              f"{_fmt(s['medium_shot_accuracy'])} | {_fmt(s['few_shot_accuracy'])} | {seconds:.0f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
