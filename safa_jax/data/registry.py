"""Every data source in one place: what `config.data.source` may name, for which pipeline, checked once.

`config.data.pipeline` says how the images reach the step: "memory" (`sources.py`: the long-tailed split read
whole into memory, batches drawn and augmented on the devices) or "stream" (`streaming.py`: tf.data reads,
decodes and augments each batch on the host, for datasets too large for memory). `SOURCES` lists the forms
of `config.data.source` and the pipelines that read each; `validate_data_config` is the one validator of
`config.data`, run before anything is read; `load_training_data` hands the config to its pipeline's loader.
Both loaders return a `dataset.Dataset`.

A new source is one entry here and one reader in the pipeline(s) it names.
"""

import dataclasses

from safa_jax.data import longtail

PIPELINES = ("memory", "stream")
PIL_CHANNELS = (1, 3)  # grey or RGB: what both pipelines decode to
MIN_IMAGE_SIZE = 4


@dataclasses.dataclass(frozen=True)
class SourceForm:
    """One form of `config.data.source`: how it is written and which pipelines read it."""

    form: str  # as a user writes it: "digits", "tfds:NAME", ...
    pipelines: tuple[str, ...]
    takes_argument: bool  # the part after "KIND:" (a name, a path)


SOURCES = {
    "digits": SourceForm("digits", ("memory",), takes_argument=False),  # scikit-learn's 8x8 digits
    "tfds": SourceForm("tfds:NAME", ("memory", "stream"), takes_argument=True),  # a TFDS dataset
    "folder": SourceForm("folder:PATH", ("memory", "stream"), takes_argument=True),  # PATH/{train,test}/<class>/
    "imagenet_lt": SourceForm("imagenet_lt:LISTS_DIR", ("stream",), takes_argument=True),  # the OLTR lists
    "places_lt": SourceForm("places_lt:LISTS_DIR", ("stream",), takes_argument=True),
}


def source_forms(pipeline: str) -> tuple[str, ...]:
    """The forms of `config.data.source` that `pipeline` reads."""
    return tuple(form.form for form in SOURCES.values() if pipeline in form.pipelines)


def parse_source(source: str, pipeline: str) -> tuple[str, str]:
    """(kind, argument) of `config.data.source`, e.g. ("tfds", "cifar10"); a one-line error names what `pipeline`
    allows, and the pipeline to set where the source is read by the other one only."""
    kind, colon, argument = source.partition(":")
    form = SOURCES.get(kind)
    if form is None or bool(argument) != form.takes_argument or (colon and not form.takes_argument):
        allowed = ", ".join(source_forms(pipeline))
        raise ValueError(f"data.source={source!r} is not understood; allowed with data.pipeline={pipeline!r}: "
                         f"{allowed}.")
    if pipeline not in form.pipelines:
        other = form.pipelines[0]
        verb = "streamed" if pipeline == "stream" else "read into memory"
        raise ValueError(f"data.source={source!r} cannot be {verb}; set data.pipeline={other!r} for it, or use "
                         f"one of {', '.join(source_forms(pipeline))}.")
    return kind, argument


def validate_data_config(data_config) -> None:
    """Every check of `config.data` that needs no file, so that a bad run fails in a second."""
    if data_config.pipeline not in PIPELINES:
        raise ValueError(f"unknown config.data.pipeline={data_config.pipeline!r}; allowed: {', '.join(PIPELINES)}")
    parse_source(data_config.source, data_config.pipeline)
    longtail.validate_subsampling(data_config)
    if data_config.channels not in PIL_CHANNELS:
        raise ValueError(f"data.channels={data_config.channels} is not supported; allowed: 1 (grey) or 3 (RGB).")
    if data_config.image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"data.image_size={data_config.image_size} is too small; allowed: >= {MIN_IMAGE_SIZE}.")
    mean, std = tuple(data_config.mean), tuple(data_config.std)
    if data_config.pipeline == "stream":
        if len(mean) != data_config.channels or len(std) != data_config.channels or min(std) <= 0:
            raise ValueError(f"data.mean={mean} and data.std={std}: streamed data needs both set, with "
                             f"data.channels={data_config.channels} values each and std > 0 (e.g. ImageNet's "
                             f"(0.485, 0.456, 0.406) and (0.229, 0.224, 0.225)).")
    elif (len(mean), len(std)) != (0, 0):
        if len(mean) != data_config.channels or len(std) != data_config.channels:
            raise ValueError(f"data.mean={mean} and data.std={std} must both have data.channels="
                             f"{data_config.channels} values, or both be empty (computed from the training split).")
        if min(std) <= 0:
            raise ValueError(f"data.std={std} has a value <= 0; allowed: positive values.")
    if not 0.0 <= data_config.color_jitter < 1.0:
        raise ValueError(f"data.color_jitter={data_config.color_jitter}; allowed: 0 (off) <= color_jitter < 1.")
    if data_config.color_jitter and data_config.pipeline != "stream":
        raise ValueError(f"data.color_jitter={data_config.color_jitter} is applied by the streamed pipeline only; "
                         f"allowed with data.pipeline='memory': 0.")


def load_training_data(data_config):
    """The `dataset.Dataset` of `config.data`, read by its pipeline's loader (which checks the config first)."""
    if data_config.pipeline == "stream":
        from safa_jax.data.streaming import load_streaming_data  # TensorFlow only on this path.
        return load_streaming_data(data_config)
    from safa_jax.data.sources import load_data
    return load_data(data_config)
