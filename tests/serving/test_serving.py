"""The gRPC server end to end: a real `serve` subprocess on a loopback port, real exported models."""
import io
import json
import subprocess
import sys
import time
import urllib.request

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from glassbox.data import load_dataset, preprocess
from serving.client import GlassboxClient, GlassboxError
from tests.helpers.server import SLOW_LOAD, free_port, start_server, stop_server


@pytest.fixture(scope="module")
def client(server):
    c = GlassboxClient(server, timeout=30)
    yield c
    c.close()


@pytest.fixture(scope="module")
def images(fmnist_dir):
    return load_dataset("fashion-mnist", "test", data_dir=fmnist_dir).images[:24]


def manifest(repository, name):
    return json.loads((repository / name / "1" / "manifest.json").read_text())


def ort_run(repository, name, graph, feeds, outputs=None):
    sess = ort.InferenceSession(str(repository / name / "1" / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
    names = outputs or [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_list_and_get_models(client, repository):
    models = {m.name: m for m in client.list_models()}
    assert models["lenet"].ready and models["cvae"].ready and models["mlp"].ready
    assert models["lenet"].provider == "CPUExecutionProvider" and models["lenet"].graphs == ["classifier", "gradcam"]
    # The corrupted copy is refused, and ListModels says why.
    assert not models["broken"].ready and "sha256" in models["broken"].error
    m = client.get_model("lenet")
    assert m["labels"][0] == "T-shirt/top" and m["provider"] == "CPUExecutionProvider"
    assert [layer["name"] for layer in m["layers"]] == ["conv1", "pool1", "conv2", "pool2", "fc1", "fc2"]
    with pytest.raises(GlassboxError) as e:
        client.classify("broken", np.zeros((1, 1, 28, 28), np.float32))
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "sha256" in e.value.message


def test_classify_embed_gradcam_match_onnxruntime(client, repository, images):
    spec = manifest(repository, "lenet")["preprocessing"]
    x = preprocess(images, spec)
    ref = ort_run(repository, "lenet", "classifier", {"input": x})
    res = client.classify("lenet", x, top_k=3, return_logits=True)
    np.testing.assert_allclose(res.logits, ref["logits"], rtol=1e-5, atol=1e-6)
    assert np.array_equal(res.indices[:, 0], ref["probabilities"].argmax(1))
    assert res.labels[0][0] == manifest(repository, "lenet")["labels"][res.indices[0, 0]]
    np.testing.assert_allclose(res.probs[:, 0], ref["probabilities"].max(1), rtol=1e-5)
    emb = client.embed("lenet", x, ["fc1", "conv2"])
    np.testing.assert_allclose(emb["fc1"], ref["fc1"], rtol=1e-5, atol=1e-6)
    assert emb["conv2"].shape == (24, 16, 10, 10)
    # Encoded PNG bytes are preprocessed by the server exactly like training did.
    res_png = client.classify("lenet", [png(im) for im in images[:4]], return_logits=True)
    np.testing.assert_allclose(res_png.logits, ref["logits"][:4], rtol=1e-5, atol=1e-5)
    targets = np.arange(24) % 10
    cam = client.gradcam("lenet", x, targets)
    ref_cam = ort_run(repository, "lenet", "gradcam", {"input": x, "target": targets.astype(np.int64)})
    np.testing.assert_allclose(cam.cams, ref_cam["cam"], rtol=1e-5, atol=1e-6)
    assert cam.cams.shape == (24, 28, 28) and list(cam.targets) == list(targets)
    predicted = client.gradcam("lenet", x[:5])
    assert list(predicted.targets) == list(ref["logits"][:5].argmax(1))


def test_vae_rpcs(client, repository, images):
    spec = manifest(repository, "cvae")["preprocessing"]
    x = preprocess(images[:6], spec)
    enc = client.encode("cvae", x, sample=True, seed=1)
    ref = ort_run(repository, "cvae", "encoder", {"input": x})
    np.testing.assert_allclose(enc.mean, ref["mean"], rtol=1e-5, atol=1e-6)
    assert enc.z.shape == enc.mean.shape and not np.allclose(enc.z, enc.mean)
    dec = client.decode("cvae", enc.mean)
    np.testing.assert_allclose(dec, ort_run(repository, "cvae", "decoder", {"latent": ref["mean"]})["image"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(client.reconstruct("cvae", x), dec, rtol=1e-5, atol=1e-6)
    strip = client.interpolate("cvae", x[0], x[1], steps=7)
    assert strip.shape == (7, 1, 28, 28) and 0 <= strip.min() and strip.max() <= 1
    np.testing.assert_allclose(strip[0], dec[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(strip[-1], dec[1], rtol=1e-4, atol=1e-5)
    by_alpha = client.interpolate("cvae", enc.mean[0], enc.mean[1], alphas=[0.0, 0.5, 1.0], latent=True)
    assert by_alpha.shape == (3, 1, 28, 28)


def one_nan(x):
    return np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x).astype(np.float32)


BAD = [
    ("classify", "nope", lambda x: x, {}, grpc.StatusCode.NOT_FOUND, "unknown model"),
    ("classify", "lenet", lambda x: [b"\x89PNG\r\n\x1a\n" + b"\0" * 40], {}, grpc.StatusCode.INVALID_ARGUMENT,
     "decode"),
    ("classify", "lenet", lambda x: x, {"top_k": -1}, grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
    ("embed", "lenet", lambda x: x, {"layers": []}, grpc.StatusCode.INVALID_ARGUMENT, "no layer"),
    ("gradcam", "lenet", lambda x: x, {"targets": [-1]}, grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
    ("encode", "lenet", lambda x: x, {}, grpc.StatusCode.INVALID_ARGUMENT, "vae"),
    ("reconstruct", "cvae", lambda x: np.full_like(x, np.inf), {}, grpc.StatusCode.INVALID_ARGUMENT, "NaN or Inf"),
    ("interpolate", "cvae", lambda x: x, {"steps": 1}, grpc.StatusCode.INVALID_ARGUMENT, "steps"),
    ("classify", "lenet", lambda x: x[:, :, :27], {}, grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    ("classify", "lenet", one_nan, {}, grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    ("classify", "lenet", lambda x: x[:0], {}, grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    ("classify", "lenet", lambda x: [b"not an image"], {}, grpc.StatusCode.INVALID_ARGUMENT, "decode"),
    ("classify", "cvae", lambda x: x, {}, grpc.StatusCode.INVALID_ARGUMENT, "classifier"),
    ("embed", "lenet", lambda x: x, {"layers": ["fc9"]}, grpc.StatusCode.INVALID_ARGUMENT, "fc1"),
    ("gradcam", "lenet", lambda x: x, {"targets": [10]}, grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
    ("gradcam", "mlp", lambda x: x, {}, grpc.StatusCode.INVALID_ARGUMENT, "Grad-CAM"),
    ("interpolate", "cvae", lambda x: x, {"alphas": [0.5, 1.5]}, grpc.StatusCode.INVALID_ARGUMENT, "alphas"),
]


@pytest.mark.parametrize("method,model,make,kw,code,words", BAD, ids=[f"{b[0]}-{b[5]}" for b in BAD])
def test_bad_input_gets_its_status_and_server_survives(client, server, images, method, model, make, kw, code, words):
    spec = {"channels": 1, "size": [28, 28], "mean": [0.286], "std": [0.353]}
    x = make(preprocess(images[:1], spec))
    with pytest.raises(GlassboxError) as e:
        if method == "interpolate":
            getattr(client, method)(model, x[0], x[0], **kw)
        else:
            getattr(client, method)(model, x, **kw)
    assert e.value.code == code and words in e.value.message, e.value
    assert client.classify("lenet", preprocess(images[:1], spec)).indices.shape == (1, 5)


def test_raw_requests_the_client_would_not_send(server):
    from serving._generated.glassbox.v1 import glassbox_pb2 as pb
    from serving._generated.glassbox.v1 import glassbox_pb2_grpc as pb_grpc

    def refused(call, request, code, words):
        with pytest.raises(grpc.RpcError) as e:
            call(request, timeout=30)
        assert e.value.code() == code and words in e.value.details(), e.value.details()

    with grpc.insecure_channel(server, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        stub = pb_grpc.GlassboxStub(ch)
        big = pb.Tensor(shape=[257, 1, 28, 28], data=np.zeros((257, 1, 28, 28), np.float32).tobytes())
        refused(stub.Classify, pb.ClassifyRequest(name="lenet", images=pb.Images(tensor=big)),
                grpc.StatusCode.INVALID_ARGUMENT, "maximum of 256")
        refused(stub.Classify, pb.ClassifyRequest(name="lenet", images=pb.Images(tensor=pb.Tensor(shape=[], data=b""))),
                grpc.StatusCode.INVALID_ARGUMENT, "shape")
        refused(stub.Classify, pb.ClassifyRequest(name="lenet"), grpc.StatusCode.INVALID_ARGUMENT, "either a tensor")
        refused(stub.Classify, pb.ClassifyRequest(name=""), grpc.StatusCode.INVALID_ARGUMENT, "empty")
        refused(stub.GetModel, pb.GetModelRequest(name="lenet", version=7), grpc.StatusCode.NOT_FOUND, "no version 7")
        refused(stub.Decode, pb.DecodeRequest(name="cvae", latents=pb.Tensor(shape=[1, 3], data=b"\0" * 12)),
                grpc.StatusCode.INVALID_ARGUMENT, "latents")
        refused(stub.Interpolate, pb.InterpolateRequest(name="cvae", latents=pb.Tensor(shape=[3, 1], data=b"\0" * 12)),
                grpc.StatusCode.INVALID_ARGUMENT, "latents")
        refused(stub.Interpolate, pb.InterpolateRequest(name="cvae"), grpc.StatusCode.INVALID_ARGUMENT,
                "two images or two latents")
        one, three = (pb.Images(tensor=pb.Tensor(shape=[n, 1, 28, 28], data=np.zeros((n, 1, 28, 28), np.float32)
                                                 .tobytes())) for n in (1, 3))
        refused(stub.GradCam, pb.GradCamRequest(name="lenet", images=one, targets=[1, 2]),
                grpc.StatusCode.INVALID_ARGUMENT, "targets: 2 given for 1 images")
        refused(stub.Interpolate, pb.InterpolateRequest(name="cvae", images=three), grpc.StatusCode.INVALID_ARGUMENT,
                "exactly 2 images, got 3")
        refused(stub.Interpolate, pb.InterpolateRequest(name="cvae", images=one, alphas=[0.5] * 257),
                grpc.StatusCode.INVALID_ARGUMENT, "257 alphas is above the maximum of 256")
        bad = pb.Images(tensor=pb.Tensor(shape=[1, 1, 28, 28], data=b"\0" * 100))
        with pytest.raises(grpc.RpcError) as e:
            stub.Classify(pb.ClassifyRequest(name="lenet", images=bad))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "bytes" in e.value.details()
        wrong_dtype = pb.Images(tensor=pb.Tensor(shape=[1, 1, 28, 28], data=b"\0" * 784 * 8, dtype="int64"))
        with pytest.raises(grpc.RpcError) as e:
            stub.Classify(pb.ClassifyRequest(name="lenet", images=wrong_dtype))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "float32" in e.value.details()


def test_health_and_reflection(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    with grpc.insecure_channel(server) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="glassbox.v1.Glassbox"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in resp.list_services_response.service}
        assert {"glassbox.v1.Glassbox", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
        # grpcurl-style discovery: the descriptors themselves come back
        for symbol, proto in (("glassbox.v1.Glassbox", "glassbox/v1/glassbox.proto"),
                              ("inference.ModelInferRequest", "inference/grpc_service.proto")):
            ask = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
            r = next(stub.ServerReflectionInfo(iter([ask])))
            assert r.file_descriptor_response.file_descriptor_proto, symbol
            from google.protobuf import descriptor_pb2
            descriptor = r.file_descriptor_response.file_descriptor_proto[0]
            assert descriptor_pb2.FileDescriptorProto.FromString(descriptor).name == proto


def test_tritonclient_v2(server, repository, images):
    import tritonclient.grpc as tc
    c = tc.InferenceServerClient(server)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("lenet") and c.is_model_ready("cvae.decoder")
    assert not c.is_model_ready("broken")
    assert c.get_server_metadata().name == "glassbox"
    meta = c.get_model_metadata("lenet")
    assert meta.inputs[0].name == "input" and meta.inputs[0].datatype == "FP32"
    assert list(meta.inputs[0].shape) == [-1, 1, 28, 28]
    cfg = c.get_model_config("lenet.gradcam").config
    assert cfg.max_batch_size == 256 and [i.name for i in cfg.input] == ["input", "target"]
    x = preprocess(images[:8], manifest(repository, "lenet")["preprocessing"])
    inp = tc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = c.infer("lenet", [inp], outputs=[tc.InferRequestedOutput("logits"), tc.InferRequestedOutput("fc1")])
    ref = ort_run(repository, "lenet", "classifier", {"input": x})
    np.testing.assert_allclose(res.as_numpy("logits"), ref["logits"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.as_numpy("fc1"), ref["fc1"], rtol=1e-5, atol=1e-6)
    tgt = tc.InferInput("target", [8], "INT64")
    tgt.set_data_from_numpy(np.arange(8, dtype=np.int64))
    cam = c.infer("lenet.gradcam", [inp, tgt]).as_numpy("cam")
    want = ort_run(repository, "lenet", "gradcam", {"input": x, "target": np.arange(8)})["cam"]
    np.testing.assert_allclose(cam, want, rtol=1e-5, atol=1e-6)
    # The VAE's two graphs over v2 gRPC: encode real images, decode their means, as onnxruntime does.
    xv = preprocess(images[:8], manifest(repository, "cvae")["preprocessing"])
    enc_in = tc.InferInput("input", list(xv.shape), "FP32")
    enc_in.set_data_from_numpy(xv)
    enc = c.infer("cvae.encoder", [enc_in])
    ref_enc = ort_run(repository, "cvae", "encoder", {"input": xv})
    for name in ("mean", "logvar"):
        np.testing.assert_allclose(enc.as_numpy(name), ref_enc[name], rtol=1e-5, atol=1e-6)
    lat = tc.InferInput("latent", list(ref_enc["mean"].shape), "FP32")
    lat.set_data_from_numpy(enc.as_numpy("mean"))
    image = c.infer("cvae.decoder", [lat]).as_numpy("image")
    assert image.shape == (8, 1, 28, 28)
    np.testing.assert_allclose(image, ort_run(repository, "cvae", "decoder", {"latent": ref_enc["mean"]})["image"],
                               rtol=1e-5, atol=1e-6)
    from tritonclient.utils import InferenceServerException
    with pytest.raises(InferenceServerException, match="unknown model"):
        c.infer("nope", [inp])
    # NaN and Inf reach the model as they are, as with Triton (the domain API refuses them: BAD above).
    odd = x[:3].copy()
    odd[0, 0, 3, 3], odd[1] = np.nan, np.inf
    inp = tc.InferInput("input", list(odd.shape), "FP32")
    inp.set_data_from_numpy(odd)
    got = c.infer("lenet", [inp], outputs=[tc.InferRequestedOutput("logits")]).as_numpy("logits")
    want = ort_run(repository, "lenet", "classifier", {"input": odd}, ["logits"])["logits"]
    assert np.isnan(got[:2]).any() and np.isfinite(got[2]).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert c.is_server_live()


LOAD = """
import asyncio, numpy as np, grpc, sys
from serving._generated.inference import grpc_service_pb2 as pb, grpc_service_pb2_grpc as pb_grpc
async def main():
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    async with grpc.aio.insecure_channel(sys.argv[1]) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        def req(k):
            return pb.ModelInferRequest(model_name="lenet.gradcam", inputs=[
                pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[8, 1, 28, 28]),
                pb.ModelInferRequest.InferInputTensor(name="target", datatype="INT64", shape=[8])],
                raw_input_contents=[x.tobytes(), np.full(8, k % 10, np.int64).tobytes()])
        solo = [(await stub.ModelInfer(req(k))).raw_output_contents[0] for k in range(10)]
        res = await asyncio.gather(*[stub.ModelInfer(req(k)) for k in range(64)])
        # merged batches are split back: each answer equals its target's map computed alone
        same = [np.allclose(np.frombuffer(r.raw_output_contents[0], np.float32),
                            np.frombuffer(solo[k % 10], np.float32), rtol=1e-4, atol=1e-5) for k, r in enumerate(res)]
        print(len(res), all(same))
asyncio.run(main())
"""


def metric(text, name):
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_metrics_endpoint(repository):
    port = free_port()
    proc, address = start_server(repository, "--metrics-port", str(port), "--max-delay-us", "3000")
    try:
        with GlassboxClient(address) as c:
            c.list_models()
            with pytest.raises(GlassboxError):
                c.classify("nope", np.zeros((1, 1, 28, 28), np.float32))
        # 64 concurrent Grad-CAM requests of 8 images, targets differing (with up to 3 ms to gather a batch; a
        # subprocess: our inference protos and tritonclient's share names, so they never meet in one process)
        # must be merged into fewer session runs.
        out = subprocess.run([sys.executable, "-c", LOAD, address], capture_output=True, text=True, timeout=60)
        assert out.stdout.split() == ["64", "True"], out.stderr
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert metric(text, 'glassbox_batch_size_sum{graph="lenet.gradcam"}') == 74 * 8
        assert metric(text, 'glassbox_batch_size_count{graph="lenet.gradcam"}') < 74
        # Unknown names are counted under "unknown": clients cannot grow the label set without bound.
        assert 'glassbox_requests_total{method="Classify",model="unknown",status="NOT_FOUND"} 1.0' in text
        assert "glassbox_request_seconds_bucket" in text and "glassbox_queue_depth" in text
    finally:
        assert stop_server(proc) == 0


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_under_load_loses_no_accepted_call(repository, sig):
    """32 clients, one connection each, send batch-1 v2 ModelInfer calls to lenet in a closed loop until the
    server is gone; the signal comes while their calls are in flight. Every call sent before it is answered
    OK (gRPC core cancels the calls it has queued for a servicer when it stops: server.drain), later ones
    OK or UNAVAILABLE, none CANCELLED; health says NOT_SERVING before the server goes; exit 0 within the
    grace period (tests.helpers.server.signal_under_load, shared with the multi-worker test)."""
    from tests.helpers.server import signal_under_load
    proc, address = start_server(repository, "--grace", "10")
    try:
        signal_under_load(proc, address, sig)
    finally:
        if proc.poll() is None:
            stop_server(proc)


def test_missing_or_empty_repository_is_a_clear_error(tmp_path):
    """A missing repository is an error in every mode, an empty one where nothing can ever be loaded into it
    (--model-control-mode none; poll and explicit wait for exports, tests/serving/test_live_repository.py)."""
    for repo, words in ((tmp_path / "none", "does not exist"), (tmp_path, "holds no")):
        r = subprocess.run([sys.executable, "-m", "serving.cli", "--repository", str(repo), "--port", "0",
                            "--metrics-port", "0", "--model-control-mode", "none"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize(("workers", "option"), [("1", "--port"), ("1", "--metrics-port"), ("2", "--port"),
                                                ("2", "--http-port"), ("2", "--metrics-port")])
def test_port_in_use_is_one_clear_error(tmp_path, workers, option):
    """A second server on a taken port: one line naming the port and the option, no traceback, exit 2.
    With workers (which share their ports through SO_REUSEPORT) the parent checks the ports first."""
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"--port": str(free_port()), "--metrics-port": "0", option: str(port)}
        r = subprocess.run([sys.executable, "-m", "serving.cli", "--repository", str(tmp_path), "--workers", workers,
                            *(x for kv in ports.items() for x in kv)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {option} {port}: "), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "already in use" in r.stderr, r.stderr


def test_help_explains_every_option():
    r = subprocess.run([sys.executable, "-m", "serving.cli", "--help"], capture_output=True, text=True, timeout=60)
    for option in ("--repository", "--host", "--port", "--metrics-port", "--max-batch", "--max-delay-us", "--max-queue",
                   "--intra-op-threads", "--inter-op-threads", "--device", "--max-message-mb", "--grace", "--tls-cert",
                   "--tls-key", "--workers"):
        assert option in r.stdout, option


def test_server_down_is_one_clear_error():
    from serving.client import ServerUnavailable
    with pytest.raises(ServerUnavailable, match="no Glassbox server"):
        GlassboxClient(f"127.0.0.1:{free_port()}", connect_timeout=0.5)


@pytest.mark.parametrize("block", ["sys.modules", "import hook"])
def test_serving_imports_without_torch(block):
    from tests.helpers.paths import BLOCK_TORCH
    prelude = "import sys\nsys.modules['torch'] = None\n" if block == "sys.modules" else BLOCK_TORCH
    code = prelude + ("import serving, serving.server, serving.client, serving.repository, serving.v2, serving.domain, "
                      "serving.batcher, serving.tensors, serving.codegen\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_generated_stubs_match_protos():
    r = subprocess.run([sys.executable, "-m", "serving.codegen", "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_v2_bad_requests_get_their_status(server):
    # tritonclient's own stubs (its InferInput would refuse to build most of these).
    from tritonclient.grpc import service_pb2 as tpb
    from tritonclient.grpc import service_pb2_grpc as tpb_grpc

    def req(model="lenet", shape=(1, 1, 28, 28), datatype="FP32", data=None, version="", outputs=(), extra=()):
        data = np.zeros(shape, np.float32).tobytes() if data is None else data
        inputs = [tpb.ModelInferRequest.InferInputTensor(name="input", datatype=datatype, shape=list(shape)), *extra]
        raw = [data] + [np.zeros(list(e.shape), np.int64).tobytes() for e in extra]
        wanted = [tpb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs]
        return tpb.ModelInferRequest(model_name=model, model_version=version, inputs=inputs, raw_input_contents=raw,
                                     outputs=wanted)

    target = tpb.ModelInferRequest.InferInputTensor(name="target", datatype="INT64", shape=[1])
    nan = np.zeros((1, 1, 28, 28), np.float32)
    nan[0, 0, 3, 3] = np.nan
    cases = [
        (req(model="nope"), grpc.StatusCode.NOT_FOUND, "unknown model"),
        (req(version="7"), grpc.StatusCode.NOT_FOUND, "no version 7"),
        (req(version="x"), grpc.StatusCode.INVALID_ARGUMENT, "integer"),
        (req(shape=(1, 1, 27, 28)), grpc.StatusCode.INVALID_ARGUMENT, "shape"),
        (req(shape=()), grpc.StatusCode.INVALID_ARGUMENT, "shape"),
        (req(datatype="FP64"), grpc.StatusCode.INVALID_ARGUMENT, "datatype"),
        (req(data=b"\0" * 100), grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
        (req(shape=(0, 1, 28, 28)), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (req(shape=(257, 1, 28, 28)), grpc.StatusCode.INVALID_ARGUMENT, "maximum"),
        (req(outputs=["fc9"]), grpc.StatusCode.INVALID_ARGUMENT, "unknown output"),
        (req(model="lenet.gradcam"), grpc.StatusCode.INVALID_ARGUMENT, "expected"),
        (req(model="lenet.gradcam",
             extra=[tpb.ModelInferRequest.InferInputTensor(name="target", datatype="INT64", shape=[2])]),
         grpc.StatusCode.INVALID_ARGUMENT, "batch size"),
        (req(model="cvae.decoder"), grpc.StatusCode.INVALID_ARGUMENT, "input 'input' unknown"),
    ]
    with grpc.insecure_channel(server, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        stub = tpb_grpc.GRPCInferenceServiceStub(ch)
        for request, code, words in cases:
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(request, timeout=30)
            assert e.value.code() == code and words in e.value.details(), (request.model_name, e.value.details())
        bad_target = req(model="lenet.gradcam", extra=[target])
        bad_target.raw_input_contents[1] = np.array([10], np.int64).tobytes()
        with pytest.raises(grpc.RpcError, match="out of range"):
            stub.ModelInfer(bad_target, timeout=30)
        passed = stub.ModelInfer(req(data=nan.tobytes()), timeout=30)  # NaN reaches the model, as with Triton
        assert np.isnan(np.frombuffer(passed.raw_output_contents[0], np.float32)).any()
        ok = stub.ModelInfer(req(model="lenet.gradcam", extra=[target]), timeout=30)
        assert [o.name for o in ok.outputs] == ["cam", "logits"] and len(ok.raw_output_contents[0]) == 28 * 28 * 4
        assert not stub.ModelReady(tpb.ModelReadyRequest(name="lenet", version="7")).ready


def test_client_splits_large_batches(client, repository, images):
    x = preprocess(np.resize(images, (600, 28, 28)), manifest(repository, "lenet")["preprocessing"])
    res = client.classify("lenet", x, top_k=1, return_logits=True)
    ref = ort_run(repository, "lenet", "classifier", {"input": x})
    assert res.indices.shape == (600, 1) and res.logits.shape == (600, 10)
    np.testing.assert_allclose(res.logits, ref["logits"], rtol=1e-5, atol=1e-5)
    cams = client.gradcam("lenet", x[:300], targets=np.arange(300) % 10)
    assert cams.cams.shape == (300, 28, 28) and list(cams.targets[250:253]) == [0, 1, 2]


# `python -c SLOW_RUN <serve options>`: a server whose every session run of lenet.gradcam takes 0.4 s longer, so
# that a queue forms behind a few calls whatever the machine's speed.
SLOW_RUN = """
import sys, time
import serving.loader as r
real_run, real_small = r.Graph.run, r.Graph.run_small
def slow(real):
    def run(self, outputs, feeds):
        if self.triton_name == "lenet.gradcam":
            time.sleep(0.4)
        return real(self, outputs, feeds)
    return run
r.Graph.run, r.Graph.run_small = slow(real_run), slow(real_small)
import serving.server as s
sys.argv[0] = "serve"
import serving.cli
serving.cli.main()
"""


def test_deadline_behind_a_busy_queue(repository, images):
    """A call whose deadline passes while it waits in the batcher's queue is dropped before compute: the client
    gets DEADLINE_EXCEEDED, and on the server side it is counted in glassbox_dropped_jobs_total and never reaches
    the session (the batch-size histogram saw only the calls ahead of it); the calls ahead still succeed.

    Catches a batcher that ignores deadlines (and cancellations): the expired job is computed anyway, which the
    client's own timeout would hide. Each lenet.gradcam run is slowed to 0.4 s (SLOW_RUN) so the late call
    (deadline 0.5 s) is queued behind 1.2 s of work on any machine."""
    from serving._generated.glassbox.v1 import glassbox_pb2 as pb
    from serving._generated.glassbox.v1 import glassbox_pb2_grpc as pb_grpc
    metrics_port = free_port()
    # Thread instances: the slowed session runs are this process's own (process instances have sessions of theirs).
    proc, address = start_server(repository, "--metrics-port", str(metrics_port), "--instance-kind", "thread",
                                 serve=[sys.executable, "-c", SLOW_RUN])
    try:
        # 256 images, the manifest's max_batch: every call is a batch of its own (none merges with the late one)
        x = preprocess(np.resize(images, (256, 28, 28)), manifest(repository, "lenet")["preprocessing"])
        heavy = pb.GradCamRequest(name="lenet", images=pb.Images(tensor=pb.Tensor(shape=x.shape, data=x.tobytes())))
        with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
            stub = pb_grpc.GlassboxStub(ch)
            busy = [stub.GradCam.future(heavy, timeout=60) for _ in range(3)]
            time.sleep(0.1)  # the three are queued (the first computing) before the late call arrives
            late = stub.GradCam.future(heavy, timeout=0.5)
            with pytest.raises(grpc.RpcError) as e:
                late.result(timeout=30)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert all(f.result(timeout=60).cams.shape == [256, 28, 28] for f in busy)
            # One image more, queued behind whatever is left: once answered, the batcher has nothing else to run.
            one = pb.GradCamRequest(name="lenet", images=pb.Images(tensor=pb.Tensor(shape=[1, 1, 28, 28],
                                                                                    data=x[:1].tobytes())))
            assert stub.GradCam(one, timeout=60).cams.shape == [1, 28, 28]
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        dropped = metric(text, 'glassbox_dropped_jobs_total{graph="lenet.gradcam"')
        computed = metric(text, 'glassbox_batch_size_sum{graph="lenet.gradcam"}')
        assert dropped == 1 and computed == 3 * 256 + 1, (dropped, computed)
    finally:
        assert stop_server(proc) == 0


def test_tls_and_full_queue(repository, images, tmp_path):
    """A second server: TLS on, one queued request per graph (concurrent calls are refused at once),
    a 1 MiB message limit."""

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from serving._generated.glassbox.v1 import glassbox_pb2 as pb
    from serving._generated.glassbox.v1 import glassbox_pb2_grpc as pb_grpc
    from tests.helpers.tls import self_signed
    cert, key = self_signed(tmp_path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "--repository", str(repository),
                             "--port", str(port), "--metrics-port", "0", "--log-level", "WARNING",
                             "--tls-cert", str(cert), "--tls-key", str(key),
                             "--max-queue", "1", "--max-batch", "64", "--max-message-mb", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    address = f"127.0.0.1:{port}"
    creds = grpc.ssl_channel_credentials(cert.read_bytes())
    try:
        with grpc.secure_channel(address, creds) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, "TLS server did not start"
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    time.sleep(0.2)
            stub = pb_grpc.GlassboxStub(ch)
            x = preprocess(np.resize(images, (64, 28, 28)), manifest(repository, "lenet")["preprocessing"])
            tensor = pb.Tensor(shape=x.shape, data=x.tobytes())
            request = pb.GradCamRequest(name="lenet", images=pb.Images(tensor=tensor))
            futures = [stub.GradCam.future(request, timeout=60) for _ in range(12)]
            codes = []
            for f in futures:
                try:
                    f.result()
                    codes.append("OK")
                except grpc.RpcError as e:
                    codes.append(e.code().name)
                    if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        assert "queue is full" in e.details()
            assert "OK" in codes and "RESOURCE_EXHAUSTED" in codes and set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
            big = np.zeros((200, 1, 28, 28), np.float32)  # 627 KB of floats: fine; 2 MB: over this server's 1 MiB
            with pytest.raises(grpc.RpcError) as e:
                huge = pb.Tensor(shape=[200, 1, 28, 28], data=big.tobytes() * 4)
                stub.Classify(pb.ClassifyRequest(name="lenet", images=pb.Images(tensor=huge)), timeout=30)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert len(stub.Classify(pb.ClassifyRequest(name="lenet", images=pb.Images(tensor=pb.Tensor(
                shape=[200, 1, 28, 28], data=big.tobytes())))).predictions) == 200
        # the typed client over TLS; the server still answers
        with GlassboxClient(address, tls_ca=cert.read_bytes()) as c:
            assert c.classify("lenet", x[:2]).indices.shape == (2, 5)
        with grpc.insecure_channel(address) as plain:  # plaintext is not accepted on a TLS port
            with pytest.raises(grpc.RpcError):
                health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=2)
    finally:
        assert stop_server(proc) == 0


def test_not_serving_while_loading(repository):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_LOAD, "--repository", str(repository), "--port", str(port),
                             "--metrics-port", "0", "--log-level", "WARNING"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                except grpc.RpcError:
                    time.sleep(0.1)
                    continue
                if status == health_pb2.HealthCheckResponse.NOT_SERVING and "loading" not in seen:
                    with pytest.raises(GlassboxError) as e:  # the domain API says why, and the client does not hang
                        GlassboxClient(f"127.0.0.1:{port}", connect_timeout=5).list_models()
                    assert e.value.code == grpc.StatusCode.UNAVAILABLE and "loading" in e.value.message
                    seen.append("loading")
                if status == health_pb2.HealthCheckResponse.SERVING:
                    seen.append("serving")
                    break
                time.sleep(0.1)
        assert seen == ["loading", "serving"], seen
    finally:
        assert stop_server(proc) == 0
    # A signal while loading is graceful too: exit 0, no traceback.
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_LOAD, "--repository", str(repository), "--port", str(port),
                             "--metrics-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:  # listening (and loading) once health answers
        health = health_pb2_grpc.HealthStub(ch)
        for _ in range(300):
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
                break
            except grpc.RpcError:
                time.sleep(0.1)
    out = proc.communicate(timeout=30)[0] if stop_server(proc) is not None else ""
    assert proc.returncode == 0 and "stopped while loading" in out and "Traceback" not in out, out


def test_client_chunks_by_reply_size(server, repository, images):
    """conv1 of 256 LeNet images is ~4.8 MB; with a 2 MiB message limit the client must split the
    Embed calls by the size of the reply, not just the request."""
    x = preprocess(np.resize(images, (256, 28, 28)), manifest(repository, "lenet")["preprocessing"])
    with GlassboxClient(server, max_message_mb=2) as small:
        emb = small.embed("lenet", x, ["conv1"])
    assert emb["conv1"].shape == (256, 6, 28, 28)
    want = ort_run(repository, "lenet", "classifier", {"input": x})["conv1"]
    np.testing.assert_allclose(emb["conv1"], want, rtol=1e-5, atol=1e-5)
