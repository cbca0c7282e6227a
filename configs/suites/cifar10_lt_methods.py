"""Every method of the trainer on the CIFAR-10-LT rho=200 proxy protocol, side by side, seed 0.

The proxy is `cifar10_lt_proxy`'s (the 200-epoch LDAM-DRW recipe scaled to 40 epochs; second stage, SAFA's
augmented features and the Delta-encoder's from epoch 32). The rows: CE, LDAM-DRW and LDAM-DRW-SAFA (the
references), Balanced Softmax, mixup (alpha 1, MiSLAS's stage 1, on CE), LDAM-DRW with the Delta-encoder,
CE with RSG (generation from epoch 32), and cRT (4 epochs of classifier re-training with every class drawn equally
often, lr 0.1 then x0.01 from epoch 3) on the backbone of the proxy suite's CE seed-1 run, which this suite trains
first: the committed results keep no checkpoints, and the seed-0 CE run's was gone when cRT first ran. Post-hoc
logit adjustment and tau-normalisation (tau = 1) evaluate the finished CE runs, which the suite does after
training them. The report sets every row beside LDAM-DRW-SAFA's, and cRT beside its CE base.

Its CE, LDAM-DRW and LDAM-DRW-SAFA rows and cRT's CE seed-1 base are the same runs as the proxy suite's, named
alike, so with the proxy suite's root they train once for both suites (each run folder records its run, and a folder holding
another run is refused):

  python -m safa_jax.suite --suite=cifar10_lt_methods --data=PATH/cifar10 --root=runs/proxy
"""

from configs.suites.cifar10_lt_proxy import LDAM_DRW, SAFA, SCHEDULE
from configs.suites.cifar10_lt_table4 import POSTHOC
from safa_jax.suite_spec import Run, data_source, run_folder

CONFIG = "configs/cifar10_lt.py:200"
CRT_SEED = 1  # cRT's backbone: the proxy suite's CE run of this seed
CRT_EPOCHS = {"num_epochs": 4, "optim.warmup_epochs": 0, "optim.decay_epochs": (3,), "optim.decay_factors": (0.01,),
              "eval_every_epoch_from": 0}
METHODS = {
    "ce": {},
    "ldam_drw": LDAM_DRW,
    "ldam_drw_safa": SAFA,
    "balanced_softmax": {"loss.name": "balanced_softmax"},
    "ce_mixup": {"data.mixup_alpha": 1.0},
    "ldam_drw_delta_encoder": {**LDAM_DRW, "method": "delta_encoder", "safa.stage": 2},
    "ce_rsg": {"method": "rsg", "rsg.start_epoch": SCHEDULE["safa.start_epoch"]},
}


def get_suite(data: str) -> list[Run]:
    common = {"data.source": data_source(data), **SCHEDULE}
    runs = [Run(f"{name}_seed0", CONFIG, {**common, **overrides, "seed": 0}, posthoc=POSTHOC.get(name, ()),
                compare_to="" if name == "ldam_drw_safa" else "ldam_drw_safa_seed0")
            for name, overrides in METHODS.items()]
    crt_base = Run(f"ce_seed{CRT_SEED}", CONFIG, {**common, "seed": CRT_SEED}, posthoc=POSTHOC["ce"])
    crt = {"data.source": data_source(data), "seed": CRT_SEED, **CRT_EPOCHS, "method": "crt",
           "init_from": run_folder(crt_base.name),
           "loss.train_rule": "resample", "loss.sampling_weights": "inverse_count"}
    return runs + [crt_base, Run(f"ce_crt_seed{CRT_SEED}", CONFIG, crt, compare_to=crt_base.name)]
