"""The live model repository (serving/control.py, repository.py, policy.py, v2_repository.py): poll and explicit
model control, version policies, bad new versions, the repository and statistics API through tritonclient, a
call in flight on a retiring version, --workers and a fleet converging, memory after unloads.

    .venv/bin/pytest -q tests/serving/test_live_repository.py
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from glassbox.data import load_dataset, preprocess
from glassbox.io import sha256
from serving.client import GlassboxClient
from tests.helpers.repository import publish
from tests.helpers.server import free_port, start_server, stop_server

POLL = ("--repository-poll-secs", "0.2")


def states(address) -> dict[tuple[str, str], str]:
    with GlassboxClient(address, timeout=10) as c:
        return {(m.name, m.directory): m.state for m in c.list_models()}


def wait_for(check, timeout=30.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")


@pytest.fixture()
def repo(tmp_path, repository):
    r = tmp_path / "repo"
    shutil.copytree(repository / "lenet", r / "lenet")
    return r


@pytest.fixture(scope="module")
def x(fmnist_dir, repository):
    test = load_dataset("fashion-mnist", "test", data_dir=fmnist_dir)
    man = json.loads((repository / "lenet" / "1" / "manifest.json").read_text())
    return preprocess(test.images[:4], man["preprocessing"])


def test_poll_serves_a_new_version_and_retires_a_deleted_one(repo, x):
    proc, address = start_server(repo, *POLL)
    try:
        with GlassboxClient(address, timeout=10) as c:
            assert c.get_model("lenet")["version"] == 1
            v = publish(repo / "lenet", repo / "lenet" / "1")
            wait_for(lambda: c.get_model("lenet")["version"] == v, what="serving the new version")
            assert c.get_model("lenet", 1)["version"] == 1  # latest:2 keeps the one before
            c.classify("lenet", x)
            shutil.rmtree(repo / "lenet" / str(v))
            wait_for(lambda: c.get_model("lenet")["version"] == 1, what="retiring the deleted version")
            # UNLOADING (no call reaches it) until its batchers and instance processes have stopped, then gone
            wait_for(lambda: ("lenet", str(v)) not in states(address), what="the deleted version leaving the index")
            with pytest.raises(Exception, match="no version"):
                c.get_model("lenet", v)
    finally:
        assert stop_server(proc) == 0


def test_version_policy_loads_only_the_policys_versions(repo):
    """export writes the model's config.pbtxt with the default policy; edited to latest 2 over 5 versions on disk,
    only 4 and 5 load; --version-policy overrides it."""
    assert "latest { num_versions: 2 }" in (repo / "lenet" / "config.pbtxt").read_text()
    for _ in range(4):
        publish(repo / "lenet", repo / "lenet" / "1")
    (repo / "lenet" / "config.pbtxt").write_text('name: "lenet"\nversion_policy: { latest { num_versions: 2 } }\n')
    proc, address = start_server(repo, "--model-control-mode", "none")
    try:
        assert states(address) == {("lenet", "1"): "UNAVAILABLE", ("lenet", "2"): "UNAVAILABLE",
                                   ("lenet", "3"): "UNAVAILABLE", ("lenet", "4"): "READY", ("lenet", "5"): "READY"}
    finally:
        stop_server(proc)
    proc, address = start_server(repo, "--model-control-mode", "none", "--version-policy", "specific:1,3")
    try:
        ready = {d for (_, d), s in states(address).items() if s == "READY"}
        assert ready == {"1", "3"}
    finally:
        stop_server(proc)


def _truncate(tmp):
    f = tmp / "classifier.onnx"
    f.write_bytes(f.read_bytes()[:1000])
    _rehash(tmp)  # a truncated graph whose manifest agrees: onnxruntime must refuse it


def _rehash(tmp):
    m = json.loads((tmp / "manifest.json").read_text())
    m["files"] = {k: sha256(tmp / k) for k in m["files"]}
    (tmp / "manifest.json").write_text(json.dumps(m))


def _sha_mismatch(tmp):
    f = tmp / "classifier.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def _bad_manifest(tmp):
    m = json.loads((tmp / "manifest.json").read_text())
    del m["graphs"]
    (tmp / "manifest.json").write_text(json.dumps(m))


def _bad_config(tmp):
    (tmp / "classifier.config.pbtxt").write_text("name: \"lenet\"\nnot_a_field { oops }\n")
    _rehash(tmp)


@pytest.mark.parametrize(("spoil", "reason"), [(_truncate, "InvalidProtobuf|INVALID_PROTOBUF|Load model"),
                                               (_sha_mismatch, "sha256"), (_bad_manifest, "graphs"),
                                               (_bad_config, "does not parse"), (None, "not a number")])
def test_a_bad_new_version_fails_alone(repo, x, spoil, reason):
    """Each bad version is FAILED with its reason, one log line and a metric; version 1 keeps serving."""
    import re
    metrics_port = free_port()
    proc, address = start_server(repo, *POLL, "--metrics-port", str(metrics_port), "--log-level", "INFO")
    try:
        if spoil is None:
            shutil.copytree(repo / "lenet" / "1", repo / "lenet" / "latest-copy")
            key = ("lenet", "latest-copy")
        else:
            key = ("lenet", str(publish(repo / "lenet", repo / "lenet" / "1", spoil)))
        wait_for(lambda: states(address).get(key) == "FAILED", what="the bad version FAILED")
        with GlassboxClient(address, timeout=10) as c:
            failed = next(m for m in c.list_models() if (m.name, m.directory) == key)
            assert re.search(reason, failed.error), failed.error
            assert c.get_model("lenet")["version"] == 1
            assert c.classify("lenet", x).indices.shape == (4, 5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        if spoil is not None:
            assert re.search(rf'glassbox_model_loads_total\{{model="lenet",result="failed",version="{key[1]}"\}} 1',
                             text), [line for line in text.splitlines() if "model_loads" in line]
    finally:
        assert stop_server(proc) == 0
    log = proc.stdout.read()
    assert sum(f"not serving lenet/{key[1]}" in line for line in log.splitlines()) == 1, log[-3000:]


def test_explicit_load_unload_and_statistics_through_tritonclient(repo, x):
    import tritonclient.grpc as tg
    import tritonclient.http as th
    http_port = free_port()
    proc, address = start_server(repo, "--model-control-mode", "explicit", "--http-port", str(http_port))
    try:
        g, h = tg.InferenceServerClient(address), th.InferenceServerClient(f"127.0.0.1:{http_port}")
        index = g.get_model_repository_index(as_json=True)["models"]
        assert [(m["name"], m["state"]) for m in index] == [("lenet", "UNAVAILABLE")]
        assert not g.is_model_ready("lenet")
        g.load_model("lenet")
        assert g.is_model_ready("lenet") and h.is_model_ready("lenet")
        inp = tg.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        assert g.infer("lenet", [inp]).as_numpy("logits").shape == (4, 10)
        stats = g.get_inference_statistics("lenet", as_json=True)["model_stats"]
        s = next(s for s in stats if s["version"] == "1")
        assert int(s["inference_count"]) == 4 and int(s["execution_count"]) == 1
        assert int(s["inference_stats"]["success"]["count"]) == 1
        assert int(s["inference_stats"]["queue"]["ns"]) > 0 and int(s["inference_stats"]["compute_infer"]["ns"]) > 0
        assert h.get_inference_statistics("lenet")["model_stats"][0]["inference_count"] == 4
        h.unload_model("lenet")
        assert not g.is_model_ready("lenet")
        assert {m["state"] for m in h.get_model_repository_index()} == {"UNAVAILABLE"}
        h.load_model("lenet")
        assert g.is_model_ready("lenet")
        with pytest.raises(Exception, match="no model 'nope'"):
            g.load_model("nope")
    finally:
        assert stop_server(proc) == 0


def test_load_and_unload_racing_end_in_a_defined_state(repo):
    """Two clients load and unload the same model at once, 10 times each: every call succeeds (they are
    serialised), health stays SERVING, and a last load leaves the model READY (triton-inference-server#3583)."""
    import tritonclient.grpc as tg
    proc, address = start_server(repo, "--model-control-mode", "explicit", "--load-model", "lenet")
    try:
        def client(op):
            c = tg.InferenceServerClient(address)
            errors = []
            for _ in range(10):
                try:
                    getattr(c, op)("lenet")
                except Exception as e:  # noqa: BLE001 - collected and checked below
                    errors.append(str(e))
            return errors
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(client, ["load_model", "unload_model"]))
        assert results == [[], []], results
        c = tg.InferenceServerClient(address)
        assert c.is_server_ready()
        c.load_model("lenet")
        assert c.is_model_ready("lenet")
    finally:
        assert stop_server(proc) == 0


SLOW = """
import sys, time
import serving.batcher as b, serving.loader as r
b.INLINE_MS = 0  # every batch in the batcher's thread, so the event loop takes calls meanwhile, as with a real model
real = r.Graph.run
def run(self, outputs, feeds):
    time.sleep(0.3)
    return real(self, outputs, feeds)
r.Graph.run = run
sys.argv[0] = "serve"
import serving.cli
serving.cli.main()
"""


def test_a_call_in_flight_on_a_retiring_version_completes(repo, x):
    """With latest:1, publishing version 2 retires version 1 while calls pinned to it are queued behind 0.3 s
    session runs: every one of them is answered by version 1."""
    # Thread instances: the slowed session runs are this process's own (process instances have sessions of theirs).
    proc, address = start_server(repo, *POLL, "--version-policy", "latest:1", "--max-batch", "1",
                                 "--log-level", "INFO", "--instance-kind", "thread", serve=[sys.executable, "-c", SLOW])
    try:
        from serving._generated.glassbox.v1 import glassbox_pb2 as pb
        from serving._generated.glassbox.v1 import glassbox_pb2_grpc as pb_grpc
        from serving.client import _images
        with grpc.insecure_channel(address) as ch:
            stub = pb_grpc.GlassboxStub(ch)
            req = pb.ClassifyRequest(name="lenet", version=1, images=_images(x[:1]), top_k=1)
            calls = [stub.Classify.future(req, timeout=60) for _ in range(8)]  # ~2.4 s of work on version 1
            time.sleep(0.3)
            publish(repo / "lenet", repo / "lenet" / "1")
            results = [c.result() for c in calls]  # any error (FAILED_PRECONDITION: retired) raises here
            assert [len(r.predictions) for r in results] == [1] * 8
            wait_for(lambda: states(address).get(("lenet", "1")) == "UNAVAILABLE", what="version 1 retired")
    finally:
        assert stop_server(proc) == 0
    log = proc.stdout.read()
    assert "lenet v1 unloaded" in log, log[-3000:]
    assert log.index("lenet v2 READY") < log.index("lenet v1 unloaded")


def test_workers_and_a_fleet_converge(repo, x):
    """--workers 2: an explicit load through one connection reaches both workers. Two separate servers polling one
    repository (a fleet on a shared volume) both serve a new version within a poll interval of each other."""
    port = free_port()
    proc, address = start_server(repo, "--model-control-mode", "explicit", "--workers", "2")
    try:
        import tritonclient.grpc as tg
        tg.InferenceServerClient(address).load_model("lenet")
        seen = set()
        for k in range(16):  # separate connections: the kernel spreads them over both workers
            with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1), ("k", k)]) as ch:
                from serving._generated.glassbox.v1 import glassbox_pb2 as pb
                from serving._generated.glassbox.v1 import glassbox_pb2_grpc as pb_grpc
                models = wait_for(lambda ch=ch: [m for m in pb_grpc.GlassboxStub(ch).ListModels(
                    pb.ListModelsRequest(), timeout=10).models if m.state == "READY"], timeout=10,
                    what="the load on every worker")
                seen.add(tuple((m.name, m.version) for m in models))
        assert seen == {(("lenet", 1),)}, seen
    finally:
        assert stop_server(proc) == 0
    del port
    servers = [start_server(repo, "--repository-poll-secs", "0.5") for _ in range(2)]
    try:
        v = publish(repo / "lenet", repo / "lenet" / "1")
        t0 = time.monotonic()
        times = []
        for _, address in servers:
            with GlassboxClient(address, timeout=10) as c:
                wait_for(lambda c=c: c.get_model("lenet")["version"] == v, what="the fleet serving the new version")
                times.append(time.monotonic() - t0)
        assert max(times) < 0.5 + 5, times  # one poll interval plus a load
    finally:
        for p, _ in servers:
            stop_server(p)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_unloaded_versions_free_their_memory(tmp_path, trained_runs, fmnist_dir):
    """20 versions of a resnet rolled through with latest:1 (each load retires the one before): the server's
    RSS ends within 10% of where it was with the first version loaded."""
    import torch

    from training.export import export_model
    from training.models import create_model
    repo = tmp_path / "repo"
    cfg = json.loads((trained_runs / "lenet" / "config.json").read_text())
    cfg = {**cfg, "model": {"name": "resnet", "args": {}}}
    torch.manual_seed(0)
    test = load_dataset("fashion-mnist", "test", data_dir=fmnist_dir)
    res = export_model(create_model("resnet").eval(), cfg, repo, images=test.images[:16], batch_sizes=(16,))
    name = res.manifest["name"]
    proc, address = start_server(repo, *POLL, "--version-policy", "latest:1")
    try:
        with GlassboxClient(address, timeout=30) as c:
            x = preprocess(test.images[:8], res.manifest["preprocessing"])
            c.classify(name, x)
            start = rss_kb(proc.pid)
            for _ in range(20):
                v = publish(repo / name, repo / name / "1")
                wait_for(lambda v=v: c.get_model(name)["version"] == v, what="the new version")
                wait_for(lambda v=v: sum(s == "READY" for s in states(address).values()) == 1, what="the old retired")
                c.classify(name, x)
            end = rss_kb(proc.pid)
        print(f"\nRSS after the first version {start / 1024:.1f} MiB, after 20 more loaded and unloaded "
              f"{end / 1024:.1f} MiB ({100 * (end - start) / start:+.1f}%)")
        assert end <= start * 1.10, (start, end)
    finally:
        assert stop_server(proc) == 0


def test_poll_starts_on_an_empty_repository_and_serves_what_arrives(tmp_path, repository):
    repo = tmp_path / "repo"
    repo.mkdir()
    proc, address = start_server(repo, *POLL)
    try:
        shutil.copytree(repository / "lenet", repo / ".incoming")
        os.rename(repo / ".incoming", repo / "lenet")
        with GlassboxClient(address, timeout=10) as c:
            wait_for(lambda: any(m.ready for m in c.list_models()), what="serving the model that arrived")
    finally:
        assert stop_server(proc) == 0
    r = subprocess.run([sys.executable, "-m", "serving.cli", "--repository", str(repo), "--version-policy", "newest",
                        "--port", "0", "--metrics-port", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--version-policy 'newest'" in r.stderr and "Traceback" not in r.stderr, r.stderr
