"""The KServe v2 / Triton servicer ``inference.GRPCInferenceService``.

Every graph is a v2 model named by its manifest ``triton_name`` (``lenet``, ``lenet.gradcam``,
``cvae.encoder``, ``cvae.decoder``); tensors travel in ``raw_input_contents`` /
``raw_output_contents`` (typed ``contents`` are accepted too), so tritonclient works unchanged.
Values are not checked: NaN and Inf reach the model as they are, as with Triton (the domain API refuses them).
"""
from __future__ import annotations

import time

import numpy as np

from . import v2_repository
from ._generated.inference import grpc_service_pb2 as pb
from ._generated.inference import grpc_service_pb2_grpc as pb_grpc
from ._generated.inference import model_config_pb2 as mc
from .errors import InvalidArgument, NotFound, ServingError

V2_TYPES = {"float32": "FP32", "int64": "INT64"}
# perf_analyzer asks for server-side statistics only from a server that lists "statistics" here.
EXTENSIONS = ["model_configuration", "model_repository", "statistics"]
NP_TYPES = {"FP32": np.float32, "INT64": np.int64}
CONFIG_TYPES = {"float32": mc.TYPE_FP32, "int64": mc.TYPE_INT64}


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, runtime, version: str):
        self.rt = runtime
        self.version = version
        self._cache: dict[tuple[str, str], tuple] = {}
        self._generation = -1  # the repository's, when the cache was filled

    def _graph(self, name: str, version: str):
        repo = self.rt.repository()
        if name not in repo.triton_names:
            raise NotFound(f"unknown model {name!r}; models: {', '.join(sorted(repo.triton_names))}")
        model_name, graph = repo.triton_names[name]
        if version and not version.isdigit():
            raise InvalidArgument(f"model version must be an integer, got {version!r}")
        model = self.rt.model(model_name, int(version or 0))
        if graph not in model.graphs:  # an older version exported without this graph
            raise NotFound(f"model {name!r} version {model.version} has no {graph} graph")
        return model, model.graphs[graph]

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.rt.repo is not None and not self.rt.draining and not self.rt.held)

    async def ModelReady(self, request, context):
        async def go():
            try:  # a bool answer for any name: unknown, failed and not-yet-loaded models are not ready
                self._graph(request.name, request.version)
                return pb.ModelReadyResponse(ready=True)
            except ServingError:
                return pb.ModelReadyResponse(ready=False)
        return await self.rt.handle("ModelReady", request.name, context, go)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="glassbox", version=self.version, extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):
        async def go():
            model, g = self._graph(request.name, request.version)
            versions = [str(v) for v in self.rt.repository().ready_versions(model.name)]
            return pb.ModelMetadataResponse(name=request.name, versions=versions, platform="onnxruntime_onnx",
                                            inputs=[_metadata(i) for i in g.inputs],
                                            outputs=[_metadata(o) for o in g.outputs])
        return await self.rt.handle("ModelMetadata", request.name, context, go)

    async def ModelConfig(self, request, context):
        async def go():
            model, g = self._graph(request.name, request.version)
            delay_us = int(self.rt.options["max_delay_s"] * 1e6)
            return pb.ModelConfigResponse(config=mc.ModelConfig(
                name=request.name, platform="onnxruntime_onnx", max_batch_size=g.max_batch_size,
                input=[mc.ModelInput(name=i["name"], data_type=CONFIG_TYPES[i["dtype"]], dims=_dims(i))
                       for i in g.inputs],
                output=[mc.ModelOutput(name=o["name"], data_type=CONFIG_TYPES[o["dtype"]], dims=_dims(o))
                        for o in g.outputs],
                dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=delay_us)))
        return await self.rt.handle("ModelConfig", request.name, context, go)

    # The repository and statistics extensions (serving/v2_repository.py).

    async def ModelStatistics(self, request, context):
        return await self.rt.handle("ModelStatistics", request.name, context,
                                    lambda: v2_repository.statistics(self.rt, request.name, request.version))

    async def RepositoryIndex(self, request, context):
        return await self.rt.handle("RepositoryIndex", "", context,
                                    lambda: v2_repository.index(self.rt, request.ready))

    async def RepositoryModelLoad(self, request, context):
        return await self.rt.handle("RepositoryModelLoad", request.model_name, context,
                                    lambda: v2_repository.load(self.rt, request.model_name))

    async def RepositoryModelUnload(self, request, context):
        return await self.rt.handle("RepositoryModelUnload", request.model_name, context,
                                    lambda: v2_repository.unload(self.rt, request.model_name))

    def _resolve(self, name: str, version: str):
        """(model, graph, spec) for a v2 name and version, held for this call (``Runtime.use``); cached until the
        repository's generation moves (a version loaded or retired), as this lookup sits on the hot path.
        Failures raise and are not cached."""
        generation = self.rt.repository().generation
        if generation != self._generation:
            self._cache.clear()
            self._generation = generation
        key = (name, version)
        hit = self._cache.get(key)
        if hit is None:
            model, g = self._graph(name, version)  # held by Runtime.model
            return self._cache.setdefault(key, (model, g, _Spec(g, model.version)))
        self.rt.use(hit[0])
        return hit

    async def ModelInfer(self, request, context):
        return await self.rt.handle("ModelInfer", request.model_name, context, lambda: self._infer(request, context))

    async def _infer(self, request, context):
        self.rt.repository()  # UNAVAILABLE while loading, whatever the name
        model, g, spec = self._resolve(request.model_name, request.model_version)
        t0, ok = time.perf_counter_ns(), False
        try:
            reply = await self._run(request, context, model, g, spec)
            ok = True
            return reply
        finally:
            g.stats.request(time.perf_counter_ns() - t0, ok)

    async def _run(self, request, context, model, g, spec):
        raw = request.raw_input_contents
        if raw and len(raw) != len(request.inputs):
            raise InvalidArgument(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
        feeds, n = {}, None
        for k, inp in enumerate(request.inputs):
            s = spec.inputs.get(inp.name)
            if s is None or inp.name in feeds:
                raise InvalidArgument(f"{request.model_name}: input {inp.name!r} unknown or repeated; "
                                      f"inputs: {', '.join(spec.inputs)}")
            name, v2type, dtype, tail, per_item = s
            if inp.datatype != v2type:
                raise InvalidArgument(f"input {name!r}: datatype {inp.datatype or '(none)'}, expected {v2type}")
            shape = tuple(inp.shape)
            if len(shape) != len(tail) + 1 or shape[1:] != tail:
                raise InvalidArgument(f"input {name!r}: shape {list(shape)} does not match the model's {['N', *tail]}")
            b = shape[0]
            if b <= 0:
                raise InvalidArgument(f"input {name!r}: empty batch (shape {list(shape)})")
            if b > g.max_batch_size:
                raise InvalidArgument(f"input {name!r}: batch of {b} is above the maximum of {g.max_batch_size}; "
                                      "split it")
            if n is not None and b != n:
                raise InvalidArgument(f"inputs disagree on the batch size ({n} and {b})")
            n = b
            if raw:
                if len(raw[k]) != b * per_item:
                    raise InvalidArgument(f"input {name!r}: shape {list(shape)} needs {b * per_item} bytes, "
                                          f"got {len(raw[k])}")
                arr = np.frombuffer(raw[k], dtype).reshape(shape)
            else:  # typed contents: slower, but part of the protocol
                vals = inp.contents.fp32_contents if dtype is np.float32 else inp.contents.int64_contents
                if len(vals) * dtype().itemsize != b * per_item:
                    raise InvalidArgument(f"input {name!r}: shape {list(shape)} needs "
                                          f"{b * per_item // dtype().itemsize} values, got {len(vals)}")
                arr = np.asarray(vals, dtype).reshape(shape)
            feeds[name] = arr  # NaN and Inf go to the model as they are, as Triton does
        if len(feeds) != len(spec.inputs):
            raise InvalidArgument(f"{request.model_name}: inputs {list(feeds)}, expected {list(spec.inputs)}")
        if "target" in feeds and spec.classes:
            t = feeds["target"]
            if t.min() < 0 or t.max() >= spec.classes:
                raise InvalidArgument(f"input 'target': class index out of range 0..{spec.classes - 1}")
        names = [o.name for o in request.outputs] if request.outputs else g.output_names
        for x in names:
            if x not in spec.outputs:
                raise InvalidArgument(f"unknown output {x!r}; outputs: {', '.join(g.output_names)}")
        # The request's parameters are part of the response cache's key (sorted: a map's order is not fixed).
        params = b";".join(k.encode() + b"=" + v.SerializeToString() for k, v in sorted(request.parameters.items()))
        out = await self.rt.infer(model, g.name, feeds, names, context, n, params)
        arrays = [out[x] for x in names]
        return pb.ModelInferResponse(
            model_name=request.model_name, model_version=spec.version, id=request.id,
            outputs=[_Out(name=x, datatype=spec.outputs[x], shape=a.shape) for x, a in zip(names, arrays, strict=True)],
            raw_output_contents=[a.tobytes() for a in arrays])


_Out = pb.ModelInferResponse.InferOutputTensor


def _metadata(x: dict):
    """A manifest tensor entry as v2 model metadata."""
    return pb.ModelMetadataResponse.TensorMetadata(name=x["name"], datatype=V2_TYPES[x["dtype"]], shape=x["shape"])


def _dims(x: dict) -> list:
    """A manifest tensor entry's config dims: its shape without the batch axis ([1] for one value per item)."""
    return x["shape"][1:] or [1]


class _Spec:
    """What ModelInfer checks a request against, computed once per graph."""

    def __init__(self, g, version: int):
        self.version = str(version)
        self.inputs = {}
        for i in g.inputs:
            dtype = NP_TYPES[V2_TYPES[i["dtype"]]]
            tail = tuple(int(d) for d in i["shape"][1:])
            per_item = int(np.prod(tail, dtype=np.int64)) * np.dtype(dtype).itemsize
            self.inputs[i["name"]] = (i["name"], V2_TYPES[i["dtype"]], dtype, tail, per_item)
        self.outputs = {o["name"]: V2_TYPES[o["dtype"]] for o in g.outputs}
        logits = [o for o in g.outputs if o["name"] == "logits"]
        self.classes = int(logits[0]["shape"][-1]) if logits else 0
