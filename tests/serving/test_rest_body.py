"""The REST infer body (serving/rest_body.py ``parse_infer``) in-process, fast: what each body becomes,
and the one-line message of every way a body can be wrong. The end-to-end twin, through a real server
and its HTTP statuses, is tests/serving/test_rest.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from serving.errors import InvalidArgument
from tests.helpers.fakes import v2_modules

v2_modules()  # serving's v2 stubs are tritonclient's in this process: the suite imports both, which share proto names
from serving.rest_body import HEADER, parse_infer  # noqa: E402 - after the stubs are in place

GOOD = {"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}


def body(inputs=None, **top) -> bytes:
    inputs = inputs if inputs is not None else [GOOD]
    return json.dumps({"inputs": inputs, **top}).encode()


def test_json_data_becomes_typed_contents_and_outputs_their_binary_choice():
    x = [[0.5, -1.0], [2.0, 3.25]]
    raw = body([{"name": "input", "shape": [2, 2], "datatype": "FP32", "data": x},
                {"name": "target", "shape": [2], "datatype": "INT64", "data": [3, 7]}], id="r1",
               parameters={"binary_data_output": True},
               outputs=[{"name": "logits"}, {"name": "probs", "parameters": {"binary_data": False}}])
    request, wanted, default = parse_infer(raw, None, "lenet", "2")
    assert (request.model_name, request.model_version, request.id) == ("lenet", "2", "r1")
    a, t = request.inputs
    assert (a.name, a.datatype, list(a.shape)) == ("input", "FP32", [2, 2])
    assert list(a.contents.fp32_contents) == [0.5, -1.0, 2.0, 3.25] and list(t.contents.int64_contents) == [3, 7]
    assert not request.raw_input_contents
    assert [o.name for o in request.outputs] == ["logits", "probs"]
    assert wanted == {"logits": True, "probs": False} and default is True


def test_binary_part_becomes_raw_contents():
    x = np.arange(6, dtype=np.float32)
    head = body([{"name": "input", "shape": [1, 6], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
                 {"name": "target", "shape": [1], "datatype": "INT64", "data": [4]}])
    request, wanted, default = parse_infer(head + x.tobytes(), str(len(head)), "lenet", "")
    assert request.raw_input_contents[0] == x.tobytes()
    assert np.frombuffer(request.raw_input_contents[1], np.int64).tolist() == [4]
    assert (request.id, wanted, default) == ("", {}, False)


def test_a_datatype_without_numpy_type_is_left_to_the_servicer():
    request, _, _ = parse_infer(body([{"name": "s", "shape": [1], "datatype": "BYTES", "data": ["x"]}]), None, "m", "")
    assert request.inputs[0].datatype == "BYTES" and not request.inputs[0].contents.fp32_contents


@pytest.mark.parametrize("raw, header, words", [
    (b"{bad", None, "request body is not valid JSON (key must be a string"),
    (b"\xff\xfe", None, "request body is not valid JSON"),
    (b"[]", None, 'request body must be a JSON object with a non-empty "inputs" list'),
    (b"{}", None, 'request body must be a JSON object with a non-empty "inputs" list'),
    (body([]), None, 'request body must be a JSON object with a non-empty "inputs" list'),
    (b'{"inputs": {}}', None, 'request body must be a JSON object with a non-empty "inputs" list'),
    (body(id=7), None, '"parameters" must be an object, "outputs" a list and "id" a string'),
    (body(parameters=[]), None, '"parameters" must be an object, "outputs" a list and "id" a string'),
    (body(outputs={}), None, '"parameters" must be an object, "outputs" a list and "id" a string'),
    (body([GOOD, 3]), None, "inputs[1] is not an object"),
    (body([{**GOOD, "name": 1}]), None, 'inputs[0]: "name" and "datatype" must be strings'),
    (body([{**GOOD, "datatype": None, "shape": "x"}]), None, 'inputs[0]: "name" and "datatype" must be strings'),
    (body([{**GOOD, "shape": [1, -2]}]), None, "input 'input': \"shape\" must be a list of non-negative integers"),
    (body([{**GOOD, "shape": [1, True]}]), None, "input 'input': \"shape\" must be a list of non-negative integers"),
    (body([{**GOOD, "shape": [1, 2.0]}]), None, "input 'input': \"shape\" must be a list of non-negative integers"),
    (body([{**GOOD, "parameters": 3}]), None, "input 'input': \"parameters\" must be an object"),
    (body([{**GOOD, "parameters": {"binary_data_size": -1}}]), None,
     "input 'input': binary_data_size must be a non-negative integer"),
    (body([GOOD, {**GOOD, "name": "b", "shape": -1}]), None, "input 'b': \"shape\" must be a list"),
    (body([{**GOOD, "shape": "x"}, {**GOOD, "name": 5}]), None, "input 'input': \"shape\""),  # reading order
    (body(outputs=[{}]), None, 'outputs[0] must be an object with a "name"'),
    (body(outputs=[{"name": "a"}, "b"]), None, 'outputs[1] must be an object with a "name"'),
    (body(outputs=[{"name": "a", "parameters": 1}]), None, 'outputs[0]: "parameters" must be an object'),
    (body(outputs=[{"name": "a", "parameters": {"classification": 3}}]), None,
     "the classification extension is not supported"),
    (body([{"name": "input", "shape": [1], "datatype": "FP32"}]), None,
     "input 'input': neither \"data\" nor a binary_data_size parameter"),
    (body([{**GOOD, "data": [[0.0], [0.0, 1.0]]}]), None, "input 'input': data is not a rectangular"),
    (body([{**GOOD, "data": None}]), None, "input 'input': FP32 data must be a list of numbers"),
    (body([{**GOOD, "datatype": "INT64", "data": [0.5]}]), None,
     "input 'input': INT64 data must be a list of integers"),
    (body(), "x", "Inference-Header-Content-Length: 'x' is not an integer"),
    (body(), "0", "Inference-Header-Content-Length: 0 is outside the body's"),
    (body(), "100000", "Inference-Header-Content-Length: 100000 is outside the body's"),
])
def test_every_bad_body_is_one_line_naming_what_is_wrong(raw, header, words):
    with pytest.raises(InvalidArgument) as e:
        parse_infer(raw, header, "m", "")
    assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_binary_part_must_match_the_sizes_declared():
    head = body([{"name": "input", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}])
    for tail, words in ((b"", "binary_data_size 4 runs past the body's binary part (0 bytes left)"),
                        (b"\0" * 12, "8 bytes of binary data beyond the inputs' binary_data_size")):
        with pytest.raises(InvalidArgument, match=words.replace("(", r"\(").replace(")", r"\)")):
            parse_infer(head + tail, str(len(head)), "m", "")
    assert HEADER == "Inference-Header-Content-Length"
