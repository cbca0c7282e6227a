"""Balanced Softmax, CE-RSG and Balanced-Softmax-SAFA at the full protocol (CIFAR-10-LT rho=200, ResNet-32, 200
epochs, seed 0), beside the table suite's CE / LDAM-DRW / SAFA rows.

Ren et al. report Balanced Softmax at 79.8 % top-1 accuracy (20.20 % error) on CIFAR-10-LT rho=200 with
ResNet-32, under their own schedule and long-tailed split; ours uses the LDAM-DRW recipe and split, so the
comparison that counts is against this project's own rows. CE-RSG: 29.56 % in SAFA's supplementary (Table 3).

  python -m safa_jax.suite --suite=cifar10_lt_methods_full --data=PATH/cifar10 --root=runs/methods_full
"""

from safa_jax.suite_spec import Run, data_source

PAPER = {"balanced_softmax": (20.20, "Balanced Softmax paper (Ren et al. 2020), CIFAR-10-LT rho=200, as 79.8 % accuracy"),
         "ce_rsg": (29.56, "SAFA supplementary, Table 3, CIFAR-10-LT rho=200")}
METHODS = {
    "balanced_softmax": {"loss.name": "balanced_softmax"},
    "ce_rsg": {"method": "rsg"},
    "balanced_softmax_safa_s2": {"loss.name": "balanced_softmax", "method": "safa", "safa.stage": 2},
}


def get_suite(data: str) -> list[Run]:
    source = data_source(data)
    return [Run(name=f"{method}_rho200", config="configs/cifar10_lt.py:200",
                overrides={"data.source": source, "seed": 0, **overrides},
                paper=PAPER.get(method, (None, ""))[0], paper_source=PAPER.get(method, (None, ""))[1],
                compare_to="balanced_softmax_safa_s2_rho200" if method == "balanced_softmax" else "")
            for method, overrides in METHODS.items()]
