"""Load one version of a model from ``exported/<model>/<version>/``: verify its manifest, every file's sha256
and its Triton configs, then build one onnxruntime session per graph (warmed up before the first request).

A version that fails any check is FAILED with the reason, never raised: the repository keeps serving the others.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from glassbox.manifest import read_manifest, verify_files

from .configs import parse_config
from .instances import PROCESSES_POSSIBLE, ProcessInstances
from .stats import Stats

log = logging.getLogger("glassbox.serving")


@dataclass
class Graph:
    """One ONNX graph and its session; ``run`` is what the batcher calls."""
    name: str                 # classifier, gradcam, encoder, decoder
    triton_name: str
    session: ort.InferenceSession
    inputs: list[dict]        # manifest entries: name, shape (batch -1), dtype
    outputs: list[dict]
    max_batch_size: int
    batch1_ms: float = float("inf")  # fastest batch-1 run at load (of small_session where there is one)
    small_session: ort.InferenceSession | None = None  # one intra-op thread, for tiny batches of tiny graphs
    stats: Stats = field(default_factory=Stats)  # KServe v2 ModelStatistics of this graph at this version
    instances: int = 1        # batches the batcher may run at once (Triton's instance_group count)
    config: object = None     # its parsed config.pbtxt (inference.ModelConfig), read once at load
    procs: ProcessInstances | None = None  # serve --instance-kind process: the instances, each a process

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.outputs]

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(outputs, feeds)

    def run_small(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """A few images: the one-thread session where there is one (no pool hand-off)."""
        return (self.small_session or self.session).run(outputs, feeds)


LOADING, READY, UNLOADING, UNAVAILABLE, FAILED = "LOADING", "READY", "UNLOADING", "UNAVAILABLE", "FAILED"


@dataclass
class Model:
    """One version of a model: its graphs and sessions once loaded, and its state in the repository."""
    name: str
    version: int
    path: Path
    manifest: dict = field(default_factory=dict)
    graphs: dict[str, Graph] = field(default_factory=dict)
    error: str = ""           # why it FAILED (or is UNAVAILABLE)
    provider: str = ""
    state: str = LOADING
    directory: str = ""       # the directory's name; a FAILED one may not be a number (version 0)
    signature: tuple = ()     # what the directory looked like when loaded: a changed one is tried again
    inflight: int = 0         # calls holding this version (``Runtime.use``); retiring waits for 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ready(self) -> bool:
        return self.state == READY

    def hold(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()


_CUDA_OK: bool | None = None


def _cuda_works(graph_file: Path) -> bool:
    """onnxruntime-gpu lists CUDA even where its libraries or the GPU are missing; probe once with a
    real session (its noisy load errors muted) and remember the answer."""
    global _CUDA_OK
    if _CUDA_OK is None:
        ort.set_default_logger_severity(4)
        try:
            sess = ort.InferenceSession(str(graph_file), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            _CUDA_OK = sess.get_providers()[0] == "CUDAExecutionProvider"
        except Exception:
            _CUDA_OK = False
        finally:
            ort.set_default_logger_severity(2)
        if not _CUDA_OK:
            log.warning("CUDAExecutionProvider is installed but cannot run here (no GPU or CUDA libraries): "
                        "serving on CPU")
    return _CUDA_OK


def providers(device: str, graph_file: Path) -> list[str]:
    """CUDA then CPU where CUDA works (and is not disabled), else CPU."""
    if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers() and _cuda_works(graph_file):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


# Process instances per CPU graph when neither serve --instances nor the config says: one per CPU up to this
# (each holds a copy of the graph; on a large machine the intra-op threads share the rest out among them).
MAX_DEFAULT_PROCESSES = 4
SMALL_GRAPH_MS = 1.0  # batch-1 latency under which a graph gets a one-thread session for small batches


def _session(file: Path, wanted: list[str], intra: int, inter: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra
    opts.inter_op_num_threads = inter
    opts.log_severity_level = 3
    # onnxruntime's pool threads spin while idle; on a small machine that steals the CPU the
    # event loop needs to accept the next requests, so let them sleep instead.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(file), opts, providers=wanted)


def _warm_ms(sess: ort.InferenceSession, inputs: list[dict]) -> float:
    """Fastest of three batch-1 runs on zeros, in ms (also proves the graph runs at all)."""
    feeds = {i["name"]: np.zeros([1, *i["shape"][1:]], np.int64 if i["dtype"] == "int64" else np.float32)
             for i in inputs}
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        best = min(best, (time.perf_counter() - t0) * 1e3)
    return best


def signature(path: Path) -> tuple:
    """What a version directory looks like now (its files' names, sizes and times): a version that failed is
    tried again once this changes, say after a copy by hand has finished."""
    try:
        return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir()))
    except OSError:
        return ()


def check_configs(path: Path, manifest: dict) -> dict:
    """Every graph's Triton ``config.pbtxt`` (where export wrote one) parsed, by graph name: a version whose
    config does not parse is refused (ValueError), as Triton would refuse it."""
    return {gname: parse_config(path / f"{gname}.config.pbtxt") for gname in manifest["graphs"]}


def cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def placement(config, provider: str, instances: int, intra: int, kind: str = "thread") -> tuple[int, int]:
    """(instances, intra-op threads) of one graph: the ``serve`` flags where given (non-zero), else the graph's
    ``instance_group`` count in its config.pbtxt, else one instance (process instances on CPU: one per CPU, up to
    ``MAX_DEFAULT_PROCESSES``).
    On CPU, several instances share the cores out among them unless ``intra`` says otherwise (an instance's pool
    threads would otherwise wait at every operator's barrier for a core another instance holds)."""
    if not instances:
        groups = config.instance_group
        instances = sum(g.count or 1 for g in groups) or (min(cpus(), MAX_DEFAULT_PROCESSES) if kind == "process"
                                                           and provider == "CPUExecutionProvider" else 1)
    if provider == "CPUExecutionProvider" and instances > 1 and not intra:
        intra = max(1, cpus() // instances)
    return instances, intra


def _load_graph(path: Path, gname: str, g: dict, config, wanted: list[str], max_batch: int, instances: int,
                intra_op_threads: int, inter_op_threads: int, instance_kind: str) -> Graph:
    """One graph of a version: its session, warmed up, and its instances (threads, or processes where asked)."""
    count, intra = placement(config, wanted[0], instances, intra_op_threads)
    # One session serves every thread instance: onnxruntime's run is thread-safe, and with one intra-op
    # thread each run computes on its caller's thread.
    sess = _session(path / g["file"], wanted, intra, inter_op_threads)
    # The first runs allocate: do them before the first request. The time tells the batcher
    # which batches are small enough to run without a thread hand-off.
    batch1_ms, small = _warm_ms(sess, g["inputs"]), None
    if intra == 0 and wanted[0] == "CPUExecutionProvider" and batch1_ms < SMALL_GRAPH_MS:
        # For a graph this small, a few-image batch spends more on handing work to pool
        # threads and waking them than it saves: those run on a one-thread session, large
        # batches keep the pool, where the threads pay for themselves.
        small = _session(path / g["file"], wanted, 1, inter_op_threads)
        batch1_ms = _warm_ms(small, g["inputs"])
    graph = Graph(gname, g["triton_name"], sess, g["inputs"], g["outputs"], max_batch, batch1_ms, small,
                  instances=count, config=config)
    if instance_kind == "process" and wanted[0] == "CPUExecutionProvider" and PROCESSES_POSSIBLE:
        # The server's own session stays: the warm-up above, the small batches run inline, and the stand-in
        # while a lost process is replaced.
        graph.instances, intra = placement(config, wanted[0], instances, intra_op_threads, "process")
        graph.procs = ProcessInstances(path / g["file"], wanted, graph.instances, intra, inter_op_threads)
    return graph


def close_instances(model: Model) -> None:
    """End the process instances of ``model``'s graphs (none run a batch any more)."""
    for g in model.graphs.values():
        if g.procs is not None:
            g.procs.close()


def load_model(path: Path, *, device: str = "auto", intra_op_threads: int = 0, inter_op_threads: int = 0,
               instances: int = 0, instance_kind: str = "thread") -> Model:
    """Load one version directory: READY with its sessions, or FAILED with the reason (logged, never raised).
    ``instance_kind`` "process": each CPU graph's instances are processes (serving/instances.py)."""
    model = Model(path.parent.name, int(path.name), path, directory=path.name, signature=signature(path))
    try:
        # The same checks export runs before publishing: schema, then every file's sha256.
        model.manifest = read_manifest(path)
        if problems := verify_files(path):
            raise ValueError("; ".join(problems))
        configs = check_configs(path, model.manifest)
        for gname, g in model.manifest["graphs"].items():
            wanted = providers(device, path / g["file"])
            model.graphs[gname] = _load_graph(path, gname, g, configs[gname], wanted, int(model.manifest.get(
                "max_batch_size", 256)), instances, intra_op_threads, inter_op_threads, instance_kind)
        used = {g.session.get_providers()[0] for g in model.graphs.values()}
        model.provider = ",".join(sorted(used))
        if wanted[0] not in used:  # say so loudly: a silent fall-back to CPU is a classic complaint
            log.warning("%s/%s: wanted %s but runs on %s", model.name, model.version, wanted[0], model.provider)
        log.info("loaded %s/%s on %s: %s", model.name, model.version, model.provider, ", ".join(
            f"{g.name} ({g.batch1_ms:.2f} ms at batch 1, {g.instances} {'process' if g.procs else 'thread'} "
            f"instance{'s' * (g.instances > 1)}"
            f"{', small batches on 1 thread' if g.small_session else ''})"
            for g in model.graphs.values()))
        model.state = READY
    except Exception as e:  # any failure: not served, reason kept for ListModels
        close_instances(model)
        model.graphs, model.state = {}, FAILED
        model.error = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
        log.error("not serving %s/%s: %s", model.name, model.version, model.error)
    return model
