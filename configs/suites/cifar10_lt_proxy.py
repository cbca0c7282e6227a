"""A short proxy of the CIFAR-10-LT rho=200 protocol, to compare SAFA settings side by side in hours, not days.

The 200-epoch LDAM-DRW recipe scaled to 40 epochs (x0.2): warm-up 1 epoch, lr x0.01 from epoch 32 and
x0.0001 from 36, DRW (class-balanced weights) and SAFA's augmented features from epoch 32; the test set
after every 5th epoch and every epoch from 32. Same data, model, batch and optimizer as the full protocol.
Why 40 epochs: a SAFA run then takes about 20-40 minutes on 2 CPU cores (the full protocol 2-5 hours),
and the second stage, where SAFA's features join the loss, keeps its share of the schedule (8 of 40
epochs). A single seed cannot separate effects under about a point, so the decisive comparisons (the
baseline, the default, the best alternatives) run seeds 0-2; the alternatives run seed 0 first, as a screen.

  python -m safa_jax.suite --suite=cifar10_lt_proxy --data=PATH/cifar10 --root=runs/proxy

The methods suite (`cifar10_lt_methods`) shares its seed-0 LDAM-DRW and LDAM-DRW-SAFA runs under that root.
"""

from safa_jax.suite_spec import Run, data_source

EPOCHS = 40
SECOND_STAGE = 32
SCHEDULE = {"num_epochs": EPOCHS, "optim.warmup_epochs": 1, "optim.decay_epochs": (SECOND_STAGE, 36),
            "loss.second_stage_epoch": SECOND_STAGE, "safa.start_epoch": SECOND_STAGE,
            "eval_every_epoch_from": SECOND_STAGE}
LDAM_DRW = {"loss.name": "ldam", "loss.train_rule": "drw"}
SAFA = {**LDAM_DRW, "method": "safa", "safa.stage": 2}
# name -> overrides on top of LDAM-DRW-SAFA's defaults: each alternative that docs/method.md discusses.
ALTERNATIVES = {
    "tail_inverse_frequency": {"safa.tail_sampling": "inverse_frequency"},
    "tail_uniform_classes": {"safa.tail_sampling": "uniform_classes"},
    "start_epoch_0": {"safa.start_epoch": 0},
    "start_epoch_20": {"safa.start_epoch": 20},
    "augmented_unweighted": {"safa.augmented_class_weights": False},
    "upper_bn_real": {"safa.upper_bn_stats": "real"},
    "delta_bottleneck_8": {"safa.delta_channels": 8},
    "q_pairs_balanced": {"safa.q_pairs": "balanced"},
}
SEEDS = (0, 1, 2)


def get_suite(data: str) -> list[Run]:
    """The seed-0 pair first, then each alternative at seed 0 (a screen, most likely cause first), then seeds 1
    and 2 of the pair: the spread that says which seed-0 differences are larger than seed noise."""
    common = {"data.source": data_source(data), **SCHEDULE}

    def pair(seed: int) -> list[Run]:
        return [Run(f"ldam_drw_seed{seed}", "configs/cifar10_lt.py:200", {**common, **LDAM_DRW, "seed": seed},
                    compare_to=f"ldam_drw_safa_seed{seed}"),
                Run(f"ldam_drw_safa_seed{seed}", "configs/cifar10_lt.py:200", {**common, **SAFA, "seed": seed})]

    alternatives = [Run(f"safa_{name}_seed0", "configs/cifar10_lt.py:200", {**common, **SAFA, **overrides, "seed": 0},
                        compare_to="ldam_drw_safa_seed0")  # each beside the default at the same seed
                    for name, overrides in ALTERNATIVES.items()]
    return pair(0) + alternatives + [run for seed in SEEDS[1:] for run in pair(seed)]
