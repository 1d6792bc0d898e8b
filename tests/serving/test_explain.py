"""The Explain RPC and the explanation graphs as v2 models, against the graphs run directly."""
import numpy as np
import onnxruntime as ort
import pytest

from glassbox.data import load_dataset, preprocess
from serving._generated.glassbox.v1 import glassbox_pb2 as pb
from serving.client import GlassboxClient, GlassboxError
from serving.explain import max_images
from tests.helpers.server import start_server, stop_server

METHODS = ["gradcam", "gradcampp", "saliency", "ig", "smoothgrad"]


@pytest.fixture(scope="module")
def explain_server(explain_repository):
    proc, address = start_server(explain_repository)
    yield address
    stop_server(proc)


@pytest.fixture(scope="module")
def client(explain_server):
    with GlassboxClient(explain_server) as c:
        yield c


@pytest.fixture(scope="module")
def x(client, fmnist_dir):
    man = client.get_model("lenet")
    return preprocess(load_dataset("fashion-mnist", split="test", data_dir=fmnist_dir).images[:6], man["preprocessing"])


def _direct(repo, graph, feeds):
    sess = ort.InferenceSession(str(repo / "lenet" / "1" / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("method", METHODS)
def test_explain_serves_each_graph(method, client, x, explain_repository):
    t = np.array([0, 1, 2, 3, 4, 5], np.int64)
    noise = np.random.default_rng(0).normal(size=(6, 16, 1, 28, 28)).astype(np.float32) * 0.4
    r = client.explain("lenet", x, method, t, noise=noise if method == "smoothgrad" else None)
    feeds = {"input": x, "target": t, **({"noise": noise} if method == "smoothgrad" else {})}
    want_map, want_logits = _direct(explain_repository, method, feeds)
    assert r.maps.shape == (6, 28, 28) and r.method == method and r.targets.tolist() == t.tolist()
    np.testing.assert_allclose(r.maps, want_map, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.logits, want_logits, rtol=1e-5, atol=1e-5)
    predicted = client.explain("lenet", x, method, seed=1)  # no targets: the predicted classes
    assert predicted.targets.tolist() == client.classify("lenet", x, top_k=1).indices[:, 0].tolist()


def test_gradcam_rpc_still_works_and_agrees(client, x):
    old = client.gradcam("lenet", x)
    new = client.explain("lenet", x, "gradcam")
    np.testing.assert_array_equal(old.cams, new.maps)
    assert old.targets.tolist() == new.targets.tolist()


def test_smoothgrad_is_reproducible_under_a_seed(client, x):
    a = client.explain("lenet", x, "smoothgrad", seed=42)
    b = client.explain("lenet", x, "smoothgrad", seed=42)
    c = client.explain("lenet", x, "smoothgrad", seed=43)
    np.testing.assert_array_equal(a.maps, b.maps)
    assert a.seeds == [42] and np.abs(a.maps - c.maps).max() > 1e-3
    drawn = client.explain("lenet", x, "smoothgrad")  # the server draws a seed and says which
    assert drawn.seeds[0] != 0
    np.testing.assert_array_equal(client.explain("lenet", x, "smoothgrad", seed=drawn.seeds[0]).maps, drawn.maps)


def test_graphs_are_v2_models(explain_server, x, explain_repository):
    import tritonclient.grpc as tc
    v2 = tc.InferenceServerClient(explain_server)
    t = np.array([3, 1, 4, 1, 5, 9], np.int64)
    for method in ("ig", "smoothgrad"):
        inputs = [tc.InferInput("input", list(x.shape), "FP32"), tc.InferInput("target", [6], "INT64")]
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(t)
        feeds = {"input": x, "target": t}
        if method == "smoothgrad":
            feeds["noise"] = np.zeros((6, 16, 1, 28, 28), np.float32)
            inputs.append(tc.InferInput("noise", list(feeds["noise"].shape), "FP32"))
            inputs[2].set_data_from_numpy(feeds["noise"])
        got = v2.infer(f"lenet.{method}", inputs).as_numpy("map")
        np.testing.assert_allclose(got, _direct(explain_repository, method, feeds)[0], rtol=1e-5, atol=1e-6)
    assert v2.is_model_ready("lenet.gradcampp")


def _raw(client, **fields):
    """An Explain call built by hand, so each field can be wrong on its own."""
    return client._call("Explain", pb.ExplainRequest(**fields))


def test_bad_input_table(client, server, x):
    img = pb.Images(tensor=pb.Tensor(shape=x.shape, data=x.tobytes()))
    man = client.get_model("lenet")
    too_many = np.repeat(x[:1], max_images("ig", man) + 1, axis=0)
    cases = {
        "unknown method": (dict(method="lime"), "unknown method 'lime'"),
        "no method": (dict(method=""), "unknown method ''"),
        "target out of range": (dict(method="ig", targets=[0, 1, 2, 3, 4, 10]), "out of range 0..9"),
        "negative target": (dict(method="saliency", targets=[0, 1, 2, 3, 4, -1]), "out of range"),
        "target count": (dict(method="ig", targets=[1, 2]), "2 given for 6 images"),
        "noise shape": (dict(method="smoothgrad", options=pb.ExplainOptions(
            noise=pb.Tensor(shape=[6, 15, 1, 28, 28], data=np.zeros((6, 15, 1, 28, 28), np.float32).tobytes()))),
            "options.noise: shape [6, 15, 1, 28, 28]"),
        "noise NaN": (dict(method="smoothgrad", options=pb.ExplainOptions(
            noise=pb.Tensor(shape=[6, 16, 1, 28, 28], data=np.full((6, 16, 1, 28, 28), np.nan, np.float32).tobytes()))),
            "NaN"),
        "negative noise std": (dict(method="smoothgrad", options=pb.ExplainOptions(noise_std=-1)), "noise_std"),
        "too many images": (dict(method="ig", images=pb.Images(tensor=pb.Tensor(
            shape=too_many.shape, data=too_many.tobytes()))), f"above the maximum of {max_images('ig', man)}"),
    }
    for what, (fields, words) in cases.items():
        with pytest.raises(GlassboxError) as err:
            _raw(client, **{"name": "lenet", "images": img, **fields})
        assert err.value.code.name == "INVALID_ARGUMENT" and words in err.value.message, (what, err.value.message)
    # a method the model does not carry: the shared repository's lenet has Grad-CAM only, mlp not even that
    with GlassboxClient(server) as plain:
        for model, words in (("lenet", "does not carry 'ig'; it carries: gradcam"),
                             ("mlp", "does not carry 'gradcam'; it carries: no explanation method")):
            method = "ig" if model == "lenet" else "gradcam"
            with pytest.raises(GlassboxError) as err:
                plain.explain(model, x, method)
            assert err.value.code.name == "INVALID_ARGUMENT" and words in err.value.message
