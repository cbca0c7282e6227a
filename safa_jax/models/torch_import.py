"""torchvision ResNet weights as this project's parameters, and the pretrained-weights folder.

Places-LT starts from torchvision's ImageNet ResNet-152 (RSG's recipe). Conversion runs once,
offline (`python -m safa_jax.convert_torchvision`), into a folder that holds an Orbax checkpoint of
`{"params", "batch_stats"}` in the pure-dict layout of `NnxBridge.split` plus `pretrained.json`
(model name and sizes). Training then starts from it with `init_from_pretrained`. Nothing here
imports torch: the state dict arrives as numpy arrays.

Names: `conv1`/`bn1` are our `stem_conv`/`stem_bn`, `layer{s}.{b}` is `stages[s-1][b]`, `fc` is
`head`; BN `weight`/`bias`/`running_mean`/`running_var` are `scale`/`bias`/`mean`/`var`.
Conv weights go from OIHW to HWIO and the fc weight from (out, in) to (in, out).
"""

import json
import pathlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util

from safa_jax.models.resnet import ResNet, resnet50, resnet152, resnext50_32x4d
from safa_jax.state import NnxBridge

PyTree = Any

TORCHVISION_MODELS: dict[str, Callable[..., ResNet]] = {"resnet50": resnet50, "resnet152": resnet152,
                                                        "resnext50_32x4d": resnext50_32x4d}
CLASSIFIER_PREFIX = "fc."
INFO_FILE = "pretrained.json"
CHECKPOINT_DIR = "checkpoint"

_MODULE_NAMES = {"stem_conv": "conv1", "stem_bn": "bn1", "head": "fc"}
_LEAF_NAMES = {
    "params": {"kernel": "weight", "scale": "weight", "bias": "bias"},
    "batch_stats": {"mean": "running_mean", "var": "running_var"},
}
# PyTorch counts BN updates for its momentum=None mode; Flax has no such state.
_IGNORED_SUFFIX = ".num_batches_tracked"
# Keys named in an error message before "... and N more".
_MAX_NAMED_KEYS = 10


def torch_name(collection: str, path: tuple) -> str:
    """The torchvision state-dict key of the leaf at `path` in the pure dict of `collection`.

    ("stages", 0, 1, "conv1", "kernel") in "params" is "layer1.1.conv1.weight".
    """
    *modules, leaf = path
    if leaf not in _LEAF_NAMES[collection]:
        raise ValueError(
            f"{'/'.join(map(str, path))} has no torchvision counterpart (torchvision's classifier is a plain "
            f"Linear; the normed head cannot take its weights: convert with skip_classifier=True); "
            f"allowed leaves in {collection}: {', '.join(_LEAF_NAMES[collection])}"
        )
    parts = []
    keys = iter(modules)
    for key in keys:
        if key == "stages":
            parts.append(f"layer{next(keys) + 1}")
        else:
            parts.append(_MODULE_NAMES.get(key, str(key)))
    return ".".join([*parts, _LEAF_NAMES[collection][leaf]])


def _to_jax_layout(array: np.ndarray) -> np.ndarray:
    """OIHW conv weights to HWIO, (out, in) linear weights to (in, out); vectors unchanged."""
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2:
        return array.T
    return array


def _torch_layout_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The inverse of `_to_jax_layout` on a shape: what the state dict must hold for a leaf of `shape`."""
    if len(shape) == 4:
        return shape[3], shape[2], shape[0], shape[1]
    return tuple(reversed(shape))


def _name_keys(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    named = ", ".join(keys[:_MAX_NAMED_KEYS])
    return named + (f" ... and {len(keys) - _MAX_NAMED_KEYS} more" if len(keys) > _MAX_NAMED_KEYS else "")


def _check_fits(needed: Mapping[str, tuple[int, ...]], given: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raises ValueError naming every missing key, unexpected key and differing shape at once.

    `needed` (the model's) and `given` (`source`'s) map key -> shape; naming them all lets one
    read of the message tell a wrong architecture from a wrong width or class count.
    """
    missing, unexpected = needed.keys() - given.keys(), given.keys() - needed.keys()
    problems = []
    if missing:
        problems.append(f"missing keys: {_name_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_name_keys(unexpected)}")
    problems += [
        f"{key}: shape {given[key]} in {source}, the model needs {shape}"
        for key, shape in sorted(needed.items())
        if key in given and tuple(given[key]) != tuple(shape)
    ]
    if problems:
        raise ValueError(f"{source} does not fit the model; " + "; ".join(problems))


def _is_classifier(path: tuple) -> bool:
    return path[0] == "head"


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    params: PyTree,
    batch_stats: PyTree,
    *,
    skip_classifier: bool = False,
) -> tuple[PyTree, PyTree]:
    """The torchvision `state_dict` as the pure dicts `params` and `batch_stats` (of NnxBridge.split).

    `params`/`batch_stats` give the layout (concrete or abstract leaves). Every leaf is replaced by
    its converted weight, except the classifier with `skip_classifier=True`: then `fc.*` is ignored
    and the given head is kept (a different class count, e.g. Places-LT from ImageNet weights).
    """
    trees = {"params": params, "batch_stats": batch_stats}
    flat = {collection: traverse_util.flatten_dict(tree) for collection, tree in trees.items()}
    targets = {
        torch_name(collection, path): (collection, path)
        for collection, leaves in flat.items()
        for path in leaves
        if not (skip_classifier and _is_classifier(path))
    }
    given = [
        key
        for key in state_dict
        if not key.endswith(_IGNORED_SUFFIX) and not (skip_classifier and key.startswith(CLASSIFIER_PREFIX))
    ]
    _check_fits(
        {key: _torch_layout_shape(flat[collection][path].shape) for key, (collection, path) in targets.items()},
        {key: np.shape(state_dict[key]) for key in given},
        "the torchvision state dict",
    )
    for key, (collection, path) in targets.items():
        template = flat[collection][path]
        flat[collection][path] = jnp.asarray(_to_jax_layout(np.asarray(state_dict[key])), template.dtype)
    return traverse_util.unflatten_dict(flat["params"]), traverse_util.unflatten_dict(flat["batch_stats"])


def _builder(model_name: str) -> Callable[..., ResNet]:
    if model_name not in TORCHVISION_MODELS:
        raise ValueError(f"unknown torchvision model {model_name!r}; allowed: {', '.join(TORCHVISION_MODELS)}")
    return TORCHVISION_MODELS[model_name]


def _abstract_model(info: Mapping[str, Any]) -> ResNet:
    """The recorded model without allocating its weights: shapes only, for layouts and restore targets."""
    build = _builder(info["model"])
    return nnx.eval_shape(
        lambda: build(
            info["num_classes"],
            in_channels=info["in_channels"],
            width=info["width"],
            head="linear",
            rngs=nnx.Rngs(0),
        )
    )


def _required_weight(state_dict: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    if key not in state_dict:
        raise ValueError(
            f"the torchvision state dict has no {key!r}; it needs conv1.weight and fc.weight "
            f"to size the model (keys found: {_name_keys(state_dict)})"
        )
    return np.asarray(state_dict[key])


def convert_torchvision(state_dict: Mapping[str, np.ndarray], model_name: str) -> tuple[PyTree, PyTree, dict]:
    """A whole torchvision model (`model_name`, one of TORCHVISION_MODELS) as (params, batch_stats, info).

    Class count, input channels and stem width come from the weights (`fc.weight`, `conv1.weight`),
    so the 1000-class ImageNet files and fine-tuned ones convert alike. `info` is what
    `save_pretrained` records next to the weights.
    """
    _builder(model_name)
    stem = _required_weight(state_dict, "conv1.weight")
    info = {
        "model": model_name,
        "num_classes": int(_required_weight(state_dict, "fc.weight").shape[0]),
        "in_channels": int(stem.shape[1]),
        "width": int(stem.shape[0]),
    }
    _, abstract_params, abstract_stats = NnxBridge.split(_abstract_model(info))
    params, batch_stats = convert_state_dict(state_dict, abstract_params, abstract_stats)
    return params, batch_stats, info


def save_pretrained(
    directory: str | pathlib.Path, params: PyTree, batch_stats: PyTree, info: Mapping[str, Any]
) -> None:
    """Writes `directory`/checkpoint (Orbax) and `directory`/pretrained.json; `directory` must not hold them yet."""
    directory = pathlib.Path(directory).resolve()
    if (directory / CHECKPOINT_DIR).exists():
        raise FileExistsError(f"{directory / CHECKPOINT_DIR} already exists; choose another output folder")
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / CHECKPOINT_DIR, {"params": params, "batch_stats": batch_stats})
    (directory / INFO_FILE).write_text(json.dumps(dict(info), indent=2) + "\n")


def read_pretrained_info(path: str | pathlib.Path) -> dict[str, Any]:
    """What pretrained.json in the folder at `path` records: model, num_classes, in_channels, width, source."""
    info_path = pathlib.Path(path).resolve() / INFO_FILE
    if not info_path.is_file():
        raise FileNotFoundError(
            f"no {INFO_FILE} in {info_path.parent}: not a folder written by `python -m safa_jax.convert_torchvision`"
        )
    return json.loads(info_path.read_text())


def load_pretrained(path: str | pathlib.Path) -> tuple[PyTree, PyTree, dict]:
    """(params, batch_stats, info) from a folder written by `save_pretrained` / the converter CLI.

    The arrays are restored onto this process's first device, in the layout the recorded model
    (info["model"] and its sizes) has.
    """
    info = read_pretrained_info(path)
    _, abstract_params, abstract_stats = NnxBridge.split(_abstract_model(info))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
        {"params": abstract_params, "batch_stats": abstract_stats},
    )
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(pathlib.Path(path).resolve() / CHECKPOINT_DIR, target)
    return restored["params"], restored["batch_stats"], info


def _shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
    return {"/".join(map(str, path)): leaf.shape for path, leaf in traverse_util.flatten_dict(tree).items()}


def init_from_pretrained(
    path: str | pathlib.Path, params: PyTree, batch_stats: PyTree, *, model_name: str
) -> tuple[PyTree, PyTree, bool]:
    """The model's `params`/`batch_stats` with every weight from the pretrained folder at `path`.

    The classifier is taken too when it has the model's shapes (same class count, linear head);
    otherwise the model's fresh head is kept, as for Places-LT (365 classes) from ImageNet weights.
    Returns (params, batch_stats, whether the classifier came from the file). The backbone must
    match exactly: the same model name, input channels and width.
    """
    recorded_model = read_pretrained_info(path)["model"]
    if recorded_model != model_name:
        raise ValueError(f"{path} holds {recorded_model} weights, but the model is {model_name!r}")
    pretrained_params, pretrained_stats, _ = load_pretrained(path)
    classifier_loaded = _shapes(pretrained_params.get("head", {})) == _shapes(params.get("head", {}))
    merged = []
    for mine, theirs in ((params, pretrained_params), (batch_stats, pretrained_stats)):
        if not classifier_loaded:
            theirs = {key: value for key, value in theirs.items() if key != "head"}
            theirs |= {key: value for key, value in mine.items() if key == "head"}
        _check_fits(_shapes(mine), _shapes(theirs), str(path))
        merged.append(theirs)
    return merged[0], merged[1], classifier_loaded
