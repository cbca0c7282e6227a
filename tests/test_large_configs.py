"""Each large-scale config loads its data, builds its model and pipeline, trains two steps and evaluates.

The real datasets cannot be downloaded here, so iNaturalist 2018 comes from tfds's mock data and
ImageNet-LT / Places-LT from list files and JPEG trees the tests write. Only the sizes shrink (image
size, width, batch); the data source, pipeline, model family, loss and schedule are the config's own.
"""

import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from configs import imagenet_lt, inat18, places_lt
from safa_jax import checkpointing
from safa_jax.experiment import build_experiment, restore_if_any
from safa_jax.models import build_model
from safa_jax.models.torch_import import save_pretrained
from safa_jax.state import NnxBridge
from safa_jax.train import train_and_evaluate
from tests.test_lt_lists import imagenet_lines, jpeg, write_lists

PLACES_CLASSES = ("a/airfield", "a/apartment_building/outdoor", "b/bakery/shop")


def shrink(config, *, image_size=16, width=4):
    """Tiny sizes, two steps, evaluation at the end; everything else stays the config's."""
    config.data.image_size = image_size
    config.model.width = width
    config.batch_size = 8  # a multiple of the 8 test devices.
    config.eval_batch_size = 8
    config.num_train_steps = 2
    config.log_every_steps = 1
    return config


def write_tree(root, lines):
    for index, line in enumerate(lines):
        path = root / line.split()[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(19 + index % 4, 27 + index % 3, index))


def check_run(workdir, summary, *, model, num_classes, num_test):
    results = json.loads((workdir / "eval_results.json").read_text())
    recorded = json.loads((workdir / "config.json").read_text())
    assert summary["step"] == results["step"] == 2
    assert recorded["model"]["name"] == model and recorded["data"]["pipeline"] == "stream"
    assert len(results["per_class_accuracy"]) == num_classes
    assert results["num_examples"] == num_test
    assert 0.0 <= results["top1_accuracy"] <= 100.0  # percent.


@pytest.mark.parametrize("module, decays, second_stage, ldam", [
    (imagenet_lt, (59, 79, 94), 80, (0.3, 30.0)), (inat18, (99, 139, 169), 140, (0.1, 50.0)),
    (places_lt, (9, 19), 10, (0.2, 50.0))])
def test_large_configs_follow_the_rsg_training_scripts(module, decays, second_stage, ldam):
    # RSG's scripts: lr x0.1 each time epoch + 1 exceeds a milestone (0-based epochs 59, 79, 94 on ImageNet-LT),
    # the class-balanced sampler from epoch 80 / 140 / 10 with the 0.9999 class-balanced weights, no loss
    # re-weighting, LDAM margin / scale 0.3 / 30, 0.1 / 50, 0.2 / 50.
    config = module.get_config()
    assert tuple(config.optim.decay_epochs) == decays
    np.testing.assert_allclose(config.optim.decay_factors, [0.1 ** (i + 1) for i in range(len(decays))])
    assert (config.loss.train_rule, config.loss.sampling_weights, config.loss.cb_beta) == ("drs", "class_balanced",
                                                                                            0.9999)
    assert config.loss.second_stage_epoch == config.safa.start_epoch == second_stage
    assert (config.loss.ldam_max_margin, config.loss.ldam_scale) == ldam


def test_inat18_trains_and_evaluates_on_mock_tfds_data(tmp_path):
    config = shrink(inat18.get_config())
    assert (config.model.name, config.data.color_jitter, config.loss.name) == ("resnet50", 0.4, "ldam")
    with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
        # Ten mock examples leave most of the 8,142 classes empty, where LDAM has no margin: it says so.
        with pytest.raises(ValueError, match=r"classes have no training example \(class ids 0, 1, .* more\)"):
            train_and_evaluate(config, tmp_path)
        config.loss.name, config.loss.train_rule = "ce", "none"
        summary = train_and_evaluate(config, tmp_path)
    check_run(tmp_path, summary, model="resnet50", num_classes=8142, num_test=10)


def test_imagenet_lt_trains_and_evaluates_on_mock_tfds_data(tmp_path):
    # tfds's imagenet_lt builder: its "train" split trains, its "test" split (OLTR's test set) evaluates.
    config = shrink(imagenet_lt.get_config("tfds"))
    assert config.data.source == "tfds:imagenet_lt" and config.data.pipeline == "stream"
    config.loss.name, config.loss.train_rule = "ce", "none"  # 10 mock images leave most of 1,000 classes empty
    with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
        summary = train_and_evaluate(config, tmp_path)
    check_run(tmp_path, summary, model="resnet50", num_classes=1000, num_test=10)


@pytest.mark.parametrize("model, width", [("resnet50", 4), ("resnext50_32x4d", 16)])
def test_imagenet_lt_with_safa_after_stage_3_trains_from_list_files(tmp_path, model, width):
    # RSG's ImageNet-LT numbers are ResNeXt-50 32x4d's (width 16: each of its 32 groups keeps a channel).
    train, test = imagenet_lines("train", (6, 3, 1)), imagenet_lines("val", (2, 2, 2))
    write_lists(tmp_path / "lists", train, test)
    write_tree(tmp_path / "imagenet", train + test)
    config = shrink(imagenet_lt.get_config(str(tmp_path / "lists")), image_size=32, width=width)
    config.model.name = model
    config.data.data_dir = str(tmp_path / "imagenet")
    config.method = "safa"
    config.safa.start_epoch = 0  # augmented features join the loss in the two steps run here.
    config.safa.head_ratio = 0.34  # one head class of three.
    summary = train_and_evaluate(config, tmp_path / "run")
    check_run(tmp_path / "run", summary, model=model, num_classes=3, num_test=6)

    experiment, initial = build_experiment(config)
    trained = restore_if_any(experiment, checkpointing.Checkpoints(tmp_path / "run"), initial)
    assert config.safa.stage == 3 and int(trained.step) == 2
    generator_kernel = ("safa", "feature_generator", "conv", "kernel")
    assert not np.allclose(leaf(trained.params, generator_kernel), leaf(initial.params, generator_kernel))


def test_places_lt_starts_from_converted_weights_with_a_fresh_head(tmp_path):
    counts = (5, 3, 1)
    train = [f"data_256/{PLACES_CLASSES[label]}/{i:08d}.jpg {label}"
             for label, count in enumerate(counts) for i in range(count)]
    test = [f"val_256/Places365_val_{label}{i}.jpg {label}" for label in range(3) for i in range(2)]
    write_lists(tmp_path / "lists", train, test, prefix="Places_LT")
    write_tree(tmp_path / "places", train + test)
    # "ImageNet weights": a random 1000-class ResNet-152 of the same width, saved as the converter does.
    pretrained = build_model("resnet152", num_classes=1000, in_channels=3, width=4, blocks_per_stage=1,
                             head="linear", rngs=nnx.Rngs(7))
    _, params, stats = NnxBridge.split(pretrained)
    save_pretrained(tmp_path / "weights", params, stats,
                    {"model": "resnet152", "num_classes": 1000, "in_channels": 3, "width": 4, "source": "test"})

    config = shrink(places_lt.get_config(str(tmp_path / "lists")))
    config.data.data_dir = str(tmp_path / "places")
    config.model.init_checkpoint = str(tmp_path / "weights")
    _, initial = build_experiment(config)
    for path in (("backbone", "stem_conv", "kernel"), ("backbone", "stages", 2, 35, "conv3", "kernel")):
        np.testing.assert_array_equal(leaf(initial.params, path), leaf({"backbone": params}, path))
    # LDAM's cosine head is fresh, sized for this data's classes (365 for the real Places-LT).
    assert config.model.head == "auto" and config.loss.name == "ldam"
    assert leaf(initial.params, ("backbone", "head", "weight")).shape == (4 * 8 * 4, 3)

    summary = train_and_evaluate(config, tmp_path / "run")
    check_run(tmp_path / "run", summary, model="resnet152", num_classes=3, num_test=6)
    assert json.loads((tmp_path / "run" / "split.json").read_text())["class_names"] == list(PLACES_CLASSES)


def leaf(tree, path):
    for key in path:
        tree = tree[key]
    return np.asarray(jax.device_get(tree))


def test_recipe_details_match_rsg():
    """Places-LT is refused without ImageNet weights unless random ones are asked for; ImageNet-LT jitters colour."""
    from safa_jax.config_checks import validate_config
    config = places_lt.get_config()
    with pytest.raises(ValueError, match="trains from pretrained weights.*allow_random_init=True"):
        validate_config(config)
    config.model.allow_random_init = True
    validate_config(config)
    assert imagenet_lt.get_config().data.color_jitter == 0.4
