"""A small typed client of the domain API (what the analysis CLI uses).

    from serving.client import GlassboxClient
    c = GlassboxClient("127.0.0.1:8500")
    print(c.list_models())
    res = c.classify("lenet", images)          # float32 [N,C,H,W] preprocessed, or PNG/JPEG bytes

Several connections: ``GlassboxClient("h:8500", channels=4)`` (a server started with ``serve --workers N``
shares its port among N processes, and the kernel spreads *connections* over them, so one connection would
reach one worker), or several servers, ``GlassboxClient("h1:8500,h2:8500")`` (or a list); calls go to the
channels in turn.
"""
from __future__ import annotations

import itertools
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from ._generated.glassbox.v1 import glassbox_pb2 as pb
from ._generated.glassbox.v1 import glassbox_pb2_grpc as pb_grpc


class GlassboxError(Exception):
    """A call the server refused: ``.code`` is the grpc.StatusCode, the message is the server's."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code, self.message = code, message


class ServerUnavailable(GlassboxError):
    """No server answered at the address within the bounded retry."""


@dataclass
class ModelStatus:
    name: str
    version: int
    task: str
    ready: bool
    error: str
    graphs: list[str]
    provider: str
    state: str = ""      # LOADING, READY, UNLOADING, UNAVAILABLE, FAILED
    directory: str = ""  # the version's directory (a FAILED one may not be a number)


@dataclass
class ClassifyResult:
    indices: np.ndarray        # [N, k]
    probs: np.ndarray          # [N, k]
    labels: list[list[str]]
    logits: np.ndarray | None  # [N, K]


@dataclass
class GradCamResult:
    cams: np.ndarray      # [N, H, W], not normalised
    targets: np.ndarray   # [N]
    logits: np.ndarray    # [N, K]


@dataclass
class ExplainResult:
    maps: np.ndarray      # [N, H, W] at input size, not normalised
    targets: np.ndarray   # [N]
    logits: np.ndarray    # [N, K]
    method: str
    seeds: list[int]      # smoothgrad with drawn noise: the seed of each request (one per chunk)


@dataclass
class EncodeResult:
    mean: np.ndarray
    logvar: np.ndarray
    z: np.ndarray | None


def _arr(t: pb.Tensor) -> np.ndarray:
    return np.frombuffer(t.data, np.int64 if t.dtype == "int64" else np.float32).reshape(tuple(t.shape))


def _tensor(a: np.ndarray) -> pb.Tensor:
    a = np.ascontiguousarray(a, np.float32)
    return pb.Tensor(shape=a.shape, data=a.tobytes(), dtype="float32")


def _images(images) -> pb.Images:
    if isinstance(images, np.ndarray):
        return pb.Images(tensor=_tensor(images))
    return pb.Images(encoded=pb.EncodedImages(files=list(images)))


# gRPC name-resolver schemes: such a target names several servers itself ("ipv4:10.0.0.2:8500,10.0.0.3:8500",
# "dns:///glassbox-serve.ns.svc.cluster.local:8500"), so its commas are its own.
RESOLVER = re.compile(r"(dns|ipv4|ipv6|unix|unix-abstract|xds):(?!\d+(,|$))")  # "dns:8500": host dns
# One channel over every address the target resolves to, a call to each in turn; gRPC re-resolves a dns:
# target when a connection closes (serve --max-connection-age-ms), so new pods are found.
ROUND_ROBIN = ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}))


def addresses(address: str | Sequence[str]) -> list[str]:
    """``"h:p"``, ``"h:p1,h:p2"`` or a list of them -> the addresses, in order. A resolver target (``dns:``,
    ``ipv4:``, ...) is one address, commas and all."""
    parts = [address] if isinstance(address, str) else list(address)
    found = [a.strip() for part in parts for a in ([part] if RESOLVER.match(part.strip()) else part.split(","))
             if a.strip()]
    if not found:
        raise ValueError(f"no server address in {address!r}")
    return found


def backends(address: str) -> list[str]:
    """The servers one address names, where it lists them: ``"ipv4:a:p,b:p"`` -> ``["a:p", "b:p"]``
    (``ipv6:`` likewise); a ``dns:`` name or a plain ``"h:p"`` is itself."""
    scheme, _, rest = address.partition(":")
    if scheme in ("ipv4", "ipv6") and RESOLVER.match(address):
        return [a.strip() for a in rest.split(",") if a.strip()]
    return [address]


def wait_for_server(address: str | Sequence[str], timeout: float = 60.0) -> None:
    """Block until the server's health service says SERVING (models loaded); ServerUnavailable after ``timeout``.
    Several addresses (a list, or comma-separated): until every one does."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    deadline = time.monotonic() + timeout
    several = [b for a in addresses(address) for b in backends(a)]
    if len(several) > 1:
        for one in several:
            wait_for_server(one, max(0.0, deadline - time.monotonic()))
        return
    address = several[0]
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise ServerUnavailable(grpc.StatusCode.UNAVAILABLE,
                            f"no serving Glassbox server at {address} after {timeout:.0f}s")


class GlassboxClient:
    """The domain API. ``address``: ``"host:port"``, several comma-separated, or a list; ``channels``: connections
    per address. Calls go to the ``len(addresses) * channels`` channels in turn (round-robin); thread-safe.
    A gRPC resolver target (``"dns:///name:8500"``, ``"ipv4:10.0.0.2:8500,10.0.0.3:8500"``) is one address
    whose channel balances calls over every server it resolves to (gRPC's round_robin policy); a call refused
    UNAVAILABLE (a server draining or gone) is retried on the next server."""

    def __init__(self, address: str | Sequence[str] = "127.0.0.1:8500", timeout: float = 60.0,
                 connect_timeout: float = 5.0, chunk: int = 256, max_message_mb: int = 64,
                 tls_ca: bytes | None = None, channels: int = 1):
        if channels < 1:
            raise ValueError(f"channels must be at least 1, not {channels}")
        self.addresses = addresses(address)
        self.address, self.timeout, self.chunk = ",".join(self.addresses), timeout, chunk
        limit = max_message_mb * 1024 * 1024
        self._message_limit = limit
        self._manifests: dict[str, dict] = {}  # model -> its manifest (batch and message sizes for chunking)
        options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
        if channels > 1:  # channels alike share one connection (gRPC's global subchannel pool): one each
            options.append(("grpc.use_local_subchannel_pool", 1))
        self.channels: list[grpc.Channel] = []
        for a in self.addresses:
            for k in range(channels):
                extra = [("glassbox.client.channel", k)] if channels > 1 else []
                extra += [ROUND_ROBIN] if RESOLVER.match(a) else []
                if tls_ca is not None:  # a server started with --tls-cert/--tls-key; tls_ca: its PEM CA (or the cert)
                    creds = grpc.ssl_channel_credentials(tls_ca)
                    self.channels.append(grpc.secure_channel(a, creds, options=options + extra))
                else:
                    self.channels.append(grpc.insecure_channel(a, options=options + extra))
        ready = [grpc.channel_ready_future(ch) for ch in self.channels]
        deadline = time.monotonic() + connect_timeout
        for i, future in enumerate(ready):  # a bounded wait: a down server is one clear error, not a hang
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except grpc.FutureTimeoutError:
                self.close()
                down = self.addresses[i // channels]
                raise ServerUnavailable(grpc.StatusCode.UNAVAILABLE,
                                        f"no Glassbox server at {down} (waited {connect_timeout:.0f}s); start one with "
                                        f"'serve --repository exported --port {down.rsplit(':', 1)[-1]}'") from None
        self.stubs = [pb_grpc.GlassboxStub(ch) for ch in self.channels]
        # Several servers: one that is shutting down refuses a call it never ran, so another may take it.
        self._several = len(self.addresses) > 1 or any(RESOLVER.match(a) for a in self.addresses)
        self.channel, self.stub = self.channels[0], self.stubs[0]
        self._turn = itertools.count()  # next() on it is atomic under the GIL: threads may share the client

    def close(self) -> None:
        for ch in self.channels:
            ch.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method: str, request, retries: int = 2):
        for attempt in range(retries + 1):
            try:
                stub = self.stubs[next(self._turn) % len(self.stubs)]  # a retry goes to the next channel
                return getattr(stub, method)(request, timeout=self.timeout)
            except grpc.RpcError as e:
                # UNAVAILABLE while loading or a transient reconnect is worth a short retry.
                unavailable = e.code() == grpc.StatusCode.UNAVAILABLE
                elsewhere = self._several or "shutting down" not in (e.details() or "")
                if unavailable and attempt < retries and elsewhere:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                cls = ServerUnavailable if unavailable else GlassboxError
                raise cls(e.code(), e.details() or "") from None

    def _chunk_size(self, name: str, images, out_bytes: int = 0) -> int:
        """Images per request: within the model's max_batch_size, and the request and the reply
        (``out_bytes`` per image) well inside the message limit."""
        if name not in self._manifests:
            try:
                self._manifests[name] = self.get_model(name)
            except GlassboxError:  # unknown or unserved model: the real call will say so
                return self.chunk
        size = min(self.chunk, int(self._manifests[name].get("max_batch_size") or self.chunk))
        per_image = images[0].nbytes if isinstance(images, np.ndarray) else max(map(len, images))
        return max(1, min(size, int(self._message_limit * 0.9) // max(per_image, out_bytes, 1)))

    def _chunks(self, images, name: str | None = None, out_bytes: int = 0):
        n = len(images)
        if n == 0:  # let the server say what is wrong with an empty batch
            yield images
            return
        size = self._chunk_size(name, images, out_bytes) if name else self.chunk
        for i in range(0, n, size):
            yield images[i:i + size]

    def _layer_bytes(self, name: str, layers) -> int:
        """Reply bytes per image of an Embed call, from the manifest's output shapes (0 if unknown)."""
        graph = self._manifests.get(name, {}).get("graphs", {}).get("classifier", {})
        shapes = {o["name"]: o.get("shape", []) for o in graph.get("outputs", [])}
        return sum(4 * math.prod(abs(d) for d in shapes[layer][1:]) for layer in layers if layer in shapes)

    def list_models(self) -> list[ModelStatus]:
        r = self._call("ListModels", pb.ListModelsRequest())
        return [ModelStatus(m.name, m.version, m.task, m.ready, m.error, list(m.graphs), m.provider, m.state,
                            m.directory) for m in r.models]

    def get_model(self, name: str, version: int | None = None) -> dict:
        r = self._call("GetModel", pb.GetModelRequest(name=name, version=version or 0))
        return json.loads(r.manifest_json)

    def classify(self, name: str, images, top_k: int = 5, return_logits: bool = False) -> ClassifyResult:
        idx, probs, labels, logits = [], [], [], []
        for part in self._chunks(images, name):
            r = self._call("Classify", pb.ClassifyRequest(name=name, images=_images(part), top_k=top_k,
                                                          return_logits=return_logits))
            idx += [list(p.indices) for p in r.predictions]
            probs += [list(p.probabilities) for p in r.predictions]
            labels += [list(p.labels) for p in r.predictions]
            if return_logits:
                logits.append(_arr(r.logits))
        return ClassifyResult(np.array(idx, np.int64), np.array(probs, np.float32), labels,
                              np.concatenate(logits) if return_logits else None)

    def embed(self, name: str, images, layers) -> dict[str, np.ndarray]:
        layers = [layers] if isinstance(layers, str) else list(layers)
        parts: dict[str, list] = {layer: [] for layer in layers}
        if len(images) and name not in self._manifests:
            self._chunk_size(name, images)  # fetches the manifest
        for part in self._chunks(images, name, self._layer_bytes(name, layers)):
            r = self._call("Embed", pb.EmbedRequest(name=name, images=_images(part), layers=layers))
            for layer in layers:
                parts[layer].append(_arr(r.embeddings[layer]))
        return {layer: np.concatenate(v) for layer, v in parts.items()}

    def gradcam(self, name: str, images, targets=None) -> GradCamResult:
        cams, ts, logits = [], [], []
        targets = None if targets is None else np.asarray(targets, np.int64).reshape(-1)
        start = 0
        for part in self._chunks(images, name):
            t = [] if targets is None else targets[start:start + len(part)].tolist()
            start += len(part)
            r = self._call("GradCam", pb.GradCamRequest(name=name, images=_images(part), targets=t))
            cams.append(_arr(r.cams))
            ts += list(r.targets)
            logits.append(_arr(r.logits))
        return GradCamResult(np.concatenate(cams), np.array(ts, np.int64), np.concatenate(logits))

    def explain(self, name: str, images, method: str, targets=None, *, seed: int = 0, noise=None,
                noise_std: float = 0.0) -> ExplainResult:
        """``method``'s maps for ``images`` (the predicted classes unless ``targets``). SmoothGrad: ``noise``
        [N, samples, C, H, W] as given, else drawn by the server from ``seed`` (chunk i of a large call
        from ``seed + i``; 0: random seeds, returned in ``seeds``) with ``noise_std`` (0: the manifest's)."""
        from .explain import max_images
        maps, ts, logits, seeds = [], [], [], []
        targets = None if targets is None else np.asarray(targets, np.int64).reshape(-1)
        if len(images):
            self._chunk_size(name, images)  # fetches the manifest
        most = max_images(method, self._manifests[name]) if name in self._manifests else self.chunk
        start = 0
        for i, part in enumerate(self._chunks(images, name)):
            for j in range(0, max(1, len(part)), most):
                sub, at = part[j:j + most], start + j
                options = pb.ExplainOptions(seed=seed + i + j if seed else 0, noise_std=noise_std)
                if noise is not None:
                    options.noise.CopyFrom(_tensor(np.ascontiguousarray(noise[at:at + len(sub)], np.float32)))
                t = [] if targets is None else targets[at:at + len(sub)].tolist()
                r = self._call("Explain", pb.ExplainRequest(name=name, images=_images(sub), method=method, targets=t,
                                                            options=options))
                maps.append(_arr(r.maps))
                ts += list(r.targets)
                logits.append(_arr(r.logits))
                seeds.append(int(r.seed))
            start += len(part)
        return ExplainResult(np.concatenate(maps), np.array(ts, np.int64), np.concatenate(logits), method, seeds)

    def encode(self, name: str, images, sample: bool = False, seed: int = 0) -> EncodeResult:
        means, logvars, zs = [], [], []
        for part in self._chunks(images, name):
            r = self._call("Encode", pb.EncodeRequest(name=name, images=_images(part), sample=sample, seed=seed))
            means.append(_arr(r.mean))
            logvars.append(_arr(r.logvar))
            if sample:
                zs.append(_arr(r.z))
        return EncodeResult(np.concatenate(means), np.concatenate(logvars), np.concatenate(zs) if sample else None)

    def decode(self, name: str, latents: np.ndarray) -> np.ndarray:
        return np.concatenate([_arr(self._call("Decode", pb.DecodeRequest(name=name, latents=_tensor(p))).images)
                               for p in self._chunks(np.asarray(latents, np.float32), name)])

    def reconstruct(self, name: str, images) -> np.ndarray:
        return np.concatenate([
            _arr(self._call("Reconstruct", pb.ReconstructRequest(name=name, images=_images(p))).images)
            for p in self._chunks(images, name)])

    def interpolate(self, name: str, a, b, steps: int = 10, alphas=None, latent: bool = False) -> np.ndarray:
        """Decoded images from ``a`` to ``b`` (two images, or two latents with ``latent=True``)."""
        req = pb.InterpolateRequest(name=name, steps=steps, alphas=list(alphas) if alphas is not None else [])
        if latent:
            req.latents.CopyFrom(_tensor(np.stack([np.asarray(a), np.asarray(b)])))
        elif isinstance(a, (bytes, bytearray)):
            req.images.CopyFrom(_images([a, b]))
        else:
            req.images.CopyFrom(_images(np.stack([np.asarray(a, np.float32), np.asarray(b, np.float32)])))
        return _arr(self._call("Interpolate", req).images)
