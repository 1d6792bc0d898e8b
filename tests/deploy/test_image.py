"""The serving image, run with podman as Kubernetes would run it (as root; not part of `make test`):

    make image && make image-test

`make image-test` sets GLASSBOX_IMAGE, GLASSBOX_PODMAN (podman with this machine's runtime settings) and
CONTAINERS_CONF. The model repository is exported/ when it holds lenet (after `make demo`), else the
suite's briefly trained one; either is copied to a world-readable folder, since the image runs as uid 10001.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.paths import ROOT
from tests.helpers.server import free_port, signal_under_load

IMAGE = os.environ.get("GLASSBOX_IMAGE")
if not IMAGE:  # one line in make test's summary, not one per test
    pytest.skip("the image test runs with `make image && make image-test` (podman as root); it is not part of "
                "make test", allow_module_level=True)


def podman(*args: str, **kwargs) -> subprocess.CompletedProcess:
    cmd = [*shlex.split(os.environ.get("GLASSBOX_PODMAN", "podman")), *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def models(request):
    source = ROOT / "exported"
    if not (source / "lenet").is_dir():
        source = request.getfixturevalue("repository")
    folder = Path(tempfile.mkdtemp(prefix="glassbox-models-"))
    shutil.copytree(source, folder, dirs_exist_ok=True)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield folder
    shutil.rmtree(folder)


class Container:
    """A `podman run` of the image on the host's network: what signal_under_load expects of a process, where
    the signal is `podman stop` (the kubelet's way), not a signal to the podman client."""

    def __init__(self, models: Path, *extra: str):
        self.name, port, self.metrics_port = f"glassbox-test-{free_port()}", free_port(), free_port()
        self.address = f"127.0.0.1:{port}"
        cmd = [*shlex.split(os.environ.get("GLASSBOX_PODMAN", "podman")), "run", "--rm", "--name", self.name,
               "--network", "host", "-v", f"{models}:/models:ro", IMAGE, "--repository", "/models",
               "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(self.metrics_port), *extra]
        self.run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.stdout = self.run.stdout

    def wait_serving(self):
        from serving.client import wait_for_server
        try:
            wait_for_server(self.address, timeout=120)
        except Exception:
            self.close()
            raise RuntimeError(f"the container did not serve: {self.run.stdout.read()[-3000:]}") from None

    def send_signal(self, sig):
        assert sig.name == "SIGTERM", sig  # podman stop sends the image's stop signal, SIGTERM
        self.stopper = subprocess.Popen([*shlex.split(os.environ.get("GLASSBOX_PODMAN", "podman")), "stop", "-t",
                                         "30", self.name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait(self, timeout=None) -> int:
        return self.run.wait(timeout)

    def close(self):
        if self.run.poll() is None:
            subprocess.run([*shlex.split(os.environ.get("GLASSBOX_PODMAN", "podman")), "stop", "-t", "30",
                            self.name], capture_output=True, timeout=60)
        self.run.wait(timeout=60)


def test_image_runs_serve_as_non_root_without_torch():
    config = json.loads(podman("image", "inspect", IMAGE).stdout)[0]["Config"]
    assert config["User"] == "10001:10001" and config["Entrypoint"] == ["serve"], config
    probe = ("import importlib.util as u, os; "
             "print(os.getuid(), u.find_spec('torch'), u.find_spec('onnxruntime') is not None)")
    out = podman("run", "--rm", "--entrypoint", "python3", IMAGE, "-c", probe).stdout.split()
    assert out == ["10001", "None", "True"], out
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    print(f"\n{IMAGE}: {size / 1e6:.0f} MB")


def test_image_serves_classify_v2_and_metrics(models):
    import tritonclient.grpc as tc

    from serving.client import GlassboxClient
    box = Container(models)
    try:
        box.wait_serving()  # health SERVING
        images = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
        with GlassboxClient(box.address) as client:
            result = client.classify("lenet", images, top_k=2, return_logits=True)
            labels = client.get_model("lenet")["labels"]
        assert result.indices.shape == (3, 2) and all(lab in labels for row in result.labels for lab in row)
        triton = tc.InferenceServerClient(box.address)
        tensor = tc.InferInput("input", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        logits = triton.infer("lenet", [tensor], outputs=[tc.InferRequestedOutput("logits")]).as_numpy("logits")
        np.testing.assert_allclose(logits, result.logits, rtol=1e-5, atol=1e-6)  # one model behind both APIs
        text = urllib.request.urlopen(f"http://127.0.0.1:{box.metrics_port}/metrics", timeout=10).read().decode()
        assert 'glassbox_requests_total{method="Classify",model="lenet",status="OK"} 1.0' in text, text[-2000:]
    finally:
        box.close()
    assert box.run.returncode == 0, box.run.stdout.read()[-3000:]


def test_image_podman_stop_under_load_loses_no_call(models):
    """`podman stop` (SIGTERM to serve, PID 1 in the container) while 32 clients call: every call sent
    before it is answered, later ones get UNAVAILABLE, and the container exits 0 within the grace."""
    box = Container(models, "--log-level", "WARNING", "--grace", "10")
    try:
        box.wait_serving()
        signal_under_load(box, box.address)
    finally:
        box.close()
