"""Rollouts under load: new versions published into a polled repository while 32 clients call "latest".

    .venv/bin/python benchmarks/rollout_bench.py [--seconds 60] [--workers-list 1,2] [--clients 32] [--procs 2]

Builds a lenet repository without a checkpoint (``training.export.export_model`` on an untrained lenet, gated on
16 Fashion-MNIST test images), then for each worker count starts ``python -m serving.cli --model-control-mode
poll --repository-poll-secs 0.5`` (version policy latest:2, the default) on a copy of it and runs ``--clients``
closed-loop clients for ``--seconds``: threads in ``--procs`` processes (the GIL of one process would cap the
load), each on its own connection (``grpc.use_local_subchannel_pool`` plus a distinct option, so that with
``--workers 2`` the kernel spreads them over both workers), each sending a batch-1 v2 ModelInfer for lenet with
no version, i.e. "latest", as raw bytes, and reading ``model_version`` from the reply.

Meanwhile, as export does (a hidden ``.tmp-*`` directory beside the versions, then one ``os.rename`` to the next
number), versions 2, 3 and 4 are published at 1/4, 1/2 and 3/4 of the run; latest:2 retires version 1 when 3
arrives. One old version is unloaded by deleting its directory (poll mode has no per-version unload): at 5/8 of
the run the directories of versions 1 (already retired) and 2 (loaded, the version before latest) are removed, in
that order so that no poll can see 2 gone while 1 is there (which latest:2 would load back); poll then retires 2.

Printed per worker count: calls made, failed calls by status code, for each publish the seconds from its rename
to the first reply from the new version (and to the server's "READY" log line; for the deletion, to its
"unloaded" line), the last reply from a version before it (relative to the rename), and p50/p99 latency in the
--window seconds after each rename or deletion against the rest of the run (steady state); the machine's load
average beside them, as the cores are shared. The server's WARNING/ERROR log
lines are printed after the table.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FMNIST = "/usr/share/datasets/fashion-mnist"

from tests.helpers.repository import publish  # noqa: E402 - after the path is set


def build_repository(root: Path, data_dir: str) -> Path:
    """An untrained lenet exported the way export does (version 1); returns that version's directory."""
    import torch

    from glassbox.data import load_dataset
    from training.config import resolve_config
    from training.datasets import preprocessing_spec
    from training.export import export_model
    from training.models import create_model
    torch.manual_seed(0)
    model = create_model("lenet").eval()
    cfg = resolve_config({"model": "lenet", "dataset": {"name": "fashion-mnist", "data_dir": data_dir}})
    test = load_dataset("fashion-mnist", "test", data_dir=data_dir)
    # what a training run records in its config: the normalization and the classes
    cfg["dataset"] = {**cfg["dataset"], **preprocessing_spec(cfg, model), "classes": list(test.classes)}
    res = export_model(model, cfg, root, images=test.images[:16], batch_sizes=(16,))
    assert res.manifest["name"] == "lenet", res.manifest["name"]
    return root / "lenet" / "1"


def publish_timed(model_dir: Path, source: Path) -> tuple[int, float, float]:
    """Publish the next version (tests/helpers/repository.py); returns it and the rename's times."""
    version = publish(model_dir, source)
    return version, time.monotonic(), time.time()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(repo: Path, workers: int, poll_secs: float, log_file) -> tuple[subprocess.Popen, str]:
    """``serve`` in poll mode on a free port, its log in ``log_file``; returns once health says SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    port = free_port()
    cmd = [sys.executable, "-m", "serving.cli", "--repository", str(repo), "--port", str(port), "--metrics-port",
           "0", "--model-control-mode", "poll", "--repository-poll-secs", str(poll_secs), "--workers", str(workers),
           "--log-level", "INFO"]
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(address) as ch:
        check = health_pb2_grpc.HealthStub(ch).Check
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, address
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become SERVING (exit {proc.poll()}); see {log_file.name}")


def client_process(address: str, first: int, count: int, seconds: float, link) -> None:
    """``count`` closed-loop clients (threads, one connection each): connected, they say so on ``link`` and wait for
    the start time; then they call for ``seconds`` and send back (sent, answered, status, version) per call."""
    import grpc
    from tritonclient.grpc import service_pb2 as tpb  # the v2 messages, to build the request bytes once
    request = tpb.ModelInferRequest(model_name="lenet", inputs=[tpb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 1, 28, 28])], raw_input_contents=[bytes(784 * 4)],
        outputs=[tpb.ModelInferRequest.InferRequestedOutputTensor(name="logits")]).SerializeToString()
    records, connected, go = [], threading.Barrier(count + 1), {}

    def loop(k):
        options = [("grpc.use_local_subchannel_pool", 1), ("bench.client", k)]  # a connection of its own
        mine = []
        with grpc.insecure_channel(address, options=options) as ch:
            infer = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
            infer(request, timeout=30)  # connected (and warm), not recorded
            connected.wait()
            connected.wait()  # the second time: once the start time is known
            time.sleep(max(0.0, go["start"] - time.monotonic()))
            while (t0 := time.monotonic()) < go["start"] + seconds:
                try:
                    reply = tpb.ModelInferResponse.FromString(infer(request, timeout=30))
                    status, version = "OK", int(reply.model_version or 0)
                except grpc.RpcError as e:
                    status, version = e.code().name, 0
                mine.append((t0, time.monotonic(), status, version))
        records.extend(mine)  # list.extend is atomic under the GIL

    threads = [threading.Thread(target=loop, args=(first + k,)) for k in range(count)]
    for t in threads:
        t.start()
    connected.wait()
    link.send("connected")
    go["start"] = link.recv()  # CLOCK_MONOTONIC: the same clock in every process
    connected.wait()
    for t in threads:
        t.join()
    link.send(records)
    link.close()


def log_times(log_path: Path) -> dict[tuple[int, str], float]:
    """Wall-clock time of the last "lenet vN READY" / "lenet vN unloaded" line per version (with several workers:
    the last worker's), keyed (N, "READY" or "unloaded")."""
    import re
    found = {}
    for line in log_path.read_text(errors="replace").splitlines():
        m = re.match(r"(\S+ \S+) .*lenet v(\d+) (READY|unloaded)", line)
        if m:
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found[int(m.group(2)), m.group(3)] = t
    return found


def run_once(args, source: Path, workdir: Path, workers: int) -> dict:
    repo = workdir / f"repo-w{workers}"
    model_dir = repo / "lenet"
    model_dir.mkdir(parents=True)
    shutil.copytree(source, model_dir / "1")
    if (source.parent / "config.pbtxt").exists():
        shutil.copy(source.parent / "config.pbtxt", model_dir / "config.pbtxt")
    log_path = workdir / f"serve-w{workers}.log"
    with open(log_path, "w") as log_file:
        proc, address = start_server(repo, workers, args.poll_secs, log_file)
        try:
            return drive(args, source, model_dir, address, workers, log_path)
        finally:
            proc.terminate()
            code = proc.wait(timeout=60)
            if code != 0:
                print(f"server (workers={workers}) exited {code}", file=sys.stderr)


def drive(args, source, model_dir, address, workers, log_path) -> dict:
    ctx = mp.get_context("spawn")  # torch is loaded here (the export): no fork under its threads
    pipes, procs = [], []
    per = [args.clients // args.procs + (k < args.clients % args.procs) for k in range(args.procs)]
    for k, n in enumerate(per):
        mine, theirs = ctx.Pipe()
        p = ctx.Process(target=client_process, args=(address, sum(per[:k]), n, args.seconds, theirs))
        p.start()
        pipes.append(mine)
        procs.append(p)
    for pipe in pipes:
        assert pipe.recv() == "connected"
    load_before = os.getloadavg()
    start = time.monotonic() + 0.5
    for pipe in pipes:
        pipe.send(start)
    events = []  # (what, monotonic, wall, version)
    plan = [(args.seconds * f, "publish") for f in (0.25, 0.5, 0.75)] + [(args.seconds * 0.625, "delete")]
    for at, what in sorted(plan):
        time.sleep(max(0.0, start + at - time.monotonic()))
        if what == "publish":
            v, t, wall = publish_timed(model_dir, source)
            events.append(("publish", t, wall, v))
        else:
            shutil.rmtree(model_dir / "1")  # retired already; first, so that latest:2 never loads it back
            shutil.rmtree(model_dir / "2")
            events.append(("delete v1,v2", time.monotonic(), time.time(), 2))
    records = [r for pipe in pipes for r in pipe.recv()]
    for p in procs:
        p.join()
    return {"workers": workers, "records": records, "events": events, "load": (load_before, os.getloadavg()),
            "logged": log_times(log_path), "log": log_path}


def pct(values, q) -> str:
    return f"{np.percentile(values, q) * 1e3:.1f}" if len(values) else "-"


def report(res: dict, window: float, seconds: float) -> None:
    recs, events = res["records"], res["events"]
    ok = [r for r in recs if r[2] == "OK"]
    failed = collections.Counter(r[2] for r in recs if r[2] != "OK")
    by_version = collections.Counter(r[3] for r in ok)
    (b1, _, _), (a1, _, _) = res["load"][0], res["load"][1]
    print(f"\n== workers {res['workers']}: {len(recs)} calls in {seconds:.0f} s ({len(recs) / seconds:.0f}/s), "
          f"failed {dict(failed) or 0}; replies by version {dict(sorted(by_version.items()))}; "
          f"load average (1 min) {b1:.2f} before, {a1:.2f} after")
    print(f"{'event':<14}{'at s':>6}{'to log line s':>16}{'to 1st reply s':>16}{'last older s':>14}"
          f"{'calls':>8}{'failed':>8}{'p50 ms':>9}{'p99 ms':>9}")
    t_start = min(r[0] for r in recs)
    in_windows = set()
    for what, t, wall, v in events:
        win = [r for r in recs if t <= r[0] < t + window]
        in_windows.update(id(r) for r in win)
        lat = [r[1] - r[0] for r in win if r[2] == "OK"]
        if what == "publish":
            first = min((r[1] for r in ok if r[3] == v and r[1] >= t), default=None)
            last_old = max((r[1] for r in ok if r[3] < v), default=None)
            ready = res["logged"].get((v, "READY"))
            cells = [f"{ready - wall:.2f}" if ready else "-", f"{first - t:.2f}" if first else "never",
                     f"{last_old - t:+.2f}" if last_old else "-"]
            label = f"publish v{v}"
        else:
            gone = res["logged"].get((v, "unloaded"))
            cells, label = [f"{gone - wall:.2f}" if gone else "-", "-", "-"], what
        print(f"{label:<14}{t - t_start:>6.1f}{cells[0]:>16}{cells[1]:>16}{cells[2]:>14}{len(win):>8}"
              f"{sum(r[2] != 'OK' for r in win):>8}{pct(lat, 50):>9}{pct(lat, 99):>9}")
    rollout = [r[1] - r[0] for r in ok if id(r) in in_windows]
    steady = [r[1] - r[0] for r in ok if id(r) not in in_windows]
    print(f"{'rollouts':<14}{'':>6}{'':>16}{'':>16}{'':>14}{len(rollout):>8}{'':>8}{pct(rollout, 50):>9}"
          f"{pct(rollout, 99):>9}")
    print(f"{'steady state':<14}{'':>6}{'':>16}{'':>16}{'':>14}{len(steady):>8}{'':>8}{pct(steady, 50):>9}"
          f"{pct(steady, 99):>9}")
    bad = [line for line in res["log"].read_text(errors="replace").splitlines()
           if " WARNING " in line or " ERROR " in line or "Traceback" in line]
    if bad:
        print(f"server log, {len(bad)} WARNING/ERROR lines (all in {res['log']}):")
        print("\n".join(bad[:20]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workers-list", default="1,2", help="comma-separated serve --workers values")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--procs", type=int, default=2, help="client processes the clients are spread over")
    ap.add_argument("--poll-secs", type=float, default=0.5)
    ap.add_argument("--window", type=float, default=3.0, help="seconds after a rename counted as the rollout")
    ap.add_argument("--data-dir", default=FMNIST)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (repositories, server logs)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    workdir = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    try:
        source = build_repository(workdir / "exported", args.data_dir)
        print(f"rollout bench: {args.clients} clients in {args.procs} processes, {args.seconds:.0f} s per run, "
              f"poll every {args.poll_secs} s, latest:2, rollout window {args.window} s, {os.cpu_count()} cores")
        for workers in (int(w) for w in args.workers_list.split(",")):
            report(run_once(args, source, workdir, workers), args.window, args.seconds)
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
