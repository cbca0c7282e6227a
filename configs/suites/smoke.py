"""A suite that runs in seconds: two tiny runs on the bundled digits (no download, no --data), one with SAFA.

It exercises the suite machinery (skip, resume, report, export) in the tests; its numbers mean nothing.
"""

from safa_jax.suite_spec import Run

TINY = {"model.width": 4, "model.blocks_per_stage": 1, "data.image_size": 8, "data.crop_padding": 2,
        "batch_size": 16, "eval_batch_size": 50, "num_epochs": 3, "optim.warmup_epochs": 1,
        "optim.decay_epochs": (2,), "optim.decay_factors": (0.1,), "loss.second_stage_epoch": 2,
        "safa.start_epoch": 2, "log_every_steps": 5, "checkpoint_every_epochs": 1, "eval_every_epochs": 1}


def get_suite(data: str) -> list[Run]:
    del data  # the bundled digits
    # Post-hoc logit adjustment at tau 0 (the plain model, a check) and 1, evaluated after training.
    return [Run(name="ce", config="configs/digits_lt.py:10", overrides=dict(TINY),
                posthoc=(("logit_adjust", 0.0), ("logit_adjust", 1.0))),
            Run(name="ce_safa", config="configs/digits_lt.py:10", overrides=dict(TINY, **{"method": "safa"}),
                paper=None)]
