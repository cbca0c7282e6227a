"""XLA flags that must be in place before JAX starts its CPU backend.

jaxlib 0.10.x hands convolutions to YNNPACK, which is about 10x slower than XLA's Eigen path on
the weight-gradient convolutions of a ResNet train step on CPU (../shared/PERFORMANCE_NOTES.md:
ResNet-32 trains at about 27 images/s without the flag and about 100 with it). The flag sends
convolutions back to Eigen and keeps YNNPACK for elementwise and reduce fusions. It is added only
for the jaxlib series where it was measured, only if the user has not set it, and the user's own
XLA_FLAGS are kept. Set SAFA_JAX_KEEP_XLA_FLAGS=1 to opt out.
"""

import importlib.metadata
import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=eltwise,reduce"
MEASURED_JAXLIB_SERIES = ("0.10.",)


def apply_cpu_defaults() -> None:
    """Append the measured CPU flag to XLA_FLAGS unless the user opted out or set it already."""
    if os.environ.get("SAFA_JAX_KEEP_XLA_FLAGS"):
        return
    try:
        jaxlib_version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return
    if not jaxlib_version.startswith(MEASURED_JAXLIB_SERIES):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return
    os.environ["XLA_FLAGS"] = (flags + " " + YNN_FLAG).strip()
