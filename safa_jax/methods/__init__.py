"""The training methods, by `config.method`: how to add one is in docs/method.md ("Adding a method")."""

from safa_jax.methods.base import ClassifierBatch, Method, ModuleSetup
from safa_jax.methods.crt import CrtMethod
from safa_jax.methods.delta_encoder import DeltaEncoderMethod
from safa_jax.methods.rsg import RsgMethod
from safa_jax.methods.safa import SafaMethod

METHODS: dict[str, type[Method]] = {"plain": Method, "safa": SafaMethod, "crt": CrtMethod,
                                    "delta_encoder": DeltaEncoderMethod, "rsg": RsgMethod}

__all__ = ["METHODS", "ClassifierBatch", "CrtMethod", "DeltaEncoderMethod", "Method", "ModuleSetup", "RsgMethod",
           "SafaMethod"]
