"""XLA flags that must be in place before JAX starts its CPU backend.

jaxlib 0.10.x hands convolutions to YNNPACK, which is about 10x slower than XLA's Eigen path on
the weight-gradient convolutions of a ResNet train step on CPU (ResNet-32 trained at
about 27 images/s without a flag and about 100 with one on the project's 2-core machine). The flag
`--xla_cpu_experimental_ynn_fusion_type` names what YNNPACK keeps; which value is fastest depends on who
runs the convolutions (docs/benchmark_log.md, ResNet-32 train step on the 2-core Xeon):

- XLA's own convolutions: "eltwise,reduce" (614 ms a step; "reduce" 719, "eltwise" 659);
- oneDNN's convolutions (`config.model.conv_backend`, chosen by "auto" wherever they can be built):
  "reduce" (266.7-308.8 images/s in two runs; "eltwise,reduce" 264.6, none 261.7).

Which one applies is decided before JAX starts, so it follows whether the oneDNN convolutions can be built
here (what "auto" picks on one CPU device), not a config. The flag is added only for the jaxlib series where
it was measured and only if the user has not set it; the user's own XLA_FLAGS are kept.
Set SAFA_JAX_KEEP_XLA_FLAGS=1 to opt out.
"""

import importlib.metadata
import os

from safa_jax.cpu.onednn_build import installed_blocker

YNN_FLAG_XLA_CONVOLUTIONS = "--xla_cpu_experimental_ynn_fusion_type=eltwise,reduce"
YNN_FLAG_ONEDNN_CONVOLUTIONS = "--xla_cpu_experimental_ynn_fusion_type=reduce"
MEASURED_JAXLIB_SERIES = ("0.10.",)


def apply_cpu_defaults() -> str | None:
    """Appends the measured CPU flag to XLA_FLAGS unless the user opted out or set it already; returns the flag
    added, or None. Called by `process_settings.apply_cpu_process_settings`, before JAX starts."""
    if os.environ.get("SAFA_JAX_KEEP_XLA_FLAGS"):
        return None
    try:
        jaxlib_version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None
    if not jaxlib_version.startswith(MEASURED_JAXLIB_SERIES):
        return None
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return None
    flag = YNN_FLAG_XLA_CONVOLUTIONS if installed_blocker() else YNN_FLAG_ONEDNN_CONVOLUTIONS
    os.environ["XLA_FLAGS"] = (flags + " " + flag).strip()
    return flag
