"""The train step and loop: schedule, optimizer, 8 devices vs 1, resume, exact evaluation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safa_jax import evaluate, sharding
from safa_jax.experiment import build_experiment, learning_rate_schedule, make_optimizer
from safa_jax.data.step_input import make_input
from safa_jax.train import make_train_step, train_and_evaluate
from tests.helpers import tiny_config, tiny_data


def test_learning_rate_schedule_matches_ldam_drw_reference():
    """The reference: e+1 <= 5 -> lr*(e+1)/5; e >= 180 -> lr*1e-4; e >= 160 -> lr*0.01 (0-based epoch e)."""
    from configs import common
    optim = common.get_config().optim
    schedule = learning_rate_schedule(optim, steps_per_epoch=10)

    def reference(epoch):
        if epoch + 1 <= 5:
            return 0.1 * (epoch + 1) / 5
        if epoch + 1 > 180:
            return 0.1 * 0.0001
        if epoch + 1 > 160:
            return 0.1 * 0.01
        return 0.1

    for epoch in (0, 1, 4, 5, 100, 159, 160, 179, 180, 199):
        for step in (epoch * 10, epoch * 10 + 9):
            np.testing.assert_allclose(float(schedule(step)), reference(epoch), rtol=1e-6)


def test_optimizer_is_pytorch_sgd_with_l2_weight_decay():
    """Two steps of PyTorch SGD(momentum=0.9, weight_decay=wd) computed by hand."""
    config = tiny_config()
    config.optim.warmup_epochs = 0
    config.optim.decay_epochs = ()
    config.optim.decay_factors = ()
    tx = make_optimizer(config.optim, steps_per_epoch=1)
    p = jnp.array([1.0, -2.0])
    g1, g2 = jnp.array([0.5, 0.25]), jnp.array([-1.0, 2.0])
    state = tx.init(p)
    u, state = tx.update(g1, state, p)
    p1 = p + u
    u, state = tx.update(g2, state, p1)
    p2 = p1 + u
    lr, m, wd = 0.1, 0.9, 2e-4
    buf = np.array(g1) + wd * np.array(p)
    e1 = np.array(p) - lr * buf
    buf = m * buf + np.array(g2) + wd * e1
    e2 = e1 - lr * buf
    np.testing.assert_allclose(p1, e1, rtol=1e-6)
    np.testing.assert_allclose(p2, e2, rtol=1e-6)


@pytest.mark.parametrize("safa", [False, True], ids=["plain", "safa"])
def test_eight_devices_match_one(safa):
    """The sharded step is the single-device step: from each state of a 3-step 1-device run, one step on an
    8-device mesh (global-view jit) gives the same metrics and next state.

    Both sides use XLA's convolutions ("auto" would pick oneDNN on one device only), so the comparison is of
    the sharding alone (oneDNN against XLA is tests/test_conv_backend.py's). Each step starts from the
    1-device state rather than from its own previous result: this tiny SAFA run is chaotic (a 1e-7 rounding
    difference in one step's gradients becomes 3e-4 in the next step's), so comparing whole runs would test
    the summation order of XLA's reductions rather than the sharding.
    """
    assert jax.device_count() >= 8, "conftest sets 8 fake CPU devices"
    config = tiny_config(method="safa" if safa else "plain", safa__start_epoch=0, loss__name="ldam", loss__train_rule="drw",
                         model__conv_backend="xla")
    data = tiny_data()
    steppers = {}
    for devices in (1, 8):
        mesh = sharding.make_mesh(jax.devices()[:devices])
        experiment, state = build_experiment(config, data=data, mesh=mesh)
        batch_input = make_input(experiment, start_step=0)
        steppers[devices] = (mesh, batch_input, make_train_step(experiment, batch_input, variant=safa), state)
    key = jax.random.key(config.seed)
    mesh_one, input_one, step_one, state = steppers[1]
    mesh_eight, input_eight, step_eight, _ = steppers[8]
    for index in range(3):
        host_state = jax.device_get(state)
        state, metrics_one = step_one(state, input_one.batch_args(index), key)
        next_eight, metrics_eight = step_eight(sharding.put_replicated(host_state, mesh_eight),
                                               input_eight.batch_args(index), key)
        for name in ("loss", "grad_norm", "classification_loss"):
            np.testing.assert_allclose(metrics_one[name], metrics_eight[name], rtol=1e-5, err_msg=name)
        # A step moves a parameter by about lr * |g| ~ 0.1; a float32 gradient summed in another order differs
        # by up to ~1e-4 of itself on this tiny batch, hence atol 1e-5 on parameters and momenta of order 1.
        for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(jax.device_get(next_eight))):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    if safa:
        assert "safa" in state.params
        assert metrics_one["safa/valid_slots"] > 0


def test_resumed_run_matches_uninterrupted(tmp_path):
    """Stop after 3 steps (a checkpoint), resume to 7; parameters equal an uninterrupted 7-step run."""
    data = tiny_data()
    mesh = sharding.make_mesh(jax.devices()[:2])
    base = dict(num_train_steps=7, method="safa", safa__start_epoch=1)
    train_and_evaluate(tiny_config(**base), tmp_path / "straight", mesh=mesh, data=data)
    train_and_evaluate(tiny_config(**dict(base, num_train_steps=3)), tmp_path / "resumed", mesh=mesh, data=data)
    train_and_evaluate(tiny_config(**base), tmp_path / "resumed", mesh=mesh, data=data)
    from safa_jax.checkpointing import Checkpoints
    straight, resumed = Checkpoints(tmp_path / "straight"), Checkpoints(tmp_path / "resumed")
    assert straight.latest_step() == resumed.latest_step() == 7
    assert 3 in resumed.all_steps()
    experiment, state = build_experiment(tiny_config(**base), data=data, mesh=mesh)
    from safa_jax.checkpointing import abstract_like
    abstract = abstract_like(state, sharding.replicated(mesh))
    a = straight.restore(7, abstract)
    b = resumed.restore(7, abstract)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
    results = json.loads((tmp_path / "resumed" / "eval_results.json").read_text())
    assert results["step"] == 7
    # The logged windows too: each ends at a multiple of log_every_steps and at every checkpoint, so the
    # resumed run's curves are the uninterrupted run's (steps 2, 3, 4, 6, 7 here).
    assert _logged(tmp_path / "straight", "loss") == _logged(tmp_path / "resumed", "loss")
    assert [step for step, _ in _logged(tmp_path / "straight", "loss")] == [2, 3, 4, 6, 7]


def _logged(workdir, tag):
    """(step, value) of a scalar in a run folder's TensorBoard event files (all sessions)."""
    from tensorboard.backend.event_processing import event_accumulator
    events = event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    if tag in events.Tags().get("scalars", []):
        return [(e.step, round(e.value, 5)) for e in events.Scalars(tag)]
    import tensorflow as tf
    return [(e.step, round(float(tf.make_ndarray(e.tensor_proto)), 5)) for e in events.Tensors(tag)]


def test_train_batches_visit_each_example_once_per_epoch():
    """The step's batches, with the per-step keys a run uses, cover each epoch without a repeat."""
    config = tiny_config(batch_size=8)  # 41 examples: 5 batches an epoch, 1 left out
    experiment, _ = build_experiment(config, data=tiny_data(), mesh=sharding.make_mesh(jax.devices()[:1]))
    batch_input = make_input(experiment, start_step=0)
    indices = jax.jit(batch_input.batch_indices)
    spe = experiment.steps_per_epoch

    def epoch(number):
        steps = range(number * spe, (number + 1) * spe)
        return np.concatenate([np.asarray(indices(batch_input.batch_args(step), jax.random.key(step), step, number))
                               for step in steps]).tolist()

    first, second = epoch(0), epoch(1)
    assert len(first) == len(set(first)) == spe * 8 == 40
    assert len(set(second)) == 40 and second != first
    assert epoch(0) == first  # the same order again: it depends on the seed and the epoch only


def test_eval_counts_every_example_once_with_a_partial_last_batch():
    """23 test examples at batch 7 on 8 devices (padded to 8): each example counted exactly once."""
    import dataclasses
    full = tiny_data(num_test_per_class=6)
    data = dataclasses.replace(full, test_images=full.test_images[:23], test_labels=full.test_labels[:23])
    mesh = sharding.make_mesh(jax.devices()[:8])
    batches = list(data.test_batches(batch_size=8))
    assert [len(b[0]) for b in batches] == [8, 8, 8]
    assert [int(b[2].sum()) for b in batches] == [8, 8, 7]
    assert not batches[-1][0][7].any() and batches[-1][1][7] == 0  # the padding: a zero image of label 0
    halves = [list(data.test_batches(batch_size=8, process_index=p, process_count=2)) for p in (0, 1)]
    for whole, first, second in zip(batches, *halves):  # two processes read the two halves of each batch
        for part in range(3):
            np.testing.assert_array_equal(np.concatenate([first[part], second[part]]), whole[part])

    def predict_class_zero(params, stats, images):
        """A "model" that predicts class 0 for every image: correct = the number of class-0 examples."""
        return jnp.zeros((images.shape[0], data.num_classes)).at[:, 0].set(1.0)

    correct, total = evaluate.count_correct(predict_class_zero, None, None, data, 7, mesh)
    assert total.tolist() == [6, 6, 6, 5]
    assert correct.tolist() == [6, 0, 0, 0]

    experiment, state = build_experiment(tiny_config(), data=data, mesh=mesh)
    predict = evaluate.make_predict_fn(experiment.backbone, data.mean, data.std)
    correct, total = evaluate.count_correct(predict, state.params["backbone"], state.batch_stats["backbone"],
                                            data, 7, mesh)
    logits = predict(state.params["backbone"], state.batch_stats["backbone"], data.test_images)
    expected = np.bincount(data.test_labels[np.argmax(np.asarray(logits), -1) == data.test_labels], minlength=4)
    assert total.tolist() == [6, 6, 6, 5] and correct.tolist() == expected.tolist()


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    """A run that goes non-finite stops with a clear error; the last good checkpoint stays the latest."""
    import dataclasses
    from safa_jax.checkpointing import Checkpoints
    from safa_jax.train import NonFiniteLossError
    mesh = sharding.make_mesh(jax.devices()[:1])
    data = tiny_data()
    train_and_evaluate(tiny_config(num_train_steps=2, checkpoint_every_steps=2), tmp_path, mesh=mesh, data=data)
    poisoned = dataclasses.replace(data, std=(0.0, 0.0, 0.0))  # x / 0: infinite inputs, NaN loss.
    with pytest.raises(NonFiniteLossError, match=r"last good checkpoint \(step 2\) is kept"):
        train_and_evaluate(tiny_config(num_train_steps=6, checkpoint_every_steps=2, log_every_steps=1), tmp_path,
                           mesh=mesh, data=poisoned)
    checkpoints = Checkpoints(tmp_path)
    assert checkpoints.all_steps() == [2]
    experiment, state = build_experiment(tiny_config(), data=data, mesh=mesh)
    from safa_jax.checkpointing import abstract_like
    restored = checkpoints.restore(2, abstract_like(state, sharding.replicated(mesh)))
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(restored.params))
