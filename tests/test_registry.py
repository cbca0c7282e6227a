"""The data-source registry (safa_jax/data/registry.py): one parser and one validator for both pipelines."""

import pytest

from configs import common
from safa_jax.data import registry


def data_config(**overrides):
    config = common.get_config().data
    config.update(overrides)
    return config


def test_each_pipeline_reads_its_listed_forms():
    assert registry.source_forms("memory") == ("digits", "tfds:NAME", "folder:PATH")
    assert registry.source_forms("stream") == ("tfds:NAME", "folder:PATH", "imagenet_lt:LISTS_DIR",
                                               "places_lt:LISTS_DIR")
    assert registry.parse_source("tfds:cifar10", "memory") == ("tfds", "cifar10")
    assert registry.parse_source("folder:gs://b/x:y", "stream") == ("folder", "gs://b/x:y")  # only the 1st colon
    assert registry.parse_source("imagenet_lt:/lists", "stream") == ("imagenet_lt", "/lists")
    assert registry.parse_source("digits", "memory") == ("digits", "")


@pytest.mark.parametrize("source, pipeline, message", [
    ("digits", "stream", r"data.source='digits' cannot be streamed; set data.pipeline='memory' for it"),
    ("imagenet_lt:/lists", "memory", r"cannot be read into memory; set data.pipeline='stream' for it, or use "
                                     r"one of digits, tfds:NAME, folder:PATH"),
    ("digits:x", "memory", r"'digits:x' is not understood; allowed with data.pipeline='memory': digits, "),
    ("tfds:", "stream", r"'tfds:' is not understood; allowed with data.pipeline='stream': tfds:NAME, "),
    ("cifar10", "memory", r"'cifar10' is not understood"),
])
def test_a_source_the_pipeline_cannot_read_is_named_with_what_it_can(source, pipeline, message):
    with pytest.raises(ValueError, match=message):
        registry.validate_data_config(data_config(source=source, pipeline=pipeline,
                                                  mean=(0.5,) * 3, std=(0.25,) * 3))


@pytest.mark.parametrize("overrides, message", [
    (dict(pipeline="disk"), r"unknown config.data.pipeline='disk'; allowed: memory, stream"),
    (dict(color_jitter=0.4), r"data.color_jitter=0.4 is applied by the streamed pipeline only"),
    (dict(pipeline="stream", source="tfds:x"), r"streamed data needs both set"),
])
def test_pipeline_specific_fields_are_checked_once(overrides, message):
    with pytest.raises(ValueError, match=message):
        registry.validate_data_config(data_config(**overrides))
