"""Command line: `python -m safa_jax.convert_torchvision --input=resnet152.pth --model=resnet152 --output=DIR`.

Converts a torchvision ResNet state dict once, offline, into the pretrained-weights folder that
`config.model.init_checkpoint` names (Orbax checkpoint plus pretrained.json; see
models/torch_import.py). PyTorch is needed for this step only, so it is imported here and is not a
dependency of training.
"""

import pathlib
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from safa_jax.cpu.process_settings import apply_cpu_process_settings
from safa_jax.models.torch_import import TORCHVISION_MODELS, convert_torchvision, save_pretrained


def load_torch_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The state dict saved in a .pth file (torchvision's model files), as numpy arrays."""
    try:
        import torch
    except ImportError as error:
        raise ImportError("reading .pth files needs PyTorch (pip install torch); training does not") from error
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, Mapping) or not all(torch.is_tensor(value) for value in loaded.values()):
        raise ValueError(
            f"{path} does not hold a state dict of tensors as torchvision's model files do "
            f"(found a {type(loaded).__name__})"
        )
    return {key: value.numpy() for key, value in loaded.items()}


def convert_file(input_path: str | pathlib.Path, model_name: str, output_dir: str | pathlib.Path) -> dict[str, Any]:
    """Converts the .pth file at `input_path` into the folder `output_dir`; returns what pretrained.json records."""
    params, batch_stats, info = convert_torchvision(load_torch_state_dict(input_path), model_name)
    info["source"] = pathlib.Path(input_path).name
    save_pretrained(output_dir, params, batch_stats, info)
    return info


def main() -> None:
    """The command line; its flags are defined here, not at import, so importing this module defines none."""
    from absl import app, flags, logging

    input_path = flags.DEFINE_string(
        "input", None, "torchvision state dict (.pth), e.g. resnet152-f82ba261.pth.", required=True
    )
    model_name = flags.DEFINE_enum(
        "model", None, list(TORCHVISION_MODELS), "Architecture of the weights.", required=True
    )
    output_dir = flags.DEFINE_string("output", None, "Folder to write (config.model.init_checkpoint).", required=True)

    def run(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        try:
            info = convert_file(input_path.value, model_name.value, output_dir.value)
        except (ValueError, FileNotFoundError, FileExistsError) as error:
            # A wrong file, model or folder is one clear line, not a traceback.
            logging.error("%s", error)
            sys.exit(f"safa_jax.convert_torchvision: error: {error}")
        print(f"Wrote {output_dir.value}: {info['model']}, {info['num_classes']} classes, from {info['source']}")

    app.run(run)


if __name__ == "__main__":
    apply_cpu_process_settings()  # before JAX starts
    main()
