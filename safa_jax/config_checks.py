"""Checks of a config that run before any data is read or any model is compiled.

Each error names the field, the bad value and what is allowed. Checks that need the data (a head ratio
that leaves no tail class, a dataset smaller than a batch) run right after loading, still before training.
"""

from safa_jax.config_fields import positive_int
from safa_jax.data.mixup import validate_mixup_config
from safa_jax.methods import METHODS
from safa_jax.methods.safa import validate_safa_section
from safa_jax.data.registry import validate_data_config
from safa_jax.losses.base import POSTHOC, tau_search, validate_loss_config
from safa_jax.models import HEADS, MODEL_NAMES
from safa_jax.models.heads import resolve_head
from safa_jax.models.layer_ops import validate_layer_config
from safa_jax.models.torch_import import read_pretrained_info
from safa_jax.precision import Precision
from safa_jax.warm_start import check_init_from


def validate_config(config) -> None:
    """Raises ValueError on the first problem found in `config`."""
    validate_data_config(config.data)
    if config.model.name not in MODEL_NAMES:
        raise ValueError(f"unknown model config.model.name={config.model.name!r}; "
                         f"allowed: {', '.join(MODEL_NAMES)}")
    if config.model.head not in (*HEADS, "auto"):
        raise ValueError(f"unknown config.model.head={config.model.head!r}; "
                         f"allowed: {', '.join((*HEADS, 'auto'))}")
    positive_int(config.model.width, "model.width")
    if config.model.init_checkpoint:
        recorded = read_pretrained_info(config.model.init_checkpoint)["model"]
        if recorded != config.model.name:
            raise ValueError(f"config.model.init_checkpoint={config.model.init_checkpoint!r} holds {recorded} "
                             f"weights, but config.model.name={config.model.name!r}")
    if not config.model.init_checkpoint and not config.model.allow_random_init:
        raise ValueError("this recipe trains from pretrained weights and config.model.init_checkpoint is empty: give "
                         "a folder written by `python -m safa_jax.convert_torchvision`, or pass "
                         "--config.model.allow_random_init=True to train from random weights")
    positive_int(config.model.blocks_per_stage, "model.blocks_per_stage")
    Precision.from_config(config.model)  # Names an unknown compute_dtype and the allowed ones.
    validate_layer_config(config.model)
    validate_loss_config(config.loss, num_classes=None)
    validate_mixup_config(config)
    for field in ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps",
                  "checkpoint_every_steps", "keep_checkpoints"):
        positive_int(config[field], field)
    if config.num_train_steps != -1:
        positive_int(config.num_train_steps, "num_train_steps (or -1 for no cap)")
    for field in ("checkpoint_every_epochs", "eval_every_epochs"):
        if not isinstance(config[field], int) or config[field] < 0:
            raise ValueError(f"config.{field} must be an integer >= 0 (0 = off), got {config[field]!r}")
    if not isinstance(config.eval_every_epoch_from, int) or config.eval_every_epoch_from < -1:
        raise ValueError("config.eval_every_epoch_from must be a (0-based) epoch >= 0, or -1 for off; "
                         f"got {config.eval_every_epoch_from!r}")
    optim = config.optim
    if len(optim.decay_epochs) != len(optim.decay_factors):
        raise ValueError(f"config.optim.decay_epochs {tuple(optim.decay_epochs)} and "
                         f"config.optim.decay_factors {tuple(optim.decay_factors)} must have the same length")
    late = [e for e in optim.decay_epochs if e >= config.num_epochs]
    if late:
        raise ValueError(f"config.optim.decay_epochs={tuple(optim.decay_epochs)} has {tuple(late)} at or past "
                         f"config.num_epochs={config.num_epochs}: the rate would never decay there; "
                         "allowed: epochs below num_epochs")
    if config.loss.train_rule in ("drw", "drs") and config.loss.second_stage_epoch >= config.num_epochs:
        raise ValueError(f"config.loss.second_stage_epoch={config.loss.second_stage_epoch} is not before "
                         f"config.num_epochs={config.num_epochs}: config.loss.train_rule={config.loss.train_rule!r} "
                         "would never switch on; allowed: second_stage_epoch < num_epochs")
    if optim.learning_rate <= 0 or optim.weight_decay < 0 or not 0 <= optim.momentum < 1:
        raise ValueError("config.optim needs learning_rate > 0, weight_decay >= 0 and 0 <= momentum < 1; "
                         f"got {optim.learning_rate}, {optim.weight_decay}, {optim.momentum}")
    validate_safa_section(config.safa)
    if config.method not in METHODS:
        raise ValueError(f"unknown config.method={config.method!r}; allowed: {', '.join(METHODS)}")
    METHODS[config.method].validate(config)
    check_init_from(config.init_from)
    if config.eval.posthoc not in POSTHOC:
        raise ValueError(f"unknown config.eval.posthoc={config.eval.posthoc!r}; allowed: {', '.join(POSTHOC)}")
    if config.eval.tau < 0:
        raise ValueError(f"config.eval.tau={config.eval.tau} must be >= 0")
    tau_search(config.eval)  # Names a bad list.
    if config.eval.posthoc == "tau_norm" and resolve_head(config.model.head, config.loss.name) != "linear":
        raise ValueError(f"config.eval.posthoc='tau_norm' needs a linear head; this run's is "
                         f"{resolve_head(config.model.head, config.loss.name)!r} (config.model.head="
                         f"{config.model.head!r}, config.loss.name={config.loss.name!r}), whose cosine logits "
                         "already use unit-norm class weights; allowed: config.model.head='linear'")
