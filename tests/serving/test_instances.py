"""Process instances (serving/instances.py, ``serve --instance-kind process``): batches computed in processes of
their own, equal to the server's own session; a run that fails, a process that dies idle or mid-batch; and no
process left behind by a stopped server or a retired version.

    .venv/bin/pytest -x -q tests/serving/test_instances.py
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from serving import loader
from serving.instances import ProcessInstances
from tests.helpers.server import process_tree, start_server, stop_server


def alive(pid: int) -> bool:
    """Running (a zombie, exited but not reaped yet, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def gone_within(pids, seconds=10.0) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


def descendants(pid: int) -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process below ``pid``."""
    out = {}
    for p, f in process_tree(pid).items():
        try:
            if p != pid:
                out[p] = int(f[1]), Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            pass
    return out


def instance_processes(server_pid: int) -> list[int]:
    """The server's instance processes: the children of multiprocessing's fork server."""
    tree = descendants(server_pid)
    servers = {p for p, (pp, cmd) in tree.items() if pp == server_pid and "forkserver" in cmd}
    return sorted(p for p, (pp, _) in tree.items() if pp in servers)


@pytest.fixture
def lenet_graph(repository) -> Path:
    return repository / "lenet" / "1" / "classifier.onnx"


def test_batches_run_in_the_processes_equal_to_a_session_here_and_close_ends_them(lenet_graph):
    """Two instances compute two batches at once; each equals a one-thread session in this process bit for bit
    (the same onnxruntime, the same graph). close() ends both processes. Catches rows mixed between batches,
    outputs in the wrong order, and processes left running."""
    x = np.random.default_rng(0).standard_normal((40, 1, 28, 28)).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    here = ort.InferenceSession(str(lenet_graph), opts, providers=["CPUExecutionProvider"])
    procs = ProcessInstances(lenet_graph, ["CPUExecutionProvider"], 2, 1)
    pids = [p.proc.pid for p in procs.idle]
    assert len(pids) == 2 and all(alive(p) and p != os.getpid() for p in pids)

    async def scenario():
        procs.watch()
        a = procs.submit(["logits", "probabilities"], {"input": x[:24]})
        b = procs.submit(["logits"], {"input": x[24:]})
        assert procs.submit(["logits"], {"input": x[:1]}) is None  # both busy: the caller runs it itself
        return await a, await b
    try:
        (logits_a, probs_a), (logits_b,) = asyncio.run(scenario())
        want_logits, want_probs = here.run(["logits", "probabilities"], {"input": x})
        np.testing.assert_array_equal(logits_a, want_logits[:24])
        np.testing.assert_array_equal(probs_a, want_probs[:24])
        np.testing.assert_array_equal(logits_b, want_logits[24:])
        assert len(procs.idle) == 2
    finally:
        procs.close()
    assert gone_within(pids)


def test_a_failed_run_fails_its_batch_and_keeps_the_instance(lenet_graph):
    """A batch onnxruntime refuses (wrong shape) fails with onnxruntime's reason; the same process then runs the
    next batch. Catches an error that kills or loses the instance."""
    procs = ProcessInstances(lenet_graph, ["CPUExecutionProvider"], 1, 1)
    pid = procs.idle[0].proc.pid

    async def scenario():
        procs.watch()
        with pytest.raises(RuntimeError, match="input"):
            await procs.submit(["logits"], {"input": np.zeros((2, 3, 28, 28), np.float32)})
        return await procs.submit(["logits"], {"input": np.zeros((2, 1, 28, 28), np.float32)})
    try:
        (logits,) = asyncio.run(scenario())
        assert logits.shape == (2, 10) and [p.proc.pid for p in procs.idle] == [pid]
    finally:
        procs.close()


def test_a_process_that_dies_is_replaced_and_only_a_batch_it_ran_fails(lenet_graph):
    """Killed while idle: a new process takes its place (at once where the event loop is running; a batch
    that finds it dead first is not lost: submit says no instance took it, and the caller runs it itself).
    Killed mid-batch: that batch fails naming the exit, and it is replaced too. Catches a dead instance that
    swallows batches for ever, or a hang on its socket."""
    procs = ProcessInstances(lenet_graph, ["CPUExecutionProvider"], 1, 1)
    x = np.zeros((4, 1, 28, 28), np.float32)

    async def replaced(old_pid):
        deadline = time.monotonic() + 30
        while not (procs.idle and procs.idle[0].proc.pid != old_pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert procs.idle and procs.idle[0].proc.pid != old_pid, "no replacement within 30 s"
        return procs.idle[0].proc.pid

    async def scenario():
        procs.watch()
        first = procs.idle[0].proc.pid
        os.kill(first, signal.SIGKILL)
        assert gone_within([first])
        assert procs.submit(["logits"], {"input": x}) is None  # found dead before the loop noticed: not sent
        second = await replaced(first)
        os.kill(second, signal.SIGKILL)  # now the loop is running: it notices the exit itself
        second = await replaced(second)
        (logits,) = await procs.submit(["logits"], {"input": x})
        assert logits.shape == (4, 10)

        os.kill(second, signal.SIGSTOP)  # stopped before it reads the batch: killed "mid-batch", deterministically
        running = procs.submit(["logits"], {"input": x})
        os.kill(second, signal.SIGKILL)
        with pytest.raises(RuntimeError, match=rf"instance process {second} exited .* while running this batch"):
            await asyncio.wait_for(running, 30)
        third = await replaced(second)
        (logits,) = await procs.submit(["logits"], {"input": x})
        return third
    try:
        third = asyncio.run(scenario())
    finally:
        procs.close()
    assert gone_within([third])


def test_loader_gives_each_cpu_graph_one_process_per_cpu_and_a_failed_version_leaves_none(repository, tmp_path,
                                                                                          monkeypatch):
    """--instance-kind process without --instances or an instance_group: one one-thread process per CPU for every
    graph (up to 4, the cores shared among them); --instances 3 gives 3; threads and GPUs keep one instance. A
    version that fails to load after some of its graphs started processes ends them. Catches a loader that
    ignores the kind, gives each process every core, or leaks processes."""
    monkeypatch.setattr(loader, "cpus", lambda: 2)
    model = loader.load_model(repository / "lenet" / "1", device="cpu", instance_kind="process")
    try:
        assert model.ready, model.error
        for g in model.graphs.values():
            assert g.instances == 2 and len(g.procs.idle) == 2
        pids = [p.proc.pid for g in model.graphs.values() for p in g.procs.idle]
        assert len(set(pids)) == 4 and all(alive(p) for p in pids)
    finally:
        loader.close_instances(model)
    assert gone_within(pids)
    three = loader.load_model(repository / "lenet" / "1", device="cpu", instance_kind="process", instances=3)
    assert {len(g.procs.idle) for g in three.graphs.values()} == {3}
    loader.close_instances(three)
    # On a large machine the default stops at MAX_DEFAULT_PROCESSES, the cores shared out among them.
    monkeypatch.setattr(loader, "cpus", lambda: 16)
    config = model.graphs["classifier"].config
    assert loader.placement(config, "CPUExecutionProvider", 0, 0, "process") == (4, 4)
    assert loader.placement(config, "CPUExecutionProvider", 0, 0, "thread") == (1, 0)
    assert loader.placement(config, "CUDAExecutionProvider", 0, 0, "process") == (1, 0)

    # The second graph's session cannot be built (its file is not ONNX, its sha256 re-listed so the checks pass):
    # the first graph's processes had started.
    repo = tmp_path / "repo"
    shutil.copytree(repository / "lenet" / "1", repo / "lenet" / "1")
    started = []
    real = loader.ProcessInstances

    def spy(*args, **kwargs):
        started.append(real(*args, **kwargs))
        return started[-1]
    monkeypatch.setattr(loader, "ProcessInstances", spy)
    import json

    from glassbox.io import sha256
    version = repo / "lenet" / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    second = list(manifest["graphs"].values())[1]["file"]
    (version / second).write_bytes(b"not an onnx graph")
    manifest["files"][second] = sha256(version / second)
    (version / "manifest.json").write_text(json.dumps(manifest))
    failed = loader.load_model(version, device="cpu", instance_kind="process")
    assert not failed.ready and started
    assert gone_within([p.proc.pid for s in started for p in s.idle] or [0]) and all(s.closed for s in started)


def test_server_with_process_instances_serves_both_apis_and_stops_them(repository, tmp_path):
    """``serve --instances 2`` (process instances, the default): a 64-image Classify (too large to run on the loop)
    and a v2 ModelInfer equal ``--instance-kind thread``'s answers; the server's process tree holds the instance
    processes, at nice 5, one CPU each; one killed while idle is replaced at once, and calls go on; unloading
    the model ends its instances; SIGTERM leaves no process behind. Catches the flag not reaching the loader, a
    server that stops answering once an instance dies, and orphaned processes."""
    from serving.client import GlassboxClient
    repo = tmp_path / "repo"
    shutil.copytree(repository / "lenet", repo / "lenet")
    x = np.random.default_rng(1).standard_normal((64, 1, 28, 28)).astype(np.float32)
    proc, address = start_server(repo, "--model-control-mode", "none", "--instance-kind", "thread")
    try:
        assert instance_processes(proc.pid) == []
        with GlassboxClient(address, timeout=30) as c:
            want = c.classify("lenet", x, return_logits=True).logits
    finally:
        assert stop_server(proc) == 0
    proc, address = start_server(repo, "--model-control-mode", "explicit", "--load-model", "lenet",
                                 "--instances", "2")  # process instances: the default
    try:
        instances = instance_processes(proc.pid)
        assert len(instances) == 4, descendants(proc.pid)  # 2 graphs x 2 instances
        for p in instances:  # below the server's priority, each on a CPU of its own (graph by graph)
            assert int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[16]) == 5
        if len(os.sched_getaffinity(0)) > 1:
            assert sorted(len(os.sched_getaffinity(p)) for p in instances) == [1, 1, 1, 1]
        with GlassboxClient(address, timeout=30) as c:
            np.testing.assert_allclose(c.classify("lenet", x, return_logits=True).logits, want, rtol=1e-5, atol=1e-5)
            victim = instances[-1]
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (victim in instance_processes(proc.pid) or
                                                   len(instance_processes(proc.pid)) < 4):
                time.sleep(0.1)
            answered = 0
            for _ in range(20):  # calls go on: on the other instance, the server's session, or the replacement
                try:
                    got = c.classify("lenet", x, return_logits=True).logits
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
                    answered += 1
                except Exception as e:  # noqa: BLE001 - at most the batch the killed process held fails
                    assert "exited" in str(e), e
            assert answered >= 19
        # v2 through tritonclient (in this process its protos are loaded: the session repository's export checks
        # Triton configs with them, and serving's own v2 stubs share their names)
        import tritonclient.grpc as tc
        t = tc.InferenceServerClient(address)
        inp = tc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = t.infer("lenet", [inp], outputs=[tc.InferRequestedOutput("logits")]).as_numpy("logits")
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        after = instance_processes(proc.pid)
        assert victim not in after and len(after) == 4  # replaced
        t.unload_model("lenet")  # a retired version's instances end with it
        assert gone_within(after), descendants(proc.pid)
        t.load_model("lenet")
        t.close()
        tree = descendants(proc.pid)
        assert len(instance_processes(proc.pid)) == 4
    finally:
        assert stop_server(proc) == 0
    assert gone_within(tree)
