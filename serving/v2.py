"""The KServe v2 / Triton servicer ``inference.GRPCInferenceService``.

Every graph is a v2 model named by its manifest ``triton_name`` (``lenet``, ``lenet.gradcam``,
``cvae.encoder``, ``cvae.decoder``); tensors travel in ``raw_input_contents`` /
``raw_output_contents`` (typed ``contents`` are accepted too), so tritonclient works unchanged.
"""
from __future__ import annotations

import numpy as np

from ._generated.inference import grpc_service_pb2 as pb
from ._generated.inference import grpc_service_pb2_grpc as pb_grpc
from ._generated.inference import model_config_pb2 as mc
from .errors import InvalidArgument, NotFound, ServingError
from .tensors import check_batch

V2_TYPES = {"float32": "FP32", "int64": "INT64"}
NP_TYPES = {"FP32": np.float32, "INT64": np.int64}
CONFIG_TYPES = {"float32": mc.TYPE_FP32, "int64": mc.TYPE_INT64}


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, runtime, version: str):
        self.rt = runtime
        self.version = version

    def _graph(self, name: str, version: str):
        if self.rt.repo is None:
            from .errors import Unavailable
            raise Unavailable("server is still loading models")
        if name not in self.rt.repo.triton_names:
            raise NotFound(f"unknown model {name!r}; models: {', '.join(sorted(self.rt.repo.triton_names))}")
        model_name, graph = self.rt.repo.triton_names[name]
        if version and not version.isdigit():
            raise InvalidArgument(f"model version must be an integer, got {version!r}")
        model = self.rt.model(model_name, int(version or 0))
        return model, model.graphs[graph]

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.rt.repo is not None and not self.rt.draining)

    async def ModelReady(self, request, context):
        async def go():
            try:  # a bool answer for any name: unknown, failed and not-yet-loaded models are not ready
                self._graph(request.name, request.version)
                return pb.ModelReadyResponse(ready=True)
            except ServingError:
                return pb.ModelReadyResponse(ready=False)
        return await self.rt.handle("ModelReady", request.name, context, go)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="glassbox", version=self.version, extensions=["model_configuration"])

    async def ModelMetadata(self, request, context):
        async def go():
            model, g = self._graph(request.name, request.version)
            t = lambda x: pb.ModelMetadataResponse.TensorMetadata(name=x["name"], datatype=V2_TYPES[x["dtype"]], shape=x["shape"])  # noqa: E731
            return pb.ModelMetadataResponse(name=request.name, versions=[str(v) for v in sorted(self.rt.repo.models[model.name])],
                                            platform="onnxruntime_onnx", inputs=[t(i) for i in g.inputs],
                                            outputs=[t(o) for o in g.outputs])
        return await self.rt.handle("ModelMetadata", request.name, context, go)

    async def ModelConfig(self, request, context):
        async def go():
            model, g = self._graph(request.name, request.version)

            def dims(x):
                return x["shape"][1:] or [1]
            return pb.ModelConfigResponse(config=mc.ModelConfig(
                name=request.name, platform="onnxruntime_onnx", max_batch_size=g.max_batch_size,
                input=[mc.ModelInput(name=i["name"], data_type=CONFIG_TYPES[i["dtype"]], dims=dims(i)) for i in g.inputs],
                output=[mc.ModelOutput(name=o["name"], data_type=CONFIG_TYPES[o["dtype"]], dims=dims(o)) for o in g.outputs],
                dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=int(self.rt.options["max_delay_s"] * 1e6))))
        return await self.rt.handle("ModelConfig", request.name, context, go)

    async def ModelInfer(self, request, context):
        async def go():
            model, g = self._graph(request.model_name, request.model_version)
            spec = {i["name"]: i for i in g.inputs}
            given = [i.name for i in request.inputs]
            if sorted(given) != sorted(spec):
                raise InvalidArgument(f"{request.model_name}: inputs {given}, expected {sorted(spec)}")
            raw = list(request.raw_input_contents)
            if raw and len(raw) != len(request.inputs):
                raise InvalidArgument(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
            feeds, n = {}, None
            for k, inp in enumerate(request.inputs):
                want = spec[inp.name]
                if inp.datatype != V2_TYPES[want["dtype"]]:
                    raise InvalidArgument(f"input {inp.name!r}: datatype {inp.datatype}, expected {V2_TYPES[want['dtype']]}")
                dtype = NP_TYPES[inp.datatype]
                shape = list(inp.shape)
                count = int(np.prod(shape)) if shape else 0
                if raw:
                    if len(raw[k]) != count * np.dtype(dtype).itemsize:
                        raise InvalidArgument(f"input {inp.name!r}: shape {shape} needs {count * np.dtype(dtype).itemsize} bytes, got {len(raw[k])}")
                    arr = np.frombuffer(raw[k], dtype).reshape(shape)
                else:
                    vals = inp.contents.fp32_contents if dtype == np.float32 else inp.contents.int64_contents
                    if len(vals) != count:
                        raise InvalidArgument(f"input {inp.name!r}: shape {shape} needs {count} values, got {len(vals)}")
                    arr = np.asarray(vals, dtype).reshape(shape)
                feeds[inp.name] = check_batch(arr, want["shape"], g.max_batch_size, f"input {inp.name!r}")
                if n is not None and len(arr) != n:
                    raise InvalidArgument("inputs disagree on the batch size")
                n = len(arr)
            if "target" in feeds:
                k = int(g.outputs[-1]["shape"][-1])  # the logits width
                if feeds["target"].min() < 0 or feeds["target"].max() >= k:
                    raise InvalidArgument(f"input 'target': class index out of range 0..{k - 1}")
            names = [o.name for o in request.outputs] or g.output_names
            unknown = [x for x in names if x not in g.output_names]
            if unknown:
                raise InvalidArgument(f"unknown output {', '.join(map(repr, unknown))}; outputs: {', '.join(g.output_names)}")
            out = await self.rt.run(model, g.name, feeds, names, context)
            resp = pb.ModelInferResponse(model_name=request.model_name, model_version=str(model.version), id=request.id)
            for name in names:
                a = np.ascontiguousarray(out[name])
                resp.outputs.add(name=name, datatype="INT64" if a.dtype == np.int64 else "FP32", shape=a.shape)
                resp.raw_output_contents.append(a.tobytes())
            return resp
        return await self.rt.handle("ModelInfer", request.model_name, context, go)
