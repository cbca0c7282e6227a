"""Training: one jitted, sharded step that draws, augments and classifies a batch, for any training method.

The whole (small, long-tailed) training set lives on the devices as uint8; each step draws its batch
inside jit from `fold_in(seed, step)`, so the input never stalls the step and a resumed run sees exactly
the batches of an uninterrupted one. The method (`config.method`, safa_jax/methods/) gives the step its
classification batch and own loss; a method with compiled variants (SAFA's, before and after its augmented
features join the classification loss) names the one each epoch uses, and the host compiles each once.
"""

import contextlib
import datetime
import json
import logging
import pathlib
import time
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from safa_jax import (checkpointing, console, curves, epoch_log, evaluate, metrics, provenance, run_lock, sharding,
                      stop_signals)
from safa_jax.config_checks import validate_config
from safa_jax.data import mixup
from safa_jax.data.step_input import StepInput, make_input
from safa_jax.data.dataset import Dataset
from safa_jax.experiment import (Experiment, build_experiment, config_record, keep_frozen, learning_rate_schedule,
                                 restore_if_any, split_record)
from safa_jax.losses.base import make_base_loss
from safa_jax.precision import Precision
from safa_jax.state import NnxBridge, TrainState, count_params


MIXUP_STREAM = 1  # fold_in data of a step's key for its mixup draw (the batch and method keys come from a split).
GUARDED_METRICS = ("loss", "grad_norm")  # a NaN gradient corrupts the parameters even while the loss looks fine.


class TrainingStopped(Exception):
    """Training stopped before its end; the message says why, where, and what is on disk."""


class NonFiniteLossError(TrainingStopped):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class StoppedBySignal(TrainingStopped):
    """SIGTERM or SIGINT: a checkpoint was saved at the current step."""


def make_train_step(experiment: Experiment, batch_input: StepInput, *,
                    variant: Hashable = None) -> Callable:
    """jit(state, batch_args, seed_key) -> (state, metrics); `batch_args` from `batch_input.batch_args(step)`.

    `variant`: the method's compiled variant (`experiment.method.variant_at(epoch)`; SAFA: whether its
    augmented features join the classification loss).
    """
    config, mesh = experiment.config, experiment.mesh
    spe = experiment.steps_per_epoch
    base_loss = make_base_loss(config.loss, experiment.data.class_counts)
    method = experiment.method
    batch_sharding = sharding.batch_sharded(mesh)
    schedule = learning_rate_schedule(config.optim, spe)
    precision = Precision.from_config(config.model)
    mixup_alpha = float(config.data.mixup_alpha)

    def loss_fn(params, batch_stats, x, y, epoch, key, mixed_with=None):
        """`mixed_with`: (partner labels, lam) of a mixup batch, whose loss mixes the two labels' losses."""
        # bfloat16 compute: cast here, inside the differentiated function, so gradients come back float32.
        params, x = precision.to_compute(params), precision.to_compute(x)
        backbone = experiment.backbone.merge(params["backbone"], batch_stats["backbone"])
        batch = method.classifier_batch(backbone, params.get(method.name), batch_stats.get(method.name), x, y, key,
                                        variant=variant, precision=precision)
        new_stats = {"backbone": NnxBridge.batch_stats_of(backbone)}
        if method.bridge is not None:
            new_stats[method.name] = batch.batch_stats
        aux = dict(batch.metrics)
        logits = precision.to_float32(batch.logits)
        real_logits = logits[:y.shape[0]]
        hits = jnp.argmax(real_logits, -1) == y
        if mixed_with is None:
            cls_loss = base_loss(logits, batch.labels, batch.sample_weights, epoch, batch.class_weighted)
        else:  # mixup, with the plain method only (config check): the logits are the real batch's.
            y_partner, lam = mixed_with
            cls_loss = mixup.mixed_loss(base_loss, logits, y, y_partner, lam, batch.sample_weights, epoch)
            hits = lam * hits + (1.0 - lam) * (jnp.argmax(real_logits, -1) == y_partner)
        aux["classification_loss"] = cls_loss
        aux["train_accuracy"] = jnp.mean(hits) * 100.0
        return cls_loss + batch.extra_loss, (new_stats, aux)

    def step_fn(state: TrainState, batch_args, seed_key):
        step = state.step
        epoch = step // spe
        key = jax.random.fold_in(seed_key, step)
        k_batch, k_method = jax.random.split(key)
        x, y = batch_input.draw(batch_args, k_batch, step, epoch)
        x = jax.lax.with_sharding_constraint(x, batch_sharding)
        y = jax.lax.with_sharding_constraint(y, batch_sharding)
        mixed_with = None
        if mixup_alpha > 0:  # its own key stream, so runs without mixup draw exactly what they drew before
            x, y_partner, lam = mixup.mix_batch(x, y, jax.random.fold_in(key, MIXUP_STREAM), alpha=mixup_alpha)
            x = jax.lax.with_sharding_constraint(x, batch_sharding)
            mixed_with = (jax.lax.with_sharding_constraint(y_partner, batch_sharding), lam)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (new_stats, aux)), grads = grad_fn(state.params, state.batch_stats, x, y, epoch, k_method, mixed_with)
        updates, opt_state = experiment.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        frozen = method.frozen(state.params, variant)
        if frozen is not None:
            params, opt_state = keep_frozen(experiment.optimizer, frozen, params, state.params, opt_state,
                                            state.opt_state)
        metrics_out = dict(aux, loss=loss, learning_rate=schedule(step), grad_norm=optax.global_norm(grads))
        new_state = TrainState(step=step + 1, params=params, batch_stats=new_stats, opt_state=opt_state)
        return new_state, metrics_out

    replicated = sharding.replicated(mesh)
    return jax.jit(step_fn, donate_argnums=0, out_shardings=(replicated, replicated))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       *, mesh: jax.sharding.Mesh | None = None,
                       data: Dataset | None = None) -> dict[str, Any]:
    """Trains (resuming from the run folder's latest checkpoint if any), evaluates, returns the final summary.

    `mesh` and `data` default to all devices and `config.data`; tests pass small ones. Process 0 holds the
    run folder's lock throughout (a local folder; see `run_lock`). SIGTERM/SIGINT stop after the current
    step with a checkpoint there (`StoppedBySignal`).
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lock = run_lock.RunLock(workdir) if jax.process_index() == 0 and "://" not in str(workdir) else None
    with lock or contextlib.nullcontext(), stop_signals.StopRequest() as stop:
        return _train(config, workdir, mesh=mesh, data=data, stop=stop)


def _train(config, workdir: pathlib.Path, *, mesh, data, stop: stop_signals.StopRequest) -> dict[str, Any]:
    validate_config(config)
    checkpoints = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
    try:
        _refuse_other_model_early(config, checkpoints)
        return _train_built(config, workdir, checkpoints, mesh=mesh, data=data, stop=stop)
    finally:
        checkpoints.wait()
        checkpoints.close()


def _refuse_other_model_early(config, checkpoints: checkpointing.Checkpoints) -> None:
    """A resume into another model is refused before the model is built (a corrupt newest checkpoint is left
    to `restore_if_any`, which skips it)."""
    latest = checkpoints.latest_step()
    if latest is None:
        return
    try:
        saved = checkpoints.metadata(latest)
    except checkpointing.CheckpointCorruptError:
        return
    checkpointing.check_compatible_before_building(saved["config"], config_record(config), checkpoints.directory)


def _train_built(config, workdir: pathlib.Path, checkpoints: checkpointing.Checkpoints, *, mesh, data,
                 stop: stop_signals.StopRequest) -> dict[str, Any]:
    experiment, state = build_experiment(config, mesh=mesh, data=data)
    config, data = experiment.config, experiment.data
    is_main = jax.process_index() == 0
    if is_main:
        (workdir / "config.json").write_text(json.dumps(config_record(config), indent=2))
        (workdir / "split.json").write_text(json.dumps(split_record(data)))
    logging.info("Data %s: %d train images in %d classes (counts %s ... %s), %d test images",
                 config.data.source, len(data.train_labels), data.num_classes, data.class_counts[:3].tolist(),
                 data.class_counts[-3:].tolist(), len(data.test_labels))
    logging.info("Backbone %s: %d parameters; method %s%s", config.model.name, count_params(state.params["backbone"]),
                 config.method, "".join(f", {name} modules: {count_params(p)} parameters"
                                        for name, p in state.params.items() if name != "backbone"))

    return _train_loop(experiment, state, checkpoints, workdir, stop)


def _train_loop(experiment: Experiment, state: TrainState, checkpoints: checkpointing.Checkpoints,
                workdir: pathlib.Path, stop: stop_signals.StopRequest) -> dict[str, Any]:
    config, data = experiment.config, experiment.data
    is_main = jax.process_index() == 0
    state = restore_if_any(experiment, checkpoints, state)
    metadata = {"config": config_record(config), "split": split_record(data)}
    writer = metrics.create_writer(workdir, is_main_process=is_main)
    if int(state.step) == 0:
        writer.write_hparams({k: v for k, v in config_record(config).items() if not isinstance(v, dict)})

    batch_input = make_input(experiment, start_step=int(state.step))
    seed_key = jax.random.key(config.seed)
    steps: dict[Hashable, Callable] = {}  # the method's compiled variants, each made when first used
    predict = evaluate.make_predict_fn(experiment.backbone, data.mean, data.std,
                                       compute_dtype=config.model.compute_dtype)
    out = console.Console(enabled=is_main)
    progress = console.ProgressBar(experiment.num_train_steps, steps_per_epoch=experiment.steps_per_epoch,
                                   batch_size=config.batch_size, writer=writer, console=out)

    spe = experiment.steps_per_epoch
    pending: list[dict[str, jax.Array]] = []
    epoch_metrics: list[dict[str, jax.Array]] = []
    step = int(state.step)
    if is_main:
        provenance.record_start(workdir, start_step=step, device=jax.devices()[0].device_kind)
    out.line(f"{workdir}: {config.model.name}{experiment.method.label}, {len(data.train_labels)} training "
             f"images in {data.num_classes} classes, {experiment.num_train_steps} steps, "
             f"{experiment.layer_ops.convolutions} convolutions"
             + (f"; resuming at step {step}" if step else ""))
    start_time = epoch_start = time.time()
    final = None
    while step < experiment.num_train_steps:
        epoch = step // spe
        variant = experiment.method.variant_at(epoch)
        if variant not in steps:
            steps[variant] = make_train_step(experiment, batch_input, variant=variant)
        state, step_metrics = steps[variant](state, batch_input.batch_args(step), seed_key)
        pending.append(step_metrics)
        epoch_metrics.append(step_metrics)
        step += 1
        progress(step)
        end_of_epoch = step % spe == 0
        last_step = step == experiment.num_train_steps
        # One process looks at its own signal flag every step; several agree on it at the logging steps.
        single = jax.process_count() == 1
        stop_for = stop.agreed(jax.process_count()) if single or step % config.log_every_steps == 0 else None
        save_now = (step % config.checkpoint_every_steps == 0 or last_step or stop_for is not None
                    or (end_of_epoch and _every(config.checkpoint_every_epochs, step // spe)))
        # Log windows also end at every checkpoint, so a resumed run logs the same windows as an uninterrupted one.
        if step % config.log_every_steps == 0 or last_step or save_now:
            summary = _means(pending)
            pending = []
            _check_finite(summary, step, checkpoints)
            writer.write_scalars(step, dict(summary, epoch=epoch))
            progress.loss = summary["loss"]
        if save_now:
            _check_finite(_latest_loss(step_metrics), step, checkpoints)
            checkpoints.save(step, state, metadata)
        if stop_for is not None:
            checkpoints.wait()
            writer.flush()
            out.close()
            raise StoppedBySignal(
                f"{stop_for} at step {step} of {experiment.num_train_steps} (epoch {epoch}); the checkpoint of step "
                f"{checkpoints.latest_step()} is in {checkpoints.directory}. Run the same command to resume.")
        if end_of_epoch or last_step:
            train_means = _means(epoch_metrics)  # Waits for the epoch's steps: train_seconds is their wall time.
            train_seconds = time.time() - epoch_start
            test, eval_seconds = None, 0.0
            if last_step or evaluate_after_epoch(config, epoch):
                eval_start = time.time()
                test = evaluate.evaluate_state(experiment, state, predict)
                eval_seconds = time.time() - eval_start
                writer.write_scalars(step, {f"test/{k}": v for k, v in test.items() if isinstance(v, float)})
            images = len(epoch_metrics) * config.batch_size
            if is_main:
                epoch_log.append_epoch(workdir, epoch_log.epoch_row(
                    epoch=epoch, step=step, train_seconds=train_seconds, images=images, train_means=train_means,
                    test=test, eval_seconds=eval_seconds))
            out.line(console.epoch_summary(epoch, config.num_epochs, train_means, images / train_seconds, test))
            final = test if last_step else final
            epoch_metrics = []
            epoch_start = time.time()
    checkpoints.wait()
    out.close()
    logging.info("Training done: %d steps in %.1f s this session", step, time.time() - start_time)
    if final is None:  # Nothing left to train (a finished run started again): evaluate what was restored.
        final = evaluate.evaluate_state(experiment, state, predict)
        writer.write_scalars(step, {f"test/{k}": v for k, v in final.items() if isinstance(v, float)})
    writer.flush()
    if is_main:
        metrics.write_summary(final, data.class_names, workdir)
        figure = curves.plot_training_curves(workdir)
        out.line(f"{workdir}: trained to step {step} in {datetime.timedelta(seconds=round(time.time() - start_time))} "
                 f"this session; results in eval_results.txt, curves in {figure.name}")
        epoch_log.mark_done(workdir, step)
    return final


def evaluate_after_epoch(config: ml_collections.ConfigDict, epoch: int) -> bool:
    """Whether the test set is evaluated after (0-based) `epoch`: every `eval_every_epochs` epochs, and after
    every epoch from `eval_every_epoch_from` on (-1: never), so that a best-epoch figure has epochs to choose from."""
    if _every(config.eval_every_epochs, epoch + 1):
        return True
    return 0 <= config.eval_every_epoch_from <= epoch


def _every(period: int, count: int) -> bool:
    return period > 0 and count % period == 0


def _means(step_metrics: list[dict[str, jax.Array]]) -> dict[str, float]:
    return {k: float(np.mean(v)) for k, v in jax.device_get(_stack(step_metrics)).items()}


def _stack(pending: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
    return {k: jnp.stack([m[k] for m in pending]) for k in pending[0]}


def _latest_loss(step_metrics: dict[str, jax.Array]) -> dict[str, float]:
    return {k: float(step_metrics[k]) for k in GUARDED_METRICS}


def _check_finite(summary: dict[str, float], step: int, checkpoints: checkpointing.Checkpoints) -> None:
    """Raises NonFiniteLossError naming the checkpoint that really is on disk (pending saves finished first)."""
    bad = {k: summary[k] for k in GUARDED_METRICS if not np.isfinite(summary[k])}
    if bad:
        checkpoints.wait()
        on_disk = checkpoints.latest_step()
        kept = (f"the last good checkpoint (step {on_disk}) is kept in {checkpoints.directory}"
                if on_disk is not None else "no checkpoint had been written yet")
        described = ", ".join(f"{k} became {v}" for k, v in bad.items())
        raise NonFiniteLossError(
            f"training stopped at step {step}: {described}. {kept}. "
            "Lower config.optim.learning_rate or check the data (e.g. a zero in config.data.std).")
