"""torchvision weights: names, conversion against a PyTorch forward pass, errors, the pretrained folder and CLI."""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from safa_jax.models.resnet import ResNet, resnet50, resnext50_32x4d
from safa_jax.models.torch_import import (
    convert_state_dict,
    convert_torchvision,
    init_from_pretrained,
    load_pretrained,
    save_pretrained,
    torch_name,
)
from safa_jax.state import NnxBridge

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _abstract_resnet50(num_classes: int, *, width: int = 64, head: str = "linear") -> ResNet:
    return nnx.eval_shape(lambda: resnet50(num_classes, width=width, head=head, rngs=nnx.Rngs(0)))


def _random_like(tree, seed: int):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: jnp.asarray(rng.normal(size=leaf.shape), leaf.dtype), tree)


def _flat(tree) -> dict:
    return traverse_util.flatten_dict(jax.tree.map(np.asarray, tree))


def _assert_trees_equal(actual, expected) -> None:
    actual, expected = _flat(actual), _flat(expected)
    assert actual.keys() == expected.keys()
    for path in expected:
        np.testing.assert_array_equal(actual[path], expected[path], err_msg=str(path))


# --- without PyTorch ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "collection, path, name",
    [
        ("params", ("stem_conv", "kernel"), "conv1.weight"),
        ("params", ("stem_bn", "scale"), "bn1.weight"),
        ("batch_stats", ("stem_bn", "var"), "bn1.running_var"),
        ("params", ("stages", 0, 2, "conv3", "kernel"), "layer1.2.conv3.weight"),
        ("batch_stats", ("stages", 3, 0, "bn2", "mean"), "layer4.0.bn2.running_mean"),
        ("params", ("stages", 1, 0, "downsample", 0, "kernel"), "layer2.0.downsample.0.weight"),
        ("params", ("stages", 2, 0, "downsample", 1, "bias"), "layer3.0.downsample.1.bias"),
        ("params", ("head", "kernel"), "fc.weight"),
        ("params", ("head", "bias"), "fc.bias"),
    ],
)
def test_torchvision_names(collection, path, name):
    assert torch_name(collection, path) == name


def test_every_leaf_of_resnet50_has_a_distinct_torchvision_name():
    _, params, stats = NnxBridge.split(_abstract_resnet50(1000))
    names = [
        torch_name(collection, path)
        for collection, tree in (("params", params), ("batch_stats", stats))
        for path in traverse_util.flatten_dict(tree)
    ]
    # torchvision's resnet50 state dict: 161 parameter tensors, 106 BN running statistics (53 BNs).
    assert len(names) == len(set(names)) == 161 + 106


def test_normed_head_cannot_take_torchvision_classifier():
    with pytest.raises(ValueError, match=r"head/weight has no torchvision counterpart.*skip_classifier=True"):
        torch_name("params", ("head", "weight"))


@pytest.fixture(scope="module")
def pretrained_folder(tmp_path_factory):
    """A width-4, 10-class ResNet-50 written by save_pretrained, with its arrays and info."""
    _, params, stats = NnxBridge.split(_abstract_resnet50(10, width=4))
    params, stats = _random_like(params, seed=1), _random_like(stats, seed=2)
    info = {"model": "resnet50", "num_classes": 10, "in_channels": 3, "width": 4}
    folder = tmp_path_factory.mktemp("pretrained") / "resnet50"
    save_pretrained(folder, params, stats, info)
    return folder, params, stats, info


def test_pretrained_folder_round_trip(pretrained_folder):
    folder, params, stats, info = pretrained_folder
    loaded_params, loaded_stats, loaded_info = load_pretrained(folder)
    _assert_trees_equal(loaded_params, params)
    _assert_trees_equal(loaded_stats, stats)
    assert loaded_info == info
    with pytest.raises(FileExistsError, match="already exists; choose another output folder"):
        save_pretrained(folder, params, stats, info)
    with pytest.raises(FileNotFoundError, match="no pretrained.json in"):
        load_pretrained(folder.parent)


def test_init_from_pretrained_keeps_the_classifier_only_when_it_fits(pretrained_folder):
    folder, params, stats, _ = pretrained_folder
    # Same model and classes: everything, classifier included, comes from the file.
    _, own_params, own_stats = NnxBridge.split(_abstract_resnet50(10, width=4))
    own_params, own_stats = _random_like(own_params, seed=3), _random_like(own_stats, seed=4)
    merged_params, merged_stats, classifier_loaded = init_from_pretrained(
        folder, own_params, own_stats, model_name="resnet50"
    )
    assert classifier_loaded
    _assert_trees_equal(merged_params, params)
    _assert_trees_equal(merged_stats, stats)

    # 5 classes with the cosine head (Places-LT from ImageNet): backbone from the file, own head kept.
    _, own_params, own_stats = NnxBridge.split(_abstract_resnet50(5, width=4, head="normed"))
    own_params, own_stats = _random_like(own_params, seed=5), _random_like(own_stats, seed=6)
    merged_params, merged_stats, classifier_loaded = init_from_pretrained(
        folder, own_params, own_stats, model_name="resnet50"
    )
    assert not classifier_loaded
    _assert_trees_equal(merged_params["head"], own_params["head"])
    _assert_trees_equal(
        {k: v for k, v in merged_params.items() if k != "head"}, {k: v for k, v in params.items() if k != "head"}
    )
    _assert_trees_equal(merged_stats, stats)


def test_init_from_pretrained_refuses_another_model_or_width(pretrained_folder):
    folder = pretrained_folder[0]
    _, own_params, own_stats = NnxBridge.split(_abstract_resnet50(10, width=4))
    with pytest.raises(ValueError, match=r"holds resnet50 weights, but the model is 'resnet152'"):
        init_from_pretrained(folder, own_params, own_stats, model_name="resnet152")
    _, own_params, own_stats = NnxBridge.split(_abstract_resnet50(10, width=8))
    wrong_width = r"stem_conv/kernel: shape \(7, 7, 3, 4\) in .*, the model needs \(7, 7, 3, 8\)"
    with pytest.raises(ValueError, match=wrong_width):
        init_from_pretrained(folder, own_params, own_stats, model_name="resnet50")


# --- against PyTorch ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip(
        "torch", reason="PyTorch is needed only to check the converter (pip install torch==2.13.0)"
    )


def _torchvision_resnet(torch, layers: tuple[int, ...], *, num_classes: int, width: int = 64, groups: int = 1,
                        base_width: int = 64):
    """torchvision's ResNet v1.5 and ResNeXt (torchvision/models/resnet.py), rebuilt here: torchvision is not a
    dependency. ResNeXt's bottleneck is `groups` x (planes * base_width / 64) wide with a grouped 3x3 conv."""
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, in_channels: int, planes: int, stride: int):
            super().__init__()
            out_channels = planes * 4
            inner = int(planes * base_width / 64) * groups
            self.conv1, self.bn1 = nn.Conv2d(in_channels, inner, 1, bias=False), nn.BatchNorm2d(inner)
            self.conv2 = nn.Conv2d(inner, inner, 3, stride, padding=1, groups=groups, bias=False)
            self.bn2 = nn.BatchNorm2d(inner)
            self.conv3, self.bn3 = nn.Conv2d(inner, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            self.downsample = None
            if stride != 1 or in_channels != out_channels:
                self.downsample = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
                )

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = torch.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

    class TorchvisionResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, width, 7, 2, padding=3, bias=False), nn.BatchNorm2d(width)
            self.maxpool = nn.MaxPool2d(3, 2, padding=1)
            in_channels = width
            for stage, num_blocks in enumerate(layers):
                planes = width * 2**stage
                blocks = [Bottleneck(in_channels, planes, 1 if stage == 0 else 2)]
                in_channels = planes * 4
                blocks += [Bottleneck(in_channels, planes, 1) for _ in range(num_blocks - 1)]
                self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
            self.fc = nn.Linear(in_channels, num_classes)

        def features(self, x, stage: int):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            for index in range(1, stage + 1):
                x = getattr(self, f"layer{index}")(x)
            return x

        def forward(self, x):
            return self.fc(self.features(x, 4).mean(dim=(2, 3)))

    return TorchvisionResNet()


def _randomised_eval_model(torch, model, seed: int):
    """Random BN affine parameters and running statistics, then eval mode.

    The statistics come from one train-mode pass (momentum 1) over random images, perturbed, so
    that activations stay of order one through all 16 blocks and every statistic is non-trivial.
    """
    generator = torch.Generator().manual_seed(seed)
    batch_norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in batch_norms:
            bn.weight.uniform_(0.5, 1.5, generator=generator)
            bn.bias.normal_(0.0, 0.1, generator=generator)
            bn.momentum = 1.0
        model.train()
        model(torch.randn(4, 3, 64, 64, generator=generator))
        for bn in batch_norms:
            bn.running_mean.add_(torch.randn(bn.running_mean.shape, generator=generator) * 0.1)
            bn.running_var.mul_(torch.empty(bn.running_var.shape).uniform_(0.8, 1.25, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def torch_resnet50(torch):
    """A randomly initialised torchvision-layout ResNet-50 (1000 classes) in eval mode and its state dict."""
    torch.manual_seed(0)
    model = _randomised_eval_model(torch, _torchvision_resnet(torch, (3, 4, 6, 3), num_classes=1000), seed=1)
    return model, {key: value.numpy() for key, value in model.state_dict().items()}


def test_converted_resnet50_matches_torch_in_eval_mode(torch, torch_resnet50):
    torch_model, state_dict = torch_resnet50
    assert "layer1.0.bn1.num_batches_tracked" in state_dict  # present in torchvision files, ignored
    params, stats, info = convert_torchvision(state_dict, "resnet50")
    assert info == {"model": "resnet50", "num_classes": 1000, "in_channels": 3, "width": 64}
    bridge, _, _ = NnxBridge.split(_abstract_resnet50(1000))
    model = bridge.merge(params, stats)

    images = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        torch_logits = torch_model(torch.from_numpy(images)).numpy()
        torch_stage3 = torch_model.features(torch.from_numpy(images), 3).numpy()
    nhwc = jnp.asarray(images.transpose(0, 2, 3, 1))
    assert np.abs(torch_logits).std() > 0.1  # a meaningful comparison, not two near-zero outputs
    np.testing.assert_allclose(model(nhwc, train=False), torch_logits, rtol=1e-4, atol=1e-4)
    # SAFA's default placement for ResNet-50: the stage-3 feature map, NCHW in PyTorch. Its values
    # reach about 6, and float32 sums in another order differ by up to ~2e-4 after 13 blocks; a
    # wrong layout or padding differs by order one.
    np.testing.assert_allclose(
        model.lower(nhwc, 3, train=False), torch_stage3.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-3
    )


def test_converted_resnext50_matches_torch_in_eval_mode(torch):
    torch.manual_seed(0)
    torch_model = _randomised_eval_model(
        torch, _torchvision_resnet(torch, (3, 4, 6, 3), num_classes=10, groups=32, base_width=4), seed=2)
    state_dict = {key: value.numpy() for key, value in torch_model.state_dict().items()}
    assert state_dict["layer1.0.conv2.weight"].shape == (128, 4, 3, 3)  # 32 groups of 4 channels
    params, stats, info = convert_torchvision(state_dict, "resnext50_32x4d")
    assert info == {"model": "resnext50_32x4d", "num_classes": 10, "in_channels": 3, "width": 64}
    bridge, _, _ = NnxBridge.split(nnx.eval_shape(lambda: resnext50_32x4d(10, rngs=nnx.Rngs(0))))
    model = bridge.merge(params, stats)
    images = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        torch_logits = torch_model(torch.from_numpy(images)).numpy()
    assert np.abs(torch_logits).std() > 0.1
    np.testing.assert_allclose(model(jnp.asarray(images.transpose(0, 2, 3, 1)), train=False), torch_logits,
                               rtol=1e-4, atol=1e-4)
    # torchvision's resnext50_32x4d has 25,028,904 parameters at 1000 classes.
    _, full, _ = NnxBridge.split(nnx.eval_shape(lambda: resnext50_32x4d(1000, rngs=nnx.Rngs(0))))
    assert sum(leaf.size for leaf in jax.tree.leaves(full)) == 25_028_904
    with pytest.raises(ValueError, match="width=8 gives ResNeXt's first stage no channel per group"):
        resnext50_32x4d(10, width=8, rngs=nnx.Rngs(0))


def test_missing_unexpected_and_misshaped_keys_are_named(torch_resnet50):
    state_dict = dict(torch_resnet50[1])
    del state_dict["layer3.5.bn2.running_var"]
    state_dict["layer4.3.conv1.weight"] = np.zeros((512, 2048, 1, 1), np.float32)
    state_dict["layer1.0.conv2.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    with pytest.raises(ValueError) as error:
        convert_torchvision(state_dict, "resnet50")
    message = str(error.value)
    assert "missing keys: layer3.5.bn2.running_var;" in message
    assert "unexpected keys: layer4.3.conv1.weight;" in message
    assert (
        "layer1.0.conv2.weight: shape (64, 64, 1, 1) in the torchvision state dict, the model needs (64, 64, 3, 3)"
    ) in message


def test_resnet50_weights_do_not_convert_as_resnet152(torch_resnet50):
    # ResNet-152 has 4 more blocks in layer2 and 30 more in layer3, each with 3 convs and 3 BNs
    # (weight, bias, running mean and variance): 34 * 15 = 510 missing keys.
    with pytest.raises(ValueError, match=r"missing keys: layer2\.4\.bn1\.bias, .* \.\.\. and 500 more$"):
        convert_torchvision(torch_resnet50[1], "resnet152")
    with pytest.raises(ValueError, match=r"unknown torchvision model 'resnet101'; allowed: resnet50, resnet152, resnext"):
        convert_torchvision(torch_resnet50[1], "resnet101")


def test_skip_classifier_keeps_the_models_head(torch, torch_resnet50):
    torch_model, state_dict = torch_resnet50
    bridge, params, stats = NnxBridge.split(_abstract_resnet50(7, head="normed"))
    own_head = np.random.default_rng(0).normal(size=(2048, 7)).astype(np.float32)
    params = {**params, "head": {"weight": jnp.asarray(own_head)}}
    with pytest.raises(ValueError, match="head/weight has no torchvision counterpart"):
        convert_state_dict(state_dict, params, stats)

    converted_params, converted_stats = convert_state_dict(state_dict, params, stats, skip_classifier=True)
    np.testing.assert_array_equal(converted_params["head"]["weight"], own_head)
    model = bridge.merge(converted_params, converted_stats)
    images = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        torch_pooled = torch_model.features(torch.from_numpy(images), 4).mean(dim=(2, 3)).numpy()
    pooled = model.upper(model.lower(jnp.asarray(images.transpose(0, 2, 3, 1)), 4, train=False), 4, train=False)
    np.testing.assert_allclose(pooled, torch_pooled, rtol=1e-4, atol=1e-4)

    # A linear head of another class count does not take fc.* unless skipped.
    _, linear_params, linear_stats = NnxBridge.split(_abstract_resnet50(7))
    with pytest.raises(ValueError, match=r"fc\.weight: shape \(1000, 2048\) .*, the model needs \(7, 2048\)"):
        convert_state_dict(state_dict, linear_params, linear_stats)


def test_command_line_converts_a_pth_file(torch, tmp_path):
    torch.manual_seed(0)
    tiny = _randomised_eval_model(torch, _torchvision_resnet(torch, (3, 4, 6, 3), num_classes=10, width=4), seed=2)
    torch.save(tiny.state_dict(), tmp_path / "tiny.pth")
    output = tmp_path / "converted"
    command = [
        sys.executable,
        "-m",
        "safa_jax.convert_torchvision",
        f"--input={tmp_path / 'tiny.pth'}",
        "--model=resnet50",
        f"--output={output}",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"Wrote {output}: resnet50, 10 classes, from tiny.pth" in result.stdout

    params, stats, info = load_pretrained(output)
    assert info == {"model": "resnet50", "num_classes": 10, "in_channels": 3, "width": 4, "source": "tiny.pth"}
    expected_params, expected_stats, _ = convert_torchvision(
        {key: value.numpy() for key, value in tiny.state_dict().items()}, "resnet50"
    )
    _assert_trees_equal(params, expected_params)
    _assert_trees_equal(stats, expected_stats)
