"""The KServe v2 REST endpoint (``serve --http-port N``): HTTP/JSON and the binary tensor extension.

    GET  /v2/health/live                       200 while the process runs
    GET  /v2/health/ready                      200 once every model is loaded, 503 while loading or draining
    GET  /v2                                   server metadata
    GET  /v2/models/{name}[/versions/{v}]      model metadata (v2 names: lenet, lenet.gradcam, cvae.encoder)
    GET  /v2/models/{name}[/versions/{v}]/ready
    GET  /v2/models/{name}[/versions/{v}]/config
    POST /v2/models/{name}[/versions/{v}]/infer

A request becomes the gRPC servicer's own ``ModelInferRequest`` (JSON ``data`` as typed contents,
binary tensors as raw contents; serving/rest_body.py reads the body) and goes through
``InferenceServicer`` unchanged: the same validation, the same batchers of the same Runtime, the
same metrics and reply; only the envelope differs. Errors are ``{"error": "..."}`` with the HTTP
status of their gRPC code (``STATUS``); a body over the size limit (``--max-message-mb``, as for
gRPC) is 413.
"""
from __future__ import annotations

import asyncio
import errno
import json
import logging
import ssl

import grpc
import numpy as np
from aiohttp import web
from google.protobuf import json_format

from ._generated.inference import grpc_service_pb2 as pb
from .errors import InvalidArgument
from .rest_body import HEADER, parse_infer
from .v2 import NP_TYPES, InferenceServicer

log = logging.getLogger("glassbox.serving")

STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,  # a model that failed to load: retrying will not help
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
OFFLOAD_BYTES = 1 << 20  # JSON this large is parsed / written on a worker thread, not on the event loop


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


class _Context:
    """The part of a gRPC context that Runtime.handle and the servicer use: abort raises, so the
    REST handler turns the status code into an HTTP reply; no deadline (HTTP sends none)."""

    def time_remaining(self):
        return None

    async def abort(self, code, details):
        raise _Abort(code, details)


def error(status: int, message: str, headers=None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def reply_body(reply: pb.ModelInferResponse, wanted: dict, default: bool) -> tuple[bytes, dict]:
    """The servicer's reply as an HTTP body and headers: JSON ``data``, or binary tensors after the
    JSON for the outputs asked for with ``binary_data`` (``Inference-Header-Content-Length``)."""
    outputs, chunks = [], []
    for o, raw in zip(reply.outputs, reply.raw_output_contents, strict=True):
        entry = {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
        if wanted.get(o.name, default):
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = np.frombuffer(raw, NP_TYPES[o.datatype]).tolist()
        outputs.append(entry)
    head = {"model_name": reply.model_name, "model_version": reply.model_version,
            **({"id": reply.id} if reply.id else {}), "outputs": outputs}
    text = json.dumps(head).encode()
    if not chunks:
        return text, {"Content-Type": "application/json"}
    return b"".join([text, *chunks]), {"Content-Type": "application/octet-stream", HEADER: str(len(text))}


class RestServer:
    """aiohttp on the serving event loop; every call goes to the same InferenceServicer code as gRPC."""

    def __init__(self, runtime, version: str, *, max_body: int, grace: float = 10.0):
        self.rt = runtime
        self.v2 = InferenceServicer(runtime, version)
        self.max_body = max_body
        self.app = web.Application(client_max_size=max_body, middlewares=[_errors])
        r = self.app.router
        r.add_get("/v2", self.server_metadata)
        r.add_get("/v2/health/live", self.live)
        r.add_get("/v2/health/ready", self.ready)
        r.add_post("/v2/repository/index", self.repository_index)
        r.add_post("/v2/repository/models/{name}/load", self.repository_load)
        r.add_post("/v2/repository/models/{name}/unload", self.repository_unload)
        r.add_get("/v2/models/stats", self.statistics)
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            r.add_get(base, self.model_metadata)
            r.add_get(base + "/ready", self.model_ready)
            r.add_get(base + "/config", self.model_config)
            r.add_post(base + "/infer", self.infer)
            r.add_get(base + "/stats", self.statistics)
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=grace)
        self.port, self.scheme = 0, "http"

    async def start(self, host: str, port: int, *, tls_cert: str | None = None,
                    tls_key: str | None = None, reuse_port: bool = False) -> RestServer:
        """Listen on host:port, HTTPS with the gRPC port's certificate when given (OSError when it cannot);
        ``reuse_port``: SO_REUSEPORT, the port shared by the worker processes of ``serve --workers``."""
        context = None
        if tls_cert and tls_key:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls_cert, tls_key)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=context, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as e:
            await self.runner.cleanup()
            why = "already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            raise OSError(f"--http-port {port}: cannot listen on {host}:{port} ({why}; 0 disables REST)") from None
        self.port = self.runner.addresses[0][1]
        self.scheme = "https" if context else "http"
        return self

    async def stop(self) -> None:
        """Stop listening, let accepted requests finish (up to the grace period), close connections."""
        await self.runner.cleanup()

    @staticmethod
    def _model(request) -> tuple[str, str]:
        return request.match_info["name"], request.match_info.get("version", "")

    async def _call(self, method, message, build):
        """Call a servicer method; its reply through ``build``, or its abort as an HTTP error."""
        try:
            reply = await method(message, _Context())
        except _Abort as e:
            return error(STATUS.get(e.code, 500), e.details)
        return build(reply)

    async def live(self, request):
        return await self._call(self.v2.ServerLive, pb.ServerLiveRequest(),
                                lambda r: web.json_response({"live": r.live}, status=200 if r.live else 503))

    async def ready(self, request):
        def build(r):
            if r.ready:
                return web.json_response({"ready": True})
            why = "server is shutting down" if self.rt.draining else "server is still loading models"
            return web.json_response({"ready": False, "error": why}, status=503)
        return await self._call(self.v2.ServerReady, pb.ServerReadyRequest(), build)

    async def server_metadata(self, request):
        return await self._call(self.v2.ServerMetadata, pb.ServerMetadataRequest(), lambda r: web.json_response(
            {"name": r.name, "version": r.version, "extensions": list(r.extensions)}))

    async def model_metadata(self, request):
        name, version = self._model(request)

        def build(r):
            def tensor(t):
                return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
            return web.json_response({"name": r.name, "versions": list(r.versions), "platform": r.platform,
                                      "inputs": [tensor(t) for t in r.inputs],
                                      "outputs": [tensor(t) for t in r.outputs]})
        return await self._call(self.v2.ModelMetadata, pb.ModelMetadataRequest(name=name, version=version), build)

    async def model_config(self, request):
        name, version = self._model(request)
        return await self._call(self.v2.ModelConfig, pb.ModelConfigRequest(name=name, version=version),
                                lambda r: web.json_response(json_format.MessageToDict(
                                    r.config, preserving_proto_field_name=True)))

    # The repository and statistics extensions (serving/v2_repository.py), as Triton's HTTP API has them.

    async def repository_index(self, request):
        body = await request.read()
        try:
            ready = bool(json.loads(body).get("ready", False)) if body.strip() else False
        except (ValueError, AttributeError):
            return error(400, "the body must be a JSON object like {\"ready\": false}")
        return await self._call(self.v2.RepositoryIndex, pb.RepositoryIndexRequest(ready=ready),
                                lambda r: web.json_response([{"name": m.name, "version": m.version, "state": m.state,
                                                              "reason": m.reason} for m in r.models]))

    async def repository_load(self, request):
        return await self._call(self.v2.RepositoryModelLoad, pb.RepositoryModelLoadRequest(
            model_name=request.match_info["name"]), lambda r: web.json_response({}))

    async def repository_unload(self, request):
        return await self._call(self.v2.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(
            model_name=request.match_info["name"]), lambda r: web.json_response({}))

    async def statistics(self, request):
        name, version = request.match_info.get("name", ""), request.match_info.get("version", "")
        return await self._call(self.v2.ModelStatistics, pb.ModelStatisticsRequest(name=name, version=version),
                                lambda r: web.json_response(_numbers(json_format.MessageToDict(
                                    r, preserving_proto_field_name=True, always_print_fields_with_no_presence=True))))

    async def model_ready(self, request):
        """200 when the model (version) is served; else the reason with its status: 404 unknown,
        503 loading or draining, 400 a model that failed to load or a bad version."""
        name, version = self._model(request)
        ctx = _Context()

        async def go():
            self.v2._graph(name, version)
            return web.json_response({"name": name, "ready": True})
        try:
            return await self.rt.handle("ModelReady", name, ctx, go)
        except _Abort as e:
            return error(STATUS.get(e.code, 500), e.details)

    async def infer(self, request):
        name, version = self._model(request)
        if request.content_length is not None and request.content_length > self.max_body:
            raise web.HTTPRequestEntityTooLarge(max_size=self.max_body, actual_size=request.content_length)
        body = await request.read()  # 413 past client_max_size, however the body comes (chunked, compressed)
        try:
            parsed = await _maybe_offload(len(body), parse_infer, body, request.headers.get(HEADER), name, version)
        except InvalidArgument as e:
            return error(400, str(e))
        message, wanted, default = parsed
        try:
            reply = await self.v2.ModelInfer(message, _Context())
        except _Abort as e:
            return error(STATUS.get(e.code, 500), e.details)
        size = sum(len(c) for c in reply.raw_output_contents)
        data, headers = await _maybe_offload(size, reply_body, reply, wanted, default)
        return web.Response(body=data, headers=headers)


def _numbers(x, key: str = ""):
    """Protobuf's JSON writes 64-bit integers as strings; Triton's HTTP statistics have numbers (but a string
    version)."""
    if isinstance(x, dict):
        return {k: _numbers(v, k) for k, v in x.items()}
    if isinstance(x, list):
        return [_numbers(v, key) for v in x]
    return int(x) if isinstance(x, str) and x.isdigit() and key not in ("name", "version") else x


async def _maybe_offload(size: int, fn, *args):
    if size < OFFLOAD_BYTES:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


@web.middleware
async def _errors(request, handler):
    """aiohttp's own errors (no route, wrong method, body too large) as JSON errors too."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        generic = not e.text or e.text.startswith(f"{e.status}:")  # aiohttp's "404: Not Found"
        text = f"{e.reason}: {request.method} {request.path}" if generic else e.text
        return error(e.status, text, headers={k: v for k, v in e.headers.items() if k == "Allow"})
    except Exception as e:  # noqa: BLE001 - a bug in the REST layer: logged, 500, the server goes on
        log.exception("HTTP %s %s failed", request.method, request.path)
        return error(500, f"{type(e).__name__}: {e}")
