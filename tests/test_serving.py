"""The gRPC server end to end: a real `serve` subprocess on a loopback port, real exported models."""
import asyncio
import io
import json
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from serving.client import GlassboxClient, GlassboxError
from training.data import load_dataset, preprocess

from conftest import free_port, start_server, stop_server


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
    return dict(zip(names, sess.run(names, feeds)))


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
    np.testing.assert_allclose(dec, ort_run(repository, "cvae", "decoder", {"latent": ref["mean"]})["image"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(client.reconstruct("cvae", x), dec, rtol=1e-5, atol=1e-6)
    strip = client.interpolate("cvae", x[0], x[1], steps=7)
    assert strip.shape == (7, 1, 28, 28) and 0 <= strip.min() and strip.max() <= 1
    np.testing.assert_allclose(strip[0], dec[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(strip[-1], dec[1], rtol=1e-4, atol=1e-5)
    by_alpha = client.interpolate("cvae", enc.mean[0], enc.mean[1], alphas=[0.0, 0.5, 1.0], latent=True)
    assert by_alpha.shape == (3, 1, 28, 28)


BAD = [
    ("classify", "nope", lambda x: x, {}, grpc.StatusCode.NOT_FOUND, "unknown model"),
    ("classify", "lenet", lambda x: x[:, :, :27], {}, grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    ("classify", "lenet", lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x).astype(np.float32), {}, grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    ("classify", "lenet", lambda x: x[:0], {}, grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    ("classify", "lenet", lambda x: np.repeat(x, 300, axis=0)[:257], {"chunk": 1000}, grpc.StatusCode.INVALID_ARGUMENT, "maximum"),
    ("classify", "lenet", lambda x: [b"not an image"], {}, grpc.StatusCode.INVALID_ARGUMENT, "decode"),
    ("classify", "cvae", lambda x: x, {}, grpc.StatusCode.INVALID_ARGUMENT, "classifier"),
    ("embed", "lenet", lambda x: x, {"layers": ["fc9"]}, grpc.StatusCode.INVALID_ARGUMENT, "fc1"),
    ("gradcam", "lenet", lambda x: x, {"targets": [10]}, grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
    ("gradcam", "mlp", lambda x: x, {}, grpc.StatusCode.INVALID_ARGUMENT, "Grad-CAM"),
    ("interpolate", "cvae", lambda x: x, {"alphas": [0.5, 1.5]}, grpc.StatusCode.INVALID_ARGUMENT, "alphas"),
]


@pytest.mark.parametrize("method,model,make,kw,code,words", BAD, ids=[f"{b[0]}-{b[5]}" for b in BAD])
def test_bad_input_gets_its_status_and_server_survives(client, server, images, method, model, make, kw, code, words):
    x = make(preprocess(images[:1], {"channels": 1, "size": [28, 28], "mean": [0.286], "std": [0.353]}))
    if "chunk" in kw:
        client = GlassboxClient(server, chunk=kw.pop("chunk"))
    with pytest.raises(GlassboxError) as e:
        if method == "interpolate":
            getattr(client, method)(model, x[0], x[0], **kw)
        else:
            getattr(client, method)(model, x, **kw)
    assert e.value.code == code and words in e.value.message, e.value
    assert client.classify("lenet", preprocess(images[:1], {"channels": 1, "size": [28, 28], "mean": [0.286], "std": [0.353]})).indices.shape == (1, 5)


def test_raw_tensor_byte_count_is_checked(server):
    from serving._generated.glassbox.v1 import glassbox_pb2 as pb
    from serving._generated.glassbox.v1 import glassbox_pb2_grpc as pb_grpc
    with grpc.insecure_channel(server) as ch:
        stub = pb_grpc.GlassboxStub(ch)
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


def test_tritonclient_v2(server, repository, images):
    import tritonclient.grpc as tc
    c = tc.InferenceServerClient(server)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("lenet") and c.is_model_ready("cvae.decoder")
    assert not c.is_model_ready("broken")
    assert c.get_server_metadata().name == "glassbox"
    meta = c.get_model_metadata("lenet")
    assert meta.inputs[0].name == "input" and meta.inputs[0].datatype == "FP32" and list(meta.inputs[0].shape) == [-1, 1, 28, 28]
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
    np.testing.assert_allclose(cam, ort_run(repository, "lenet", "gradcam", {"input": x, "target": np.arange(8)})["cam"], rtol=1e-5, atol=1e-6)
    from tritonclient.utils import InferenceServerException
    with pytest.raises(InferenceServerException, match="unknown model"):
        c.infer("nope", [inp])
    bad = tc.InferInput("input", [1, 1, 28, 28], "FP32")
    bad.set_data_from_numpy(np.full((1, 1, 28, 28), np.inf, np.float32))
    with pytest.raises(InferenceServerException, match="NaN or Inf"):
        c.infer("lenet", [bad])
    assert c.is_server_live()


def test_batcher_drops_expired_and_cancelled_jobs_and_bounds_its_queue():
    from serving.batcher import Batcher
    from serving.errors import DeadlineExceeded, ResourceExhausted

    class SlowGraph:
        triton_name = "fake"
        calls = []

        def run(self, outputs, feeds):
            self.calls.append(len(feeds["input"]))
            time.sleep(0.2)
            return [feeds["input"] * 2]

    async def scenario():
        g = SlowGraph()
        b = Batcher(g, max_batch=8, max_queue=2)
        b.start()
        one = np.ones((1, 3), np.float32)
        first = asyncio.ensure_future(b.submit({"input": one}, ["y"], 1, None))
        await asyncio.sleep(0.05)  # the first batch is now computing
        expired = asyncio.ensure_future(b.submit({"input": one}, ["y"], 1, time.monotonic() + 0.01))
        cancelled = asyncio.ensure_future(b.submit({"input": one * 3}, ["y"], 1, None))
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted, match="full"):
            await b.submit({"input": one}, ["y"], 1, None)  # queue holds 2: refused at once
        cancelled.cancel()
        assert (await first)["y"][0, 0] == 2
        with pytest.raises(DeadlineExceeded):
            await expired
        await asyncio.sleep(0.3)
        await b.stop()
        return g.calls

    calls = asyncio.run(scenario())
    assert calls == [1], "the expired and the cancelled job must not reach the model"


LOAD = """
import asyncio, numpy as np, grpc, sys
from serving._generated.inference import grpc_service_pb2 as pb, grpc_service_pb2_grpc as pb_grpc
async def main():
    x = np.zeros((1, 1, 28, 28), np.float32)
    async with grpc.aio.insecure_channel(sys.argv[1]) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        req = pb.ModelInferRequest(model_name="lenet", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="input", datatype="FP32", shape=[1, 1, 28, 28])], raw_input_contents=[x.tobytes()])
        res = await asyncio.gather(*[stub.ModelInfer(req) for _ in range(64)])
        print(len(res), len({r.raw_output_contents[0] for r in res}))
asyncio.run(main())
"""


def metric(text, name):
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_metrics_endpoint(repository):
    port = free_port()
    proc, address = start_server(repository, "--metrics-port", str(port))
    try:
        with GlassboxClient(address) as c:
            c.list_models()
            with pytest.raises(GlassboxError):
                c.classify("nope", np.zeros((1, 1, 28, 28), np.float32))
        # 64 concurrent batch-1 requests (a subprocess: our inference protos and tritonclient's share
        # names, so they never meet in one process) must be merged into fewer session runs.
        out = subprocess.run([sys.executable, "-c", LOAD, address], capture_output=True, text=True, timeout=60)
        assert out.stdout.split() == ["64", "1"], out.stderr
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert metric(text, 'glassbox_batch_size_sum{graph="lenet"}') == 64
        assert metric(text, 'glassbox_batch_size_count{graph="lenet"}') < 64
        assert 'glassbox_requests_total{method="Classify",model="nope",status="NOT_FOUND"} 1.0' in text
        assert "glassbox_request_seconds_bucket" in text and "glassbox_queue_depth" in text
    finally:
        assert stop_server(proc) == 0


def test_sigterm_under_load_loses_no_accepted_call(repository, images):
    proc, address = start_server(repository, "--grace", "20")
    x = preprocess(images[:4], {"channels": 1, "size": [28, 28], "mean": [0.286], "std": [0.353]})
    outcomes, lock = [], threading.Lock()

    def worker():
        try:
            c = GlassboxClient(address, timeout=15, connect_timeout=2)
        except GlassboxError:
            with lock:
                outcomes.append("UNAVAILABLE")
            return
        for _ in range(30):
            try:
                c.gradcam("lenet", x)
                r = "OK"
            except GlassboxError as e:
                r = e.code.name
            with lock:
                outcomes.append(r)
            if r != "OK":
                break
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    code = stop_server(proc)
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a call hung"
    assert code == 0
    assert "OK" in outcomes and set(outcomes) <= {"OK", "UNAVAILABLE"}, outcomes


def test_missing_repository_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "serving.server", "--repository", str(tmp_path / "none"), "--port", "0",
                        "--metrics-port", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_server_down_is_one_clear_error():
    from serving.client import ServerUnavailable
    with pytest.raises(ServerUnavailable, match="no Glassbox server"):
        GlassboxClient(f"127.0.0.1:{free_port()}", connect_timeout=0.5)


def test_serving_imports_without_torch():
    from conftest import BLOCK_TORCH
    code = BLOCK_TORCH + "import serving.server, serving.client, serving.repository, serving.v2, serving.domain\nprint('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_generated_stubs_match_protos():
    r = subprocess.run([sys.executable, "-m", "serving.codegen", "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
