"""mixup: the mixed batch by hand, its two-label loss with class weights by hand, and a training run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safa_jax import sharding
from safa_jax.data.mixup import mix_batch, mixed_loss, validate_mixup_config
from safa_jax.losses.base import cross_entropy
from tests.helpers import tiny_config, tiny_data


def test_the_mixed_batch_is_lam_x_plus_one_minus_lam_partner_with_the_partner_labels():
    # One-hot rows: mixed row i is lam e_i + (1 - lam) e_perm(i), so lam and the partner can be read back.
    x, y = jnp.eye(6), jnp.array([0, 1, 2, 0, 1, 2])
    mixed, y_partner, lam = mix_batch(x, y, jax.random.key(3), alpha=1.0)
    mixed, lam = np.asarray(mixed), float(lam)
    assert 0.0 < lam < 1.0
    partner = np.array([next((j for j in np.flatnonzero(row) if j != i), i) for i, row in enumerate(mixed)])
    assert sorted(partner) == list(range(6))  # a permutation
    for i, row in enumerate(mixed):
        expected = lam * np.eye(6)[i] + (1.0 - lam) * np.eye(6)[partner[i]]
        np.testing.assert_allclose(row, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(y_partner, np.asarray(y)[partner])


def test_mixup_lam_follows_beta_alpha_alpha():
    lams = jax.vmap(lambda k: mix_batch(jnp.ones((2, 1)), jnp.zeros(2, jnp.int32), k, alpha=0.5)[2])(
        jax.random.split(jax.random.key(0), 4000))
    # Beta(0.5, 0.5): mean 1/2, variance 1/8 (sd of the 4,000-draw mean 0.0056); P(lam < 0.1) = 0.2048.
    assert abs(float(lams.mean()) - 0.5) < 0.025
    assert abs(float(lams.var()) - 0.125) < 0.01
    assert abs(float((lams < 0.1).mean()) - 0.2048) < 0.03


def test_the_mixed_loss_applies_each_labels_class_weights_by_hand():
    # Two samples, 3 classes, lam = 0.3, class weights (1, 2, 4).
    logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    y, y_partner, weights = jnp.array([0, 2]), jnp.array([1, 0]), jnp.array([1.0, 2.0, 4.0])
    log_p = np.asarray(jax.nn.log_softmax(logits))
    # Weighted CE as PyTorch's: sum w_y ce / sum w_y, per term.
    term_y = (1.0 * -log_p[0, 0] + 4.0 * -log_p[1, 2]) / (1.0 + 4.0)
    term_partner = (2.0 * -log_p[0, 1] + 1.0 * -log_p[1, 0]) / (2.0 + 1.0)
    loss = mixed_loss(lambda z, labels, s, e: cross_entropy(z, labels, class_weights=weights, sample_weights=s),
                      logits, y, y_partner, jnp.float32(0.3), jnp.ones(2), 0)
    assert float(loss) == pytest.approx(0.3 * term_y + 0.7 * term_partner, rel=1e-6)


@pytest.mark.parametrize("overrides, message", [
    ({"data__mixup_alpha": -1.0}, "config.data.mixup_alpha=-1.0 must be a number >= 0"),
    ({"data__mixup_alpha": 1.0, "method": "safa"}, "config.data.mixup_alpha=1.0 with config.method='safa'"),
])
def test_bad_mixup_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        validate_mixup_config(tiny_config(**overrides))


def test_a_mixup_step_differs_from_the_plain_step_and_a_mixup_run_trains_and_evaluates(tmp_path):
    from safa_jax.experiment import build_experiment
    from safa_jax.data.step_input import make_input
    from safa_jax.train import make_train_step, train_and_evaluate

    mesh, data = sharding.make_mesh(), tiny_data()
    losses = {}
    for alpha in (0.0, 1.0):
        config = tiny_config(data__mixup_alpha=alpha, loss__name="ldam", loss__train_rule="drw")
        experiment, state = build_experiment(config, data=data, mesh=mesh)
        batch_input = make_input(experiment, start_step=0)
        step = make_train_step(experiment, batch_input, variant=False)
        _, step_metrics = step(state, batch_input.batch_args(0), jax.random.key(0))
        losses[alpha] = float(step_metrics["classification_loss"])
    assert np.isfinite(losses[1.0]) and losses[1.0] != losses[0.0]  # same state, same batch: only mixup differs
    config = tiny_config(num_train_steps=4, data__mixup_alpha=1.0, loss__name="ldam", loss__train_rule="drw")
    summary = train_and_evaluate(config, tmp_path / "mixup", mesh=mesh, data=data)
    assert summary["step"] == 4 and 0.0 <= summary["top1_accuracy"] <= 100.0
