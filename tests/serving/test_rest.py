"""``serve --http-port``: the KServe v2 REST endpoint of a real server subprocess, checked with
tritonclient.http (JSON and binary tensors) against the gRPC v2 replies and onnxruntime, and with
a raw HTTP client for the errors a client library would never send.

No serving module is imported here: tritonclient's protos share names with serving's generated ones.
"""
import http.client
import json
import socket
import ssl
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest

from glassbox.data import load_dataset, preprocess
from tests.helpers.server import SLOW_LOAD, free_port, start_server, stop_server
from tests.helpers.tls import self_signed

LIMIT_MB = 2  # --max-message-mb: the gRPC message limit and the HTTP body limit


@pytest.fixture(scope="module")
def http_server(repository):
    """(gRPC address, HTTP port) of one server with both endpoints."""
    port = free_port()
    proc, address = start_server(repository, "--http-port", str(port), "--max-message-mb", str(LIMIT_MB))
    yield address, port
    assert stop_server(proc) == 0


@pytest.fixture(scope="module")
def x(fmnist_dir, repository):
    images = load_dataset("fashion-mnist", "test", data_dir=fmnist_dir).images[:8]
    manifest = json.loads((repository / "lenet" / "1" / "manifest.json").read_text())
    return preprocess(images, manifest["preprocessing"])


def ort_run(repository, name, graph, feeds):
    sess = ort.InferenceSession(str(repository / name / "1" / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def request(port, method, path, body=None, headers=None):
    """(status, headers, body) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def infer_json(port, model, inputs, outputs=None, path=None, headers=None):
    body = json.dumps({"inputs": inputs, **({"outputs": outputs} if outputs else {})})
    status, hdrs, data = request(port, "POST", path or f"/v2/models/{model}/infer", body, headers)
    return status, json.loads(data)


def lenet_input(shape=(1, 1, 28, 28), datatype="FP32", data=None):
    return {"name": "input", "shape": list(shape), "datatype": datatype,
            "data": np.zeros(shape).ravel().tolist() if data is None else data}


def test_tritonclient_http_json_and_binary_match_grpc(http_server, repository, x):
    import tritonclient.grpc as tg
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException
    address, port = http_server
    c = th.InferenceServerClient(f"127.0.0.1:{port}")
    g = tg.InferenceServerClient(address)
    try:
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready("lenet") and c.is_model_ready("cvae.decoder") and c.is_model_ready("lenet", "1")
        assert not c.is_model_ready("broken") and not c.is_model_ready("nope") and not c.is_model_ready("lenet", "7")
        assert c.get_server_metadata()["name"] == "glassbox"
        meta, gmeta = c.get_model_metadata("lenet"), g.get_model_metadata("lenet")
        assert (meta["name"], meta["platform"], meta["versions"]) == (gmeta.name, gmeta.platform, ["1"])
        for key in ("inputs", "outputs"):
            assert [(t["name"], t["datatype"], t["shape"]) for t in meta[key]] == \
                [(t.name, t.datatype, list(t.shape)) for t in getattr(gmeta, key)]
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
        assert c.get_model_metadata("lenet", "1")["name"] == "lenet"
        assert c.get_model_config("lenet.gradcam")["max_batch_size"] == 256

        ref = ort_run(repository, "lenet", "classifier", {"input": x})
        grpc_in = tg.InferInput("input", list(x.shape), "FP32")
        grpc_in.set_data_from_numpy(x)
        want = g.infer("lenet", [grpc_in], outputs=[tg.InferRequestedOutput(n) for n in ("logits", "fc1")])
        for binary_in in (False, True):
            inp = th.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary_in)
            for binary_out in (False, True):
                res = c.infer("lenet", [inp], request_id="r1", outputs=[
                    th.InferRequestedOutput("logits", binary_data=binary_out),
                    th.InferRequestedOutput("fc1", binary_data=not binary_out)])
                reply = res.get_response()
                assert reply["model_name"] == "lenet" and reply["model_version"] == "1" and reply["id"] == "r1"
                assert [o["name"] for o in reply["outputs"]] == ["logits", "fc1"]
                assert ("data" in reply["outputs"][0]) != binary_out and ("data" in reply["outputs"][1]) == binary_out
                for name in ("logits", "fc1"):  # the gRPC v2 reply, to the bit; and onnxruntime's
                    np.testing.assert_array_equal(res.as_numpy(name), want.as_numpy(name))
                    np.testing.assert_allclose(res.as_numpy(name), ref[name], rtol=1e-5, atol=1e-6)
        # All outputs when none are named; binary_data_output for them all.
        res = c.infer("lenet", [inp], outputs=None)
        assert [o["name"] for o in res.get_response()["outputs"]][:2] == ["logits", "probabilities"]
        np.testing.assert_array_equal(res.as_numpy("probabilities").argmax(1), ref["logits"].argmax(1))

        # Grad-CAM: a JSON image beside a binary INT64 target (the two kinds in one body).
        inp = th.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        tgt = th.InferInput("target", [8], "INT64")
        tgt.set_data_from_numpy(np.arange(8, dtype=np.int64), binary_data=True)
        cam = c.infer("lenet.gradcam", [inp, tgt]).as_numpy("cam")
        want_cam = ort_run(repository, "lenet", "gradcam", {"input": x, "target": np.arange(8)})["cam"]
        np.testing.assert_allclose(cam, want_cam, rtol=1e-5, atol=1e-6)
        # The VAE: encode, decode the means.
        inp = th.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        mean = c.infer("cvae.encoder", [inp]).as_numpy("mean")
        lat = th.InferInput("latent", list(mean.shape), "FP32")
        lat.set_data_from_numpy(mean)
        image = c.infer("cvae.decoder", [lat]).as_numpy("image")
        np.testing.assert_allclose(image, ort_run(repository, "cvae", "decoder", {"latent": mean})["image"],
                                   rtol=1e-5, atol=1e-6)
        assert image.shape == (8, 1, 28, 28)

        with pytest.raises(InferenceServerException, match="unknown model"):
            c.infer("nope", [inp])
        assert c.is_server_live()
    finally:
        c.close()
        g.close()


def test_errors_get_their_http_status(http_server):
    _, port = http_server
    status, body = infer_json(port, "lenet", [lenet_input()])
    assert status == 200 and body["outputs"][0]["shape"] == [1, 10]
    cases = [  # (model, inputs, outputs, status, words)
        ("nope", [lenet_input()], None, 404, "unknown model"),
        ("lenet", [lenet_input(shape=(1, 1, 27, 28))], None, 400, "shape"),
        ("lenet", [lenet_input(data=[0.0] * 100)], None, 400, "values"),
        ("lenet", [lenet_input(datatype="FP64")], None, 400, "datatype"),
        ("lenet", [lenet_input(data=[[0.0], [0.0, 1.0]])], None, 400, "rectangular"),
        ("lenet", [lenet_input(data=["a"] * 784)], None, 400, "numbers"),
        ("lenet", [lenet_input(shape=(0, 1, 28, 28), data=[])], None, 400, "empty"),
        ("lenet", [lenet_input(shape=(1, 1, 28, -28), data=[0.0] * 784)], None, 400, "non-negative"),
        ("lenet", [lenet_input()], [{"name": "fc9"}], 400, "unknown output"),
        ("lenet", [lenet_input()], [{"name": "logits", "parameters": {"classification": 3}}], 400, "classification"),
        ("lenet.gradcam", [lenet_input(), {"name": "target", "shape": [1], "datatype": "INT64", "data": [0.5]}],
         None, 400, "integers"),
        ("lenet.gradcam", [lenet_input(), {"name": "target", "shape": [1], "datatype": "INT64", "data": [10]}],
         None, 400, "out of range"),
        ("broken", [lenet_input()], None, 404, "unknown model"),  # its graphs never loaded: no v2 name
    ]
    for model, inputs, outputs, want, words in cases:
        status, body = infer_json(port, model, inputs, outputs)
        assert (status, words in body.get("error", "")) == (want, True), (model, inputs[0]["shape"], body)
    for path, want, words in (("/v2/models/lenet/versions/7/infer", 404, "no version 7"),
                              ("/v2/models/lenet/versions/x/infer", 400, "integer")):
        status, body = infer_json(port, "lenet", [lenet_input()], path=path)
        assert status == want and words in body["error"], body
    status, body = infer_json(port, "lenet", [lenet_input()], path="/v2/models/lenet/versions/1/infer")
    assert status == 200 and body["model_version"] == "1"

    post = "/v2/models/lenet/infer"
    for raw, words in ((b"{bad", "not valid JSON"), (b"[]", "inputs"), (b'{"inputs": []}', "inputs"),
                       (b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32"}]}', "neither")):
        status, _, data = request(port, "POST", post, raw)
        assert status == 400 and words in json.loads(data)["error"], data
    # The binary extension: the header must fit the body, the binary part must match the sizes declared.
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 784 * 4}}]}).encode()
    pixels = np.zeros(784, np.float32).tobytes()
    for body, length, want, words in ((head + pixels, len(head), 200, ""),
                                      (head + pixels, "x", 400, "not an integer"),
                                      (head + pixels, len(head) + len(pixels) + 1, 400, "outside"),
                                      (head + pixels[:-4], len(head), 400, "runs past"),
                                      (head + pixels + b"\0" * 8, len(head), 400, "beyond")):
        status, hdrs, data = request(port, "POST", post, body, {"Inference-Header-Content-Length": str(length)})
        assert status == want, data
        if want == 200:
            assert hdrs["Content-Type"] == "application/json" and json.loads(data)["outputs"][0]["shape"] == [1, 10]
        else:
            assert words in json.loads(data)["error"]
    # aiohttp's own errors are JSON too.
    status, hdrs, data = request(port, "GET", post)
    assert status == 405 and hdrs["Allow"] == "POST" and "error" in json.loads(data)
    status, _, data = request(port, "GET", "/v2/nope")
    assert status == 404 and "error" in json.loads(data)
    status, _, data = request(port, "GET", "/v2/models/broken/ready")
    assert status == 404 and "unknown model" in json.loads(data)["error"]


def test_body_over_the_limit_is_413(http_server):
    _, port = http_server
    limit = LIMIT_MB << 20
    # Declared too large: refused from the headers, before the body is read.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", "/v2/models/lenet/infer")
    conn.putheader("Content-Length", str(limit + 1))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "exceeded" in json.loads(r.read())["error"]
    conn.close()
    # Chunked (a generator body has no length), so only reading tells: refused once past the limit.
    status, _, data = request(port, "POST", "/v2/models/lenet/infer", (b" " * (limit // 4) for _ in range(5)))
    assert status == 413 and "exceeded" in json.loads(data)["error"]
    # Just under the limit is read and judged on its content.
    body = json.dumps({"inputs": [lenet_input()]}).encode()
    status, _, data = request(port, "POST", "/v2/models/lenet/infer", body + b" " * (limit - len(body)))
    assert status == 200, data
    status, _, _ = request(port, "GET", "/v2/health/live")
    assert status == 200


def test_ready_is_503_while_loading_and_the_port_must_be_free(repository):
    port, http_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_LOAD, "--repository", str(repository), "--port", str(port),
                             "--metrics-port", "0", "--http-port", str(http_port), "--log-level", "WARNING"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "ready" not in seen:
            try:
                status, _, data = request(http_port, "GET", "/v2/health/ready")
            except OSError:  # not listening yet
                time.sleep(0.1)
                continue
            if status == 503 and "loading" not in seen:
                assert "loading" in json.loads(data)["error"]
                assert request(http_port, "GET", "/v2/health/live")[0] == 200
                code, body = infer_json(http_port, "lenet", [lenet_input()])
                assert code == 503 and "loading" in body["error"]
                assert request(http_port, "GET", "/v2/models/lenet/ready")[0] == 503
                seen.append("loading")
            elif status == 200:
                seen.append("ready")
            time.sleep(0.1)
        assert seen == ["loading", "ready"], seen
        assert infer_json(http_port, "lenet", [lenet_input()])[0] == 200
        # A second server on the same HTTP port: one clear error, exit 2.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            grpc_port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "serving.cli", "--repository", str(repository), "--port",
                            str(grpc_port), "--metrics-port", "0", "--http-port", str(http_port)],
                           capture_output=True, text=True, timeout=60)
        want = f"--http-port {http_port}: cannot listen on 127.0.0.1:{http_port} (already in use"
        assert r.returncode == 2 and want in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    finally:
        assert stop_server(proc) == 0
    out = proc.stdout.read()
    assert "Traceback" not in out, out


def test_rest_over_tls(repository, x, tmp_path):
    """--tls-cert/--tls-key cover the REST port too: a client that trusts the certificate gets v2 infer
    replies (onnxruntime's logits); one that does not trust it, and plain HTTP on that port, get none."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "--repository", str(repository),
                             "--port", str(free_port()), "--http-port", str(port), "--metrics-port", "0",
                             "--log-level", "WARNING", "--tls-cert", str(cert), "--tls-key", str(key)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    trusted = ssl.create_default_context(cafile=str(cert))

    def https(method, path, body=None, context=trusted):
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the TLS server did not get ready"
            try:
                if https("GET", "/v2/health/ready")[0] == 200:
                    break
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.2)
        body = json.dumps({"inputs": [lenet_input(x[:2].shape, data=x[:2].ravel().tolist())],
                           "outputs": [{"name": "logits"}]})
        status, data = https("POST", "/v2/models/lenet/infer", body)
        assert status == 200, data
        (out,) = json.loads(data)["outputs"]
        want = ort_run(repository, "lenet", "classifier", {"input": x[:2]})["logits"]
        np.testing.assert_allclose(np.reshape(out["data"], out["shape"]), want, rtol=1e-4, atol=1e-4)
        with pytest.raises(ssl.SSLCertVerificationError):
            https("GET", "/v2/health/ready", context=ssl.create_default_context())  # the system's CAs only
        with pytest.raises((OSError, http.client.HTTPException)):
            request(port, "GET", "/v2/health/ready")  # plain HTTP on the TLS port
    finally:
        assert stop_server(proc) == 0
