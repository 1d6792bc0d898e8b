"""Fakes for the KServe v2 servicer (``serving.v2``) in-process: a runtime with a small repository, and
request builders. Shared by serving/test_v2.py, test_v2_properties.py and test_rest_body.py.
"""
from __future__ import annotations

import importlib
import sys

import numpy as np

from serving.errors import NotFound


def v2_modules():
    """(serving.v2, service_pb2, model_config_pb2) in a process that may also hold tritonclient.

    serving's generated v2 stubs and tritonclient's define the same protobuf symbols, which one
    process's descriptor pool refuses twice. The suite imports tritonclient in-process, so here
    serving's stub modules are tritonclient's (the same messages, from the same Triton protos):
    ``serving.v2`` itself is the real module under test."""
    from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
    for ours, theirs in (("grpc_service_pb2", service_pb2), ("grpc_service_pb2_grpc", service_pb2_grpc),
                         ("model_config_pb2", model_config_pb2)):
        name = f"serving._generated.inference.{ours}"
        if sys.modules.get(name) is not theirs:
            sys.modules[name] = theirs
    return importlib.import_module("serving.v2"), service_pb2, model_config_pb2


class FakeGraph:
    def __init__(self, name, triton_name, inputs, outputs, max_batch_size=4):
        self.name, self.triton_name, self.inputs, self.outputs = name, triton_name, inputs, outputs
        self.max_batch_size = max_batch_size
        from serving.stats import Stats
        self.stats = Stats()

    @property
    def output_names(self):
        return [o["name"] for o in self.outputs]


class FakeModel:
    def __init__(self, name, version, graphs, state="READY", error=""):
        self.name, self.version, self.graphs = name, version, {g.name: g for g in graphs}
        self.state, self.error, self.directory = state, error, str(version)


class FakeControl:
    """What the repository API asks of serving.control.ModelControl: load and unload, recorded."""

    def __init__(self):
        self.calls = []

    async def load(self, name):
        self.calls.append(("load", name))

    async def unload(self, name):
        self.calls.append(("unload", name))


def io_(name, shape, dtype="float32"):
    return {"name": name, "shape": shape, "dtype": dtype}


def classifier_graphs():
    cls = FakeGraph("classifier", "net", [io_("input", [-1, 1, 2, 2])],
                    [io_("logits", [-1, 3]), io_("probabilities", [-1, 3])])
    cam = FakeGraph("gradcam", "net.gradcam", [io_("input", [-1, 1, 2, 2]), io_("target", [-1], "int64")],
                    [io_("cam", [-1, 2, 2]), io_("logits", [-1, 3])], max_batch_size=2)
    return cls, cam


class FakeRuntime:
    """What InferenceServicer uses of serving.runtime.Runtime: repository, model, infer, handle, flags."""

    def __init__(self):
        cls, cam = classifier_graphs()
        dec = FakeGraph("decoder", "vae.decoder", [io_("latent", [-1, 2])], [io_("image", [-1, 1, 2, 2])])
        v1 = FakeModel("net", 1, [cls])  # version 1 was exported without its gradcam graph
        v2 = FakeModel("net", 2, classifier_graphs())
        vae = FakeModel("vae", 1, [dec])
        self.models = {"net": {1: v1, 2: v2}, "vae": {1: vae}}
        self.triton_names = {"net": ("net", "classifier"), "net.gradcam": ("net", "gradcam"),
                             "vae.decoder": ("vae", "decoder")}
        self.repo, self.draining, self.held = self, False, False
        self.generation = 0  # the repository's: v2's lookup cache is kept while it stays
        self.control = FakeControl()
        self.used = []  # every model a call was given (Runtime.use)
        self.on_disk = ["net", "vae", "waiting"]
        self.options = {"max_delay_s": 0.25}
        self.handled = []  # (method, model name, context) of every handle() call
        self.contexts = []  # the context every infer() call got
        self.calls = []
        self.loading = False

    def repository(self):
        from serving.errors import Unavailable
        if self.loading:
            raise Unavailable("server is still loading models")
        return self

    def use(self, model):
        self.used.append((model.name, model.version))
        return model

    def all(self):
        return [m for versions in self.models.values() for m in versions.values()]

    def names_on_disk(self):
        return self.on_disk

    def ready_versions(self, name):
        return sorted(self.models[name])

    def model(self, name, version=0):
        versions = self.models[name]
        v = version or max(versions)
        if v not in versions:
            raise NotFound(f"model {name!r} has no version {v}")
        return self.use(versions[v])

    async def infer(self, model, graph, feeds, outputs, context, n=None, parameters=b""):
        """Every output of the graph, counting up (the decoder repeats its latent): replies can be checked."""
        self.calls.append((model.name, model.version, graph, sorted(feeds), list(outputs), n))
        self.contexts.append(context)
        out = {}
        for o in model.graphs[graph].outputs:
            shape = [n, *o["shape"][1:]]
            out[o["name"]] = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        if graph == "decoder":
            out["image"] = np.repeat(feeds["latent"][:, None, None, :], 2, axis=2)
        return out

    async def handle(self, method, model_name, context, fn):
        self.handled.append((method, model_name, context))
        return await fn()


def servicer():
    v2, spb, mc = v2_modules()
    rt = FakeRuntime()
    return v2.InferenceServicer(rt, "9.9"), rt, spb, mc


def infer_request(spb, model, feeds, *, raw=True, outputs=(), version="", datatypes=None, shapes=None):
    """A ModelInferRequest for ``feeds`` ({name: array}), raw or typed contents."""
    inputs = []
    for name, a in feeds.items():
        dt = (datatypes or {}).get(name, "INT64" if a.dtype == np.int64 else "FP32")
        t = spb.ModelInferRequest.InferInputTensor(name=name, datatype=dt, shape=(shapes or {}).get(name, a.shape))
        if not raw:
            field = t.contents.int64_contents if a.dtype == np.int64 else t.contents.fp32_contents
            field.extend(a.ravel().tolist())
        inputs.append(t)
    return spb.ModelInferRequest(
        model_name=model, model_version=version, id="req-1", inputs=inputs,
        outputs=[spb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs],
        raw_input_contents=[a.tobytes() for a in feeds.values()] if raw else [])
