"""The body of the KServe v2 REST ``POST /v2/models/{name}/infer`` (serving/rest.py), read with pydantic
models shaped as KServe's own v2 data models, into the gRPC servicer's ``ModelInferRequest``.

    request, wanted, default = parse_infer(body, headers.get(HEADER), "lenet", "")

pydantic-core parses and checks the JSON in one pass; ``data`` stays the JSON value it is (a flat or
nested list) for numpy to turn into an array. Every way a body can be wrong is one ``InvalidArgument``
naming the field. ``benchmarks/rest_parse.py`` times this parser against another rest.py's.
"""
from __future__ import annotations

import json
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._generated.inference import grpc_service_pb2 as pb
from .errors import InvalidArgument
from .v2 import NP_TYPES

HEADER = "Inference-Header-Content-Length"  # the binary extension: the JSON part's length
Count = Annotated[int, Field(ge=0)]


class _Model(BaseModel):
    # strict: JSON true is not 1 and 2.0 is not 2, as with the isinstance checks this replaced.
    model_config = ConfigDict(strict=True)


class InputParameters(_Model):
    binary_data_size: Count | None = None


class RequestInput(_Model):
    name: str
    datatype: str
    shape: list[Count]
    parameters: InputParameters | None = None
    data: Any = None  # a JSON value; whether it was given at all (null included) is in model_fields_set


class RequestOutput(_Model):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Model):
    id: str = ""
    parameters: dict[str, Any] | None = None
    inputs: Annotated[list[RequestInput], Field(min_length=1)]
    outputs: list[RequestOutput] | None = None


# An error's message by where it is: (list, field of an item); "*" is any field below the one named.
_MESSAGES = {
    ("inputs", None): "inputs[{k}] is not an object",
    ("inputs", "name"): 'inputs[{k}]: "name" and "datatype" must be strings',
    ("inputs", "datatype"): 'inputs[{k}]: "name" and "datatype" must be strings',
    ("inputs", "shape"): 'input {name!r}: "shape" must be a list of non-negative integers',
    ("inputs", "parameters"): 'input {name!r}: "parameters" must be an object',
    ("inputs", "parameters*"): "input {name!r}: binary_data_size must be a non-negative integer",
    ("outputs", None): 'outputs[{k}] must be an object with a "name"',
    ("outputs", "name"): 'outputs[{k}] must be an object with a "name"',
    ("outputs", "parameters"): 'outputs[{k}]: "parameters" must be an object',
}


def _first(errors: list[dict]) -> tuple:
    """The location of the error met first in reading order: the body, then each input (its name and
    datatype before the rest), then each output."""
    def order(loc):
        if len(loc) < 2 or loc[0] not in ("inputs", "outputs"):
            return (0 if not loc or loc == ("inputs",) else 1,)
        return (2 if loc[0] == "inputs" else 3, loc[1], len(loc) > 2 and loc[2] not in ("name", "datatype"))
    return min((e["loc"] for e in errors), key=order)


def _message(e: ValidationError, body: bytes) -> str:
    errors = e.errors(include_url=False)
    if errors[0]["type"] == "json_invalid":
        return f"request body is not valid JSON ({errors[0]['ctx']['error']})"
    loc = _first(errors)
    if not loc or loc == ("inputs",):
        return 'request body must be a JSON object with a non-empty "inputs" list'
    if len(loc) == 1 or loc[0] not in ("inputs", "outputs"):
        return '"parameters" must be an object, "outputs" a list and "id" a string'
    field = None if len(loc) == 2 else loc[2] + ("*" if len(loc) > 3 and loc[2] == "parameters" else "")
    k = loc[1]
    # Only a bad body comes here, and its names were checked first: reading it again costs a good one nothing.
    name = json.loads(body)["inputs"][k]["name"] if loc[0] == "inputs" and field else None
    return _MESSAGES[loc[0], field].format(k=k, name=name)


def _array(data, datatype: str, name: str) -> np.ndarray | None:
    """A JSON ``data`` value (flat or nested row-major) as a flat array of the datatype's type;
    None for a datatype the servicer will refuse with its own message."""
    dtype = NP_TYPES.get(datatype)
    if dtype is None:
        return None
    try:
        a = np.asarray(data)
    except (ValueError, TypeError):  # ragged nesting
        raise InvalidArgument(f"input {name!r}: data is not a rectangular (nested) list of numbers") from None
    if a.dtype.kind not in ("iu" if dtype is np.int64 else "iuf"):
        raise InvalidArgument(f"input {name!r}: {datatype} data must be a list of "
                              f"{'integers' if dtype is np.int64 else 'numbers'}")
    return a.astype(dtype, copy=False).ravel()


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview | bytes]:
    """(the JSON part, the binary part) of a body, split where the binary extension's header says."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise InvalidArgument(f"{HEADER}: {header_length!r} is not an integer") from None
    if not 0 < n <= len(body):
        raise InvalidArgument(f"{HEADER}: {n} is outside the body's {len(body)} bytes")
    return body[:n], memoryview(body)[n:]


def _contents(inputs: list[RequestInput], binary) -> list:
    """Each input's contents: its slice of the binary part (bytes) or its ``data`` (an array)."""
    items, offset = [], 0
    for t in inputs:
        size = t.parameters.binary_data_size if t.parameters else None
        if size is not None:
            if offset + size > len(binary):
                raise InvalidArgument(f"input {t.name!r}: binary_data_size {size} runs past the body's binary part "
                                      f"({len(binary) - offset} bytes left)")
            items.append(bytes(binary[offset:offset + size]))
            offset += size
        elif "data" in t.model_fields_set:
            items.append(_array(t.data, t.datatype, t.name))
        else:
            raise InvalidArgument(f'input {t.name!r}: neither "data" nor a binary_data_size parameter')
    if offset != len(binary):
        raise InvalidArgument(f"{len(binary) - offset} bytes of binary data beyond the inputs' binary_data_size")
    return items


def parse_infer(body: bytes, header_length: str | None, model: str, version: str):
    """An HTTP infer body -> (the servicer's ModelInferRequest, output name -> binary?, binary default)."""
    text, binary = _split(body, header_length)
    try:
        req = InferenceRequest.model_validate_json(text)
    except ValidationError as e:
        raise InvalidArgument(_message(e, text)) from None
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=req.id)
    for t in req.inputs:
        request.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
    items = _contents(req.inputs, binary)
    if any(isinstance(x, bytes) for x in items):  # the servicer takes raw contents for all inputs or none
        request.raw_input_contents.extend(x if isinstance(x, bytes) else b"" if x is None else x.tobytes()
                                          for x in items)
    else:
        for inp, a in zip(request.inputs, items, strict=True):
            if a is not None:
                (inp.contents.int64_contents if a.dtype == np.int64 else inp.contents.fp32_contents).extend(a.tolist())
    default = (req.parameters or {}).get("binary_data_output", False)
    wanted = {}
    for o in req.outputs or []:
        op = o.parameters or {}
        if "classification" in op:
            raise InvalidArgument("the classification extension is not supported: ask for probabilities, or use "
                                  "the Glassbox Classify API (top-k with labels)")
        request.outputs.add(name=o.name)
        wanted[o.name] = bool(op.get("binary_data", default))
    return request, wanted, bool(default)
