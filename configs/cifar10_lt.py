"""CIFAR-10-LT with ResNet-32, the LDAM-DRW recipe.

Usage: --config=configs/cifar10_lt.py:200 selects the imbalance factor rho (default 100).
Data: tfds:cifar10 by default; real images in an image folder PATH/cifar10/{train,test}/<class>/ work with
--config.data.source=folder:PATH/cifar10.
"""

from configs import common

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def cifar_lt_config(dataset: str, arg: str | None):
    """The shared CIFAR-LT recipe; `arg` is the imbalance factor as text."""
    config = common.get_config()
    config.data.source = f"tfds:{dataset}"
    config.data.imbalance_factor = float(arg) if arg else 100.0
    config.data.mean = CIFAR_MEAN
    config.data.std = CIFAR_STD
    config.data.image_size = 32
    config.data.channels = 3
    # Long runs: a stop loses at most one epoch; the test set is evaluated every 5 epochs and after every
    # epoch of the second stage (160-199), so the best-epoch figure the reference code prints has epochs to
    # choose from (10,000 test images: a few seconds each on 2 CPU cores).
    config.checkpoint_every_epochs = 1
    config.eval_every_epochs = 5
    config.eval_every_epoch_from = 160
    return config


def get_config(arg: str | None = None):
    return cifar_lt_config("cifar10", arg)
