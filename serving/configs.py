"""Triton ``config.pbtxt`` files parsed into ``inference.ModelConfig``.

The message class is looked up by name in protobuf's default pool before this package's stubs are imported:
``tritonclient`` registers the same ``inference`` protos under other file names, and protobuf refuses a second
registration of a symbol, so a process that already imported tritonclient (a notebook, a test) would otherwise
fail to load any model.
"""
from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pool, message_factory, text_format


def _model_config_class():
    try:
        return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName("inference.ModelConfig"))
    except KeyError:
        from ._generated.inference import model_config_pb2
        return model_config_pb2.ModelConfig


def parse_config(file: Path):
    """The file as a ModelConfig (an empty one where there is no file); ValueError naming it if it does not parse."""
    config = _model_config_class()()
    if not file.is_file():
        return config
    try:
        return text_format.Parse(file.read_text(), config)
    except (text_format.ParseError, UnicodeDecodeError) as e:
        raise ValueError(f"{file.parent.name}/{file.name} does not parse: {e}") from None
