"""RSG: the official pairing, the CESC and MV losses against a direct NCHW form of the official code, and runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from safa_jax import sharding
from safa_jax.config_checks import validate_config
from safa_jax.models.rsg import RsgModules, head_classes_by_count, rsg_augment, rsg_slots
from tests.helpers import tiny_config, tiny_data


@pytest.mark.parametrize("is_head, pairs", [
    # 5 heads, 2 tails: floor(5/2) = 2 chunks of 2 heads, each with both tails.
    ([1, 1, 1, 1, 1, 0, 0], [(0, 5), (1, 6), (2, 5), (3, 6)]),
    # 2 heads, 5 tails: floor(5/2) = 2 chunks of 2 tails, each with both heads; tail 6 unused.
    ([1, 1, 0, 0, 0, 0, 0], [(0, 2), (1, 3), (0, 4), (1, 5)]),
    ([1, 0, 0, 0], [(0, 1), (0, 2), (0, 3)]),
    ([0, 0, 0], []),
])
def test_slots_pair_heads_and_tails_as_the_official_code(is_head, pairs):
    head, tail, valid = (np.asarray(a) for a in rsg_slots(jnp.array(is_head, bool), 1.0))
    assert [(int(h), int(t)) for h, t, v in zip(head, tail, valid) if v] == pairs


def _official_losses(modules, features, labels, is_head, generate):
    """The official RSG.py's CESC and MV, in numpy on NCHW arrays (its `view(-1, C)` rows included)."""
    f = np.transpose(np.asarray(features, np.float64), (0, 3, 1, 2))  # NCHW
    num, C = f.shape[:2]
    weight, bias = np.asarray(modules.assign_weight[...]), np.asarray(modules.assign_bias[...])
    centers = np.asarray(modules.centers[...])
    logits = np.einsum("nc,ncj->nj", f.mean(axis=(2, 3)), weight[labels]) + bias[labels]
    gamma = np.exp(logits - logits.max(1, keepdims=True))
    gamma /= gamma.sum(1, keepdims=True)
    diff = f[:, None] - centers[labels][:, :, :, None, None]  # (N, n, C, H, W)
    cesc = np.sum(gamma[:, :, None, None, None] * diff**2) / num
    if not generate:
        return cesc, None
    heads, tails = np.flatnonzero(is_head), np.flatnonzero(~is_head)
    assert len(heads) == len(tails)  # one segment in this example
    o, t = f[heads], f[tails]
    c_o = centers[labels[heads], gamma[heads].argmax(1)][:, :, None, None]
    c_t = centers[labels[tails], gamma[tails].argmax(1)][:, :, None, None]
    var = o - c_o
    var_t = np.transpose(np.asarray(modules.transform(jnp.asarray(np.transpose(var, (0, 2, 3, 1)), jnp.float32))),
                         (0, 3, 1, 2)).astype(np.float64)
    q = np.asarray(modules.contrastive_logits(jnp.asarray(np.transpose(o, (0, 2, 3, 1)), jnp.float32),
                                              jnp.asarray(np.transpose(var_t, (0, 2, 3, 1)), jnp.float32)))
    ce = np.mean(-(q[:, 0] - np.log(np.exp(q).sum(1))))
    rows = lambda x: x.reshape(-1, C)  # noqa: E731  the official view(-1, C) of NCHW memory
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
    norms = np.sum(np.abs(np.linalg.norm(rows(var_t), axis=1) - np.linalg.norm(rows(var), axis=1)))
    direction = np.sum(np.abs(unit(rows(t - c_t)) * unit(rows(var_t)) - 1.0))
    return cesc, ce + (norms + direction) / len(tails)


@pytest.mark.parametrize("generate", [False, True])
def test_cesc_and_mv_match_the_official_form(generate):
    modules = RsgModules(4, 3, n_center=2, contrastive_width=5, rngs=nnx.Rngs(0))
    modules.centers.value = jax.random.normal(jax.random.key(1), modules.centers.value.shape)
    features = jax.random.normal(jax.random.key(2), (4, 2, 2, 4))
    labels = np.array([0, 0, 1, 2])
    is_head_class = np.array([True, False, False])
    out = rsg_augment(modules, features, jnp.asarray(labels), is_head_class, generate=generate, strength=1.0)
    cesc, mv = _official_losses(modules, features, labels, is_head_class[labels], generate)
    if not generate:  # plus the contrastive module's CE on (first half, second half) pairs: (0, 1), (0, 2)
        q = np.asarray(modules.contrastive_logits(features[:2], features[2:]))
        cesc += np.mean(-(q[:, 0] - np.log(np.exp(q).sum(1))))  # both pairs differ in class: target 0
        assert float(out.terms["mv"]) == 0.0
    else:
        assert float(out.terms["mv"]) == pytest.approx(mv, rel=1e-4)
        np.testing.assert_array_equal(out.weights, [1.0, 1.0, 0.0, 0.0])
        np.testing.assert_array_equal(out.labels[:2], [1, 2])
    assert float(out.terms["cesc"]) == pytest.approx(cesc, rel=1e-4)


def test_head_classes_are_the_largest_and_leave_a_tail():
    np.testing.assert_array_equal(head_classes_by_count([50, 500, 5, 20, 5000], 0.2), [False, False, False, False, True])
    np.testing.assert_array_equal(head_classes_by_count([3, 1], 0.9), [True, False])


def test_an_rsg_run_generates_from_its_start_epoch_and_trains_all_its_parts(tmp_path):
    from safa_jax.experiment import build_experiment
    from safa_jax.data.step_input import make_input
    from safa_jax.train import make_train_step

    mesh, data = sharding.make_mesh(), tiny_data()
    experiment, state = build_experiment(tiny_config(method="rsg", rsg__start_epoch=1), data=data, mesh=mesh)
    batch_input = make_input(experiment, start_step=0)
    for variant in (False, True):
        step = make_train_step(experiment, batch_input, variant=variant)
        before = jax.device_get(state.params["rsg"])  # the step donates its input state
        state, metrics = step(state, batch_input.batch_args(0), jax.random.key(0))
        assert np.isfinite(float(metrics["loss"]))
        moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                             before, jax.device_get(state.params["rsg"]))
        # As the official code's SGD: before generation T has no gradient and is skipped (no weight decay
        # either); from generation on the contrastive module is frozen; the centers always train.
        assert moved["transform"]["kernel"] == variant
        assert moved["contrastive_in"]["kernel"] == moved["contrastive_fc"]["kernel"] == (not variant)
        assert moved["centers"] and moved["assign_weight"]


@pytest.mark.parametrize("overrides, message", [
    ({"method": "rsg", "rsg__stage": 4}, "config.rsg.stage=4 is not a placement in resnet32"),
    ({"method": "rsg", "rsg__transfer_strength": 2.0}, "config.rsg.transfer_strength=2.0 must lie in"),
    ({"method": "rsg", "rsg__start_epoch": 9}, "config.rsg.start_epoch=9 is not in 0..config.num_epochs-1=3"),
])
def test_bad_rsg_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        validate_config(tiny_config(**overrides))
