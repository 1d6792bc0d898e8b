"""Properties (hypothesis) of the KServe v2 ``ModelInfer`` checks (serving/v2.py, against a fake runtime):
whatever names, datatypes, shapes, byte counts and values a request holds, the answer is a reply or
``InvalidArgument`` with a one-line message, never another exception (INTERNAL on the wire). An
undamaged request must be answered, its values must reach the model unchanged, and the reply must hold
the model's outputs: a servicer that refused everything would fail here.

    .venv/bin/pytest -x -q tests/serving/test_v2_properties.py
"""
from __future__ import annotations

import asyncio

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from serving.errors import InvalidArgument
from tests.helpers.fakes import infer_request, servicer
from tests.helpers.properties import DIM, PROPERTY, one_line

OUTPUT_SHAPES = {"cam": (2, 2), "logits": (3,)}  # the fake Grad-CAM graph's: 3 classes, 2x2 maps


@st.composite
def v2_requests(draw, spb):
    """(request, whether it is valid): ModelInfer requests for the Grad-CAM graph (inputs 'input' FP32
    [N,1,2,2], 'target' INT64 [N], N <= 2) with any names, datatypes, shapes, byte counts, typed or raw
    contents, and any values; a third are valid."""
    raw, valid = draw(st.booleans()), True
    if not draw(st.integers(0, 2)):
        n = draw(st.integers(1, 2))
        feeds = {"input": draw(hnp.arrays(np.float32, (n, 1, 2, 2))),
                 "target": draw(hnp.arrays(np.int64, n, elements=st.integers(0, 2)))}
        if draw(st.booleans()):
            feeds = dict(reversed(feeds.items()))
        outputs = draw(st.lists(st.sampled_from(["cam", "logits"]), max_size=2, unique=True))
        return infer_request(spb, "net.gradcam", feeds, raw=raw, outputs=outputs), feeds
    feeds, datatypes, shapes = {}, {}, {}
    names = draw(st.one_of(st.sampled_from([["input", "target"], ["target", "input"]]),
                           st.lists(st.sampled_from(["input", "target", "other"]), max_size=3, unique=True)))
    valid &= sorted(names) == ["input", "target"]
    n = draw(st.integers(0, 4))  # one batch size for all, so that some requests are valid
    valid &= 1 <= n <= 2
    for name in names:
        if draw(st.integers(0, 3)):  # mostly a plausible tensor
            a = draw(hnp.arrays(np.int64, n, elements=st.integers(-2, 4)) if name == "target"
                     else hnp.arrays(np.float32, (n, 1, 2, 2)))
            valid &= name != "target" or bool(((a >= 0) & (a < 3)).all())
        else:
            a = draw(hnp.arrays(draw(st.sampled_from([np.float32, np.int64])), draw(st.integers(0, 12))))
            shapes[name], valid = draw(st.lists(DIM, max_size=5)), False
        feeds[name] = a
        if not draw(st.integers(0, 4)):
            datatypes[name], valid = draw(st.sampled_from(["FP32", "INT64", "FP64", "BYTES", ""])), False
    outputs = draw(st.lists(st.sampled_from(["cam", "logits", "image"]), max_size=2))
    valid &= "image" not in outputs and len(set(outputs)) == len(outputs)
    req = infer_request(spb, "net.gradcam", feeds, raw=raw, datatypes=datatypes, shapes=shapes, outputs=outputs)
    if raw and not draw(st.integers(0, 3)) and len(req.raw_input_contents):  # a byte count off by some
        k = draw(st.integers(0, len(req.raw_input_contents) - 1))
        cut = req.raw_input_contents[k][:draw(st.integers(0, 40))]
        valid &= cut == req.raw_input_contents[k]
        req.raw_input_contents[k] = cut
    return req, (feeds if valid else None)


def check_reply(reply, req, feeds: dict, seen: dict) -> None:
    """The model got the request's values and dtypes; the reply holds what the model returned (the fake
    counts up), the requested outputs or all of them, each shaped [N, ...]."""
    for name, a in feeds.items():
        assert seen[name].dtype == a.dtype and np.array_equal(seen[name], a, equal_nan=True), name
    n = len(feeds["input"])
    names = [o.name for o in req.outputs] or ["cam", "logits"]
    assert reply.model_name == "net.gradcam" and [o.name for o in reply.outputs] == names
    for out, data in zip(reply.outputs, reply.raw_output_contents, strict=True):
        shape = (n, *OUTPUT_SHAPES[out.name])
        assert tuple(out.shape) == shape and out.datatype == "FP32"
        assert np.array_equal(np.frombuffer(data, np.float32), np.arange(np.prod(shape), dtype=np.float32))


def test_any_v2_request_is_a_reply_or_invalid_argument():
    s, rt, spb, _ = servicer()
    seen, infer = {}, rt.infer

    async def recording(model, graph, feeds, *args, **kwargs):
        seen.clear()
        seen.update(feeds)
        return await infer(model, graph, feeds, *args, **kwargs)
    rt.infer = recording
    feeds = {"input": np.zeros((2, 1, 2, 2), np.float32), "target": np.array([0, 2], np.int64)}

    @PROPERTY
    @given(v2_requests(spb))
    @example((infer_request(spb, "net.gradcam", feeds), feeds))  # the reply path on every run, whatever is drawn
    def check(case):
        req, valid_feeds = case
        if valid_feeds is not None:
            check_reply(asyncio.run(s.ModelInfer(req, None)), req, valid_feeds, seen)
            return
        try:
            reply = asyncio.run(s.ModelInfer(req, None))
        except InvalidArgument as e:
            one_line(str(e))
        else:
            assert reply.model_name == "net.gradcam" and len(reply.raw_output_contents) == len(reply.outputs) >= 1

    check()
