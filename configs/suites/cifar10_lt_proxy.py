"""A short proxy of the CIFAR-10-LT rho=200 protocol, to compare SAFA settings side by side in hours, not days.

The 200-epoch LDAM-DRW recipe scaled to 40 epochs (x0.2): warm-up 1 epoch, lr x0.01 from epoch 32 and
x0.0001 from 36, DRW (class-balanced weights) and SAFA's augmented features from epoch 32; the test set
after every 5th epoch and every epoch from 32. Same data, model, batch and optimizer as the full protocol.
Why 40 epochs: a SAFA run then takes about 20-40 minutes on 2 CPU cores (the full protocol 2-5 hours),
and the second stage, where SAFA's features join the loss, keeps its share of the schedule (8 of 40
epochs). Both bases run: CE / CE-SAFA (at the full protocol CE-SAFA did not beat CE: 39.90 against 39.94 %)
and LDAM-DRW / LDAM-DRW-SAFA. A single seed cannot separate effects under about a point, so the decisive
comparisons (the baselines, the defaults, the best alternatives) run seeds 0-2; the alternatives run seed 0
first, as a screen, each beside its base's default SAFA.

  python -m safa_jax.suite --suite=cifar10_lt_proxy --data=PATH/cifar10 --root=runs/proxy

The methods suite (`cifar10_lt_methods`) shares its seed-0 CE, LDAM-DRW and LDAM-DRW-SAFA runs under that root.
"""

from configs.suites.cifar10_lt_table4 import CE_SAFA_S2 as CE_SAFA
from configs.suites.cifar10_lt_table4 import LDAM_DRW, POSTHOC
from configs.suites.cifar10_lt_table4 import LDAM_DRW_SAFA_S2 as SAFA
from safa_jax.suite_spec import Run, data_source

EPOCHS = 40
SECOND_STAGE = 32
SCHEDULE = {"num_epochs": EPOCHS, "optim.warmup_epochs": 1, "optim.decay_epochs": (SECOND_STAGE, 36),
            "loss.second_stage_epoch": SECOND_STAGE, "safa.start_epoch": SECOND_STAGE,
            "eval_every_epoch_from": SECOND_STAGE}
BASES = {"ce": ({}, CE_SAFA), "ldam_drw": (LDAM_DRW, SAFA)}  # base -> (baseline, its SAFA default)
# name -> overrides on top of a SAFA default: each alternative that docs/method.md discusses, most likely first.
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
# The two best CE-SAFA screens act on different things (which tail samples fill the slots; when the augmented
# features join the loss), so they are also screened together.
ALTERNATIVES["tail_inverse_frequency_start_epoch_20"] = {**ALTERNATIVES["tail_inverse_frequency"],
                                                         **ALTERNATIVES["start_epoch_20"]}
WEIGHTED_ONLY = {"augmented_unweighted"}  # CE has no class weights for it to remove
# Alternatives that won their seed-0 screen, run at the other seeds too (CE-SAFA's tail_inverse_frequency:
# 49.46 % and start_epoch_20: 49.05 %, against the default's 51.28 and CE's 50.19; LDAM-DRW-SAFA's
# start_epoch_20: 39.88 %, against the default's 42.22 and LDAM-DRW's 41.71).
SCREEN_WINNERS = {"ce": ("tail_inverse_frequency", "start_epoch_20"), "ldam_drw": ("start_epoch_20",)}
SEEDS = (0, 1, 2)
CONFIG = "configs/cifar10_lt.py:200"


def get_suite(data: str) -> list[Run]:
    """The seed-0 pairs first (CE, then LDAM-DRW), then each alternative at seed 0 (a screen: CE-SAFA's, then
    LDAM-DRW-SAFA's), then seeds 1 and 2 of the pairs and of the screens' winners: the spread that says which
    seed-0 differences are larger than seed noise."""
    common = {"data.source": data_source(data), **SCHEDULE}

    def pair(base: str, seed: int) -> list[Run]:
        baseline, safa = BASES[base]
        return [Run(f"{base}_seed{seed}", CONFIG, {**common, **baseline, "seed": seed}, posthoc=POSTHOC.get(base, ()),
                    compare_to=f"{base}_safa_seed{seed}"),
                Run(f"{base}_safa_seed{seed}", CONFIG, {**common, **safa, "seed": seed})]

    def alternatives(base: str, seed: int = 0, names=tuple(ALTERNATIVES)) -> list[Run]:
        return [Run(f"{base}_safa_{name}_seed{seed}", CONFIG,
                    {**common, **BASES[base][1], **ALTERNATIVES[name], "seed": seed},
                    compare_to=f"{base}_safa_seed{seed}")
                for name in names if base == "ldam_drw" or name not in WEIGHTED_ONLY]

    return (pair("ce", 0) + pair("ldam_drw", 0) + alternatives("ce") + alternatives("ldam_drw")
            + [run for seed in SEEDS[1:] for base in BASES
               for run in pair(base, seed) + alternatives(base, seed, SCREEN_WINNERS[base])])
