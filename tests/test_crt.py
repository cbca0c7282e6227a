"""cRT: a finished run's backbone, frozen exactly; a fresh classifier trained alone; the errors of its fields."""

import jax
import numpy as np
import pytest

from safa_jax import checkpointing, sharding
from safa_jax.config_checks import validate_config
from safa_jax.experiment import build_experiment, restore_if_any
from safa_jax.train import train_and_evaluate
from tests.helpers import tiny_config, tiny_data


def _final_state(config, workdir, mesh, data):
    experiment, state = build_experiment(config, mesh=mesh, data=data)
    checkpoints = checkpointing.Checkpoints(workdir)
    try:
        return jax.device_get(restore_if_any(experiment, checkpoints, state))
    finally:
        checkpoints.close()


def _without_head(tree):
    return {name: sub for name, sub in tree.items() if name != "head"}


def test_crt_trains_only_a_fresh_classifier_on_the_frozen_backbone(tmp_path):
    mesh, data = sharding.make_mesh(), tiny_data()
    first = tiny_config(num_train_steps=3)
    train_and_evaluate(first, tmp_path / "first", mesh=mesh, data=data)
    trained = _final_state(first, tmp_path / "first", mesh, data)

    crt = tiny_config(num_train_steps=3, method="crt", init_from=str(tmp_path / "first"),
                      loss__train_rule="resample", loss__sampling_weights="inverse_count")
    _, start = build_experiment(crt, mesh=mesh, data=data)
    start = jax.device_get(start)
    summary = train_and_evaluate(crt, tmp_path / "crt", mesh=mesh, data=data)
    assert summary["step"] == 3
    done = _final_state(crt, tmp_path / "crt", mesh, data)

    backbone = lambda state: _without_head(state.params["backbone"])  # noqa: E731
    # The backbone starts as the first run's and is not changed by a bit: no gradient, no weight decay, no BN update.
    jax.tree.map(np.testing.assert_array_equal, backbone(start), backbone(trained))
    jax.tree.map(np.testing.assert_array_equal, backbone(done), backbone(trained))
    jax.tree.map(np.testing.assert_array_equal, done.batch_stats, trained.batch_stats)
    # The classifier starts fresh (not the first run's) and trains.
    head = lambda state: state.params["backbone"]["head"]["kernel"]  # noqa: E731
    assert not np.array_equal(head(start), head(trained))
    assert not np.array_equal(head(done), head(start))


@pytest.mark.parametrize("overrides, message", [
    ({"method": "crt", "loss__train_rule": "resample"}, "config.method='crt' re-trains the classifier of a finished run"),
    ({"method": "crt", "init_from": "RUN"}, "config.loss.train_rule='none'; allowed: --config.loss.train_rule=resample"),
    ({"init_from": "no/such/run"}, "config.init_from='no/such/run' holds no checkpoints folder"),
])
def test_bad_crt_configs_are_one_line_before_anything_is_built(tmp_path, overrides, message):
    if overrides.get("init_from") == "RUN":
        (tmp_path / "checkpoints").mkdir()
        overrides = dict(overrides, init_from=str(tmp_path))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_config(tiny_config(**overrides))


def test_init_from_a_run_of_another_width_names_the_first_differing_array(tmp_path):
    mesh, data = sharding.make_mesh(), tiny_data()
    train_and_evaluate(tiny_config(num_train_steps=1), tmp_path / "first", mesh=mesh, data=data)
    wider = tiny_config(num_train_steps=1, model__width=8, method="crt", init_from=str(tmp_path / "first"),
                        loss__train_rule="resample")
    with pytest.raises(ValueError, match=r"its backbone params/stages/0/.* has shape .*, this run's"):
        build_experiment(wider, mesh=mesh, data=data)
