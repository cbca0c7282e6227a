"""Checks of a config that run before any data is read or any model is compiled.

Each error names the field, the bad value and what is allowed. Checks that need the data (a head ratio
that leaves no tail class, a dataset smaller than a batch) run right after loading, still before training.
"""

from safa_jax.data.mixup import validate_mixup_config
from safa_jax.data.sources import validate_data_config
from safa_jax.data.streaming import validate_stream_config
from safa_jax.losses.base import POSTHOC, tau_search, validate_loss_config
from safa_jax.models import HEADS, MODEL_NAMES, NUM_STAGES
from safa_jax.models.heads import resolve_head
from safa_jax.models.batch_norm import validate_batch_norm_form
from safa_jax.models.conv_backend import validate_conv_backend
from safa_jax.models.safa import SAFA_KERNEL_SIZES, UPPER_BN_STATS
from safa_jax.models.safa_pairing import Q_PAIRS, TAIL_SAMPLING
from safa_jax.models.torch_import import read_pretrained_info
from safa_jax.precision import Precision

DATA_PIPELINES = ("memory", "stream")


def _positive_int(value, field: str) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"config.{field} must be a positive integer, got {value!r}")


def validate_config(config) -> None:
    """Raises ValueError on the first problem found in `config`."""
    if config.data.pipeline not in DATA_PIPELINES:
        raise ValueError(f"unknown config.data.pipeline={config.data.pipeline!r}; "
                         f"allowed: {', '.join(DATA_PIPELINES)}")
    if config.data.pipeline == "stream":
        validate_stream_config(config.data)
    else:
        validate_data_config(config.data)
    if config.model.name not in MODEL_NAMES:
        raise ValueError(f"unknown model config.model.name={config.model.name!r}; "
                         f"allowed: {', '.join(MODEL_NAMES)}")
    if config.model.head not in (*HEADS, "auto"):
        raise ValueError(f"unknown config.model.head={config.model.head!r}; "
                         f"allowed: {', '.join((*HEADS, 'auto'))}")
    _positive_int(config.model.width, "model.width")
    if config.model.init_checkpoint:
        recorded = read_pretrained_info(config.model.init_checkpoint)["model"]
        if recorded != config.model.name:
            raise ValueError(f"config.model.init_checkpoint={config.model.init_checkpoint!r} holds {recorded} "
                             f"weights, but config.model.name={config.model.name!r}")
    if not config.model.init_checkpoint and not config.model.allow_random_init:
        raise ValueError("this recipe trains from pretrained weights and config.model.init_checkpoint is empty: give "
                         "a folder written by `python -m safa_jax.convert_torchvision`, or pass "
                         "--config.model.allow_random_init=True to train from random weights")
    _positive_int(config.model.blocks_per_stage, "model.blocks_per_stage")
    Precision.from_config(config.model)  # Names an unknown compute_dtype and the allowed ones.
    validate_conv_backend(config.model)
    validate_batch_norm_form(config.model.batch_norm)
    validate_loss_config(config.loss, num_classes=None)
    validate_mixup_config(config)
    for field in ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps",
                  "checkpoint_every_steps", "keep_checkpoints"):
        _positive_int(config[field], field)
    if config.num_train_steps != -1:
        _positive_int(config.num_train_steps, "num_train_steps (or -1 for no cap)")
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
    _validate_safa(config.safa)
    if config.safa.enabled and config.safa.stage > NUM_STAGES[config.model.name]:
        raise ValueError(f"config.safa.stage={config.safa.stage} is not a placement in {config.model.name}; "
                         f"allowed: 1..{NUM_STAGES[config.model.name]} (after that stage)")
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
    if config.safa.enabled and config.safa.start_epoch >= config.num_epochs:
        raise ValueError(f"config.safa.start_epoch={config.safa.start_epoch} is not before "
                         f"config.num_epochs={config.num_epochs}: SAFA's augmented features would never join the "
                         "classification loss (the baseline at SAFA's cost); allowed: start_epoch < num_epochs")


def _validate_safa(safa) -> None:
    if not isinstance(safa.stage, int) or safa.stage < 1:
        raise ValueError(f"config.safa.stage={safa.stage!r} is not a placement; allowed: the number of a "
                         "backbone stage to insert after (1, 2 or 3 for ResNet-32; 1-4 for ResNet-50/152)")
    if not 0.0 < safa.head_ratio < 1.0:
        raise ValueError(f"config.safa.head_ratio={safa.head_ratio} must lie in (0, 1)")
    if safa.num_slots != -1:
        _positive_int(safa.num_slots, "safa.num_slots (or -1 for batch_size // 2)")
    if safa.q_width != -1:
        _positive_int(safa.q_width, "safa.q_width (or -1 for the feature's channel count)")
    if safa.kernel_size not in SAFA_KERNEL_SIZES:
        raise ValueError(f"config.safa.kernel_size={safa.kernel_size!r}; "
                         f"allowed: {', '.join(map(str, SAFA_KERNEL_SIZES))}")
    if safa.start_epoch < 0:
        raise ValueError(f"config.safa.start_epoch must be >= 0, got {safa.start_epoch}")
    for field, allowed in (("tail_sampling", TAIL_SAMPLING), ("upper_bn_stats", UPPER_BN_STATS),
                           ("q_pairs", Q_PAIRS)):
        if safa[field] not in allowed:
            raise ValueError(f"unknown config.safa.{field}={safa[field]!r}; allowed: {', '.join(allowed)}")
    if safa.delta_channels != -1:
        _positive_int(safa.delta_channels, "safa.delta_channels (or -1 for the feature's channel count)")
    if safa.ms_eps <= 0:
        raise ValueError(f"config.safa.ms_eps must be > 0, got {safa.ms_eps}")
    for name in ("lambda_reconstruction", "lambda_contrastive", "lambda_ms_head", "lambda_ms_tail"):
        if safa[name] < 0:
            raise ValueError(f"config.safa.{name} must be >= 0, got {safa[name]}")
