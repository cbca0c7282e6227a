"""Checkpoints move between device counts: written on 8 devices, evaluated on 1, and the reverse."""

import jax
import pytest

from safa_jax import sharding
from safa_jax.evaluate import evaluate_checkpoint
from safa_jax.train import train_and_evaluate
from tests.helpers import tiny_config, tiny_data


@pytest.mark.parametrize("train_devices, eval_devices", [(8, 1), (1, 8)])
def test_checkpoint_restores_and_evaluates_on_another_device_count(tmp_path, train_devices, eval_devices):
    data = tiny_data(num_test_per_class=6)
    config = tiny_config(num_train_steps=3, method="safa", safa__start_epoch=0, eval_batch_size=8)
    trained = train_and_evaluate(config, tmp_path, mesh=sharding.make_mesh(jax.devices()[:train_devices]),
                                 data=data)
    restored = evaluate_checkpoint(config, tmp_path, mesh=sharding.make_mesh(jax.devices()[:eval_devices]),
                                   data=data)
    assert restored["step"] == trained["step"] == 3
    assert restored["num_examples"] == 24
    assert restored["per_class_accuracy"] == pytest.approx(trained["per_class_accuracy"])
