"""CIFAR-100-LT with ResNet-32, the LDAM-DRW recipe.

Usage: --config=configs/cifar100_lt.py:200 selects the imbalance factor rho (default 100).
"""

from configs import cifar10_lt


def get_config(arg: str | None = None):
    return cifar10_lt.cifar_lt_config("cifar100", arg)
