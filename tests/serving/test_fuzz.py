"""Hostile bytes against a real `serve` subprocess: valid requests of every RPC of both services (the
glassbox.v1 domain API and KServe v2), serialized, then mutated (bit flips, truncation, insertion, random
bytes) and sent raw. The server must answer each with a status that names the problem (never INTERNAL or
UNKNOWN, DEADLINE_EXCEEDED or anything else outside an allow-list), keep answering health, and not grow by
more than a few tens of bytes per request.

    .venv/bin/pytest -x -q tests/serving/test_fuzz.py
"""
import collections
import io
import os
import random
import re
import statistics
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from serving._generated.glassbox.v1 import glassbox_pb2 as pb
from tests.helpers.paths import ROOT
from tests.helpers.server import start_server, stop_server

DOMAIN = "/glassbox.v1.Glassbox/"
V2 = "/inference.GRPCInferenceService/"
# Our v2 stubs and tritonclient's share proto names, so they never meet in one process: the v2 messages are
# built with tritonclient's, and the v2 methods we serve are read from our proto.
V2_METHODS = re.findall(r"^\s*rpc (\w+)\(", (ROOT / "protos/inference/grpc_service.proto").read_text(), re.M)
DOMAIN_METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["Glassbox"].methods]
# What a mutated request may get, each a status the API names for a request's fault: a malformed or
# inconsistent one (INVALID_ARGUMENT), a name or version that is not there (NOT_FOUND), an RPC the
# model's task does not have (FAILED_PRECONDITION). DEADLINE_EXCEEDED, UNAVAILABLE, INTERNAL or UNKNOWN on an
# idle server would be the server's fault.
ALLOWED = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION"}
# Nine rounds of 2,000 mutated requests. The server's RSS settles over the first five (allocator arenas, gRPC's
# buffers, caches filling); from there it moves by a step now and then, while a leak grows it every round: the
# median of the last four rounds' growth is the leak's.
ROUNDS, PER_ROUND, SETTLED = 9, 2000, 5
# Not among the seeds: loading and unloading change what the other calls find (tests/serving/
# test_live_repository.py has them); their undecodable bytes are checked here with every RPC's.
STATEFUL = {"RepositoryModelLoad", "RepositoryModelUnload"}
# A leak of a few hundred bytes a call grows the RSS by over half a megabyte a round; the settled server's
# median round stays within a few hundred KiB of flat.
LEAK_BYTES = 100


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))


def tensor(x: np.ndarray) -> pb.Tensor:
    return pb.Tensor(shape=x.shape, data=x.tobytes(), dtype="int64" if x.dtype == np.int64 else "float32")


def png(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def seeds(latent_dim: int) -> list[tuple[str, bytes]]:
    """Valid requests, serialized: (method path, bytes); every RPC of both services at least once (but
    the STATEFUL ones)."""
    from tritonclient.grpc import service_pb2 as tpb
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    images = pb.Images(tensor=tensor(x))
    files = pb.Images(encoded=pb.EncodedImages(files=[png(rng), png(rng)]))
    z = rng.standard_normal((2, latent_dim)).astype(np.float32)
    domain = [
        ("ListModels", pb.ListModelsRequest()),
        ("GetModel", pb.GetModelRequest(name="lenet")),
        ("GetModel", pb.GetModelRequest(name="cvae", version=1)),
        ("Classify", pb.ClassifyRequest(name="lenet", images=images, top_k=3, return_logits=True)),
        ("Classify", pb.ClassifyRequest(name="mlp", images=files)),
        ("Embed", pb.EmbedRequest(name="lenet", images=images, layers=["fc1", "conv2"])),
        ("GradCam", pb.GradCamRequest(name="lenet", images=images, targets=[3, 7])),
        ("GradCam", pb.GradCamRequest(name="lenet", images=files)),
        ("Explain", pb.ExplainRequest(name="lenet", images=images, method="gradcam", targets=[3, 7])),
        ("Encode", pb.EncodeRequest(name="cvae", images=images, sample=True, seed=7)),
        ("Decode", pb.DecodeRequest(name="cvae", latents=tensor(z))),
        ("Reconstruct", pb.ReconstructRequest(name="cvae", images=images)),
        ("Interpolate", pb.InterpolateRequest(name="cvae", images=images, steps=5)),
        ("Interpolate", pb.InterpolateRequest(name="cvae", latents=tensor(z), alphas=[0.0, 0.25, 1.0])),
    ]

    def infer(model, feeds, outputs=()):
        return tpb.ModelInferRequest(
            model_name=model, id="fuzz",
            inputs=[tpb.ModelInferRequest.InferInputTensor(name=k, datatype="INT64" if v.dtype == np.int64 else "FP32",
                                                           shape=v.shape) for k, v in feeds.items()],
            outputs=[tpb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs],
            raw_input_contents=[v.tobytes() for v in feeds.values()])
    v2 = [
        ("ServerLive", tpb.ServerLiveRequest()),
        ("ServerReady", tpb.ServerReadyRequest()),
        ("ModelReady", tpb.ModelReadyRequest(name="lenet", version="1")),
        ("ServerMetadata", tpb.ServerMetadataRequest()),
        ("ModelMetadata", tpb.ModelMetadataRequest(name="cvae.decoder")),
        ("ModelConfig", tpb.ModelConfigRequest(name="lenet.gradcam")),
        ("ModelStatistics", tpb.ModelStatisticsRequest(name="lenet")),
        ("RepositoryIndex", tpb.RepositoryIndexRequest(ready=True)),
        ("ModelInfer", infer("lenet", {"input": x[:1]}, ["logits"])),
        ("ModelInfer", infer("lenet.gradcam", {"input": x, "target": np.array([1, 2], np.int64)})),
        ("ModelInfer", infer("cvae.decoder", {"latent": z})),
    ]
    out = [(DOMAIN + m, r.SerializeToString()) for m, r in domain] + [(V2 + m, r.SerializeToString()) for m, r in v2]
    assert {p.rsplit("/", 1)[1] for p, _ in out} == set(DOMAIN_METHODS) | set(V2_METHODS) - STATEFUL
    return out


def mutate(data: bytes, rnd: random.Random) -> bytes:
    b = bytearray(data)
    kind = rnd.choice(["flip", "flip", "truncate", "insert", "random", "splice"])
    if kind == "flip" and b:
        for _ in range(rnd.choice([1, 1, 2, 4, 8])):
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
    elif kind == "truncate" and b:
        del b[rnd.randrange(len(b)):]
    elif kind == "insert":
        at = rnd.randrange(len(b) + 1)
        b[at:at] = rnd.randbytes(rnd.choice([1, 2, 5, 16, 64]))
    elif kind == "splice" and b:  # a chunk of the message repeated elsewhere: plausible tags, wrong places
        i = rnd.randrange(len(b))
        chunk = b[i:i + rnd.randrange(1, 32)]
        at = rnd.randrange(len(b) + 1)
        b[at:at] = chunk
    else:
        b = bytearray(rnd.randbytes(rnd.choice([0, 1, 3, 10, 100, 1000])))
    return bytes(b)


def send(channel, requests: list[tuple[str, bytes]], window: int = 16) -> collections.Counter:
    """Raw bytes in, raw bytes out, ``window`` calls in flight; the status codes, each INVALID_ARGUMENT's
    reason checked to be one line."""
    calls = {}
    counts = collections.Counter()
    for i in range(0, len(requests), window):
        futures = []
        for path, data in requests[i:i + window]:
            call = calls.get(path) or calls.setdefault(path, channel.unary_unary(path))
            futures.append((path, data, call.future(data, timeout=60)))
        for path, data, f in futures:
            try:
                f.result()
                counts["OK"] += 1
            except grpc.RpcError as e:
                counts[e.code().name] += 1
                if e.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                    counts[f"{e.code().name} {path} {data[:64].hex()}: {e.details()}"] += 1
                elif e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    assert e.details() and "\n" not in e.details(), (path, e.details())
    return counts


@pytest.fixture(scope="module")
def fuzz_server(repository):
    # One malloc arena: with one per thread (gRPC's, onnxruntime's), the RSS steps by arenas' worth at random.
    proc, address = start_server(repository, env={**os.environ, "MALLOC_ARENA_MAX": "1"})
    output = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)  # never let the pipe fill
    reader.start()
    yield proc, address, output
    assert stop_server(proc) == 0
    reader.join(timeout=10)


def test_undecodable_bytes_are_invalid_argument_on_every_rpc(fuzz_server):
    _, address, _ = fuzz_server
    with grpc.insecure_channel(address) as ch:
        for path in [DOMAIN + m for m in DOMAIN_METHODS] + [V2 + m for m in V2_METHODS]:
            for data in (b"\xff", b"\x0a\x05ab", bytes(range(256))):
                with pytest.raises(grpc.RpcError) as e:
                    ch.unary_unary(path)(data, timeout=30)
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, e.value.code(), e.value.details())
                assert "is not a valid" in e.value.details() and "\n" not in e.value.details(), e.value.details()


def test_mutated_requests_never_internal_and_server_does_not_grow(fuzz_server, repository):
    import json
    proc, address, output = fuzz_server
    latent_dim = json.loads((repository / "cvae/1/manifest.json").read_text())["latent_dim"]
    valid = seeds(latent_dim)
    rnd = random.Random(20240917)
    t0 = time.monotonic()
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        assert set(send(ch, valid)) == {"OK"}  # the seeds are valid
        # Warm-up: every graph at its largest batch (onnxruntime's arenas grow to their peak), then mutations.
        x = np.zeros((256, 1, 28, 28), np.float32)
        big = pb.Images(tensor=tensor(x))
        warm = [(DOMAIN + "GradCam", pb.GradCamRequest(name="lenet", images=big).SerializeToString()),
                (DOMAIN + "Classify", pb.ClassifyRequest(name="mlp", images=big).SerializeToString()),
                (DOMAIN + "Reconstruct", pb.ReconstructRequest(name="cvae", images=big).SerializeToString())]
        send(ch, warm, window=1)
        warm_counts = send(ch, [(p, mutate(d, rnd)) for p, d in (rnd.choice(valid) for _ in range(200))])
        counts, rss = collections.Counter(), []
        for _ in range(ROUNDS):
            counts += send(ch, [(p, mutate(d, rnd)) for p, d in (rnd.choice(valid) for _ in range(PER_ROUND))])
            rss.append(rss_kib(proc.pid))
    took = time.monotonic() - t0
    codes = {k: v for k, v in counts.items() if " " not in k}
    grew = [b - a for a, b in zip(rss[SETTLED - 1:-1], rss[SETTLED:], strict=True)]
    per_call = statistics.median(grew) * 1024 / PER_ROUND
    print(f"\nfuzz: {sum(codes.values())} mutated requests over {len(DOMAIN_METHODS) + len(V2_METHODS)} RPCs in "
          f"{took:.1f}s: {dict(sorted(codes.items()))} (warm-up {sum(warm_counts.values())}); server RSS after "
          f"each round {[round(r / 1024, 2) for r in rss]} MiB: {per_call:+.0f} bytes per request (median round)")
    assert not [k for k in counts if " " in k], counts  # INTERNAL or UNKNOWN, with the request that got it
    assert set(codes) <= ALLOWED, codes
    assert sum(codes.values()) == ROUNDS * PER_ROUND and codes["INVALID_ARGUMENT"] > 1000 and codes["OK"] > 0, codes
    assert per_call <= LEAK_BYTES, f"the server grew {per_call:.0f} bytes per request over {rss} KiB"
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(address) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert send(ch, valid) == collections.Counter(OK=len(valid))
    assert proc.poll() is None and "Traceback" not in "".join(output), "".join(output)[-3000:]
