"""Load ``exported/``: verify every file's sha256, build one onnxruntime session per graph.

A model that fails (bad manifest, checksum mismatch, unloadable graph) is not served; the reason is
logged and reported by ListModels, and the other models are served as usual.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from glassbox.manifest import read_manifest, verify_files

from .errors import RepositoryMissing

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

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.outputs]

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(outputs, feeds)

    def run_small(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """A few images: the one-thread session where there is one (no pool hand-off)."""
        return (self.small_session or self.session).run(outputs, feeds)


@dataclass
class Model:
    name: str
    version: int
    path: Path
    manifest: dict = field(default_factory=dict)
    graphs: dict[str, Graph] = field(default_factory=dict)
    error: str = ""
    provider: str = ""

    @property
    def ready(self) -> bool:
        return not self.error


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


def load_model(path: Path, *, device: str = "auto", intra_op_threads: int = 0, inter_op_threads: int = 0) -> Model:
    model = Model(path.parent.name, int(path.name), path)
    try:
        # The same checks export runs before publishing: schema, then every file's sha256.
        model.manifest = read_manifest(path)
        if problems := verify_files(path):
            raise ValueError("; ".join(problems))
        for gname, g in model.manifest["graphs"].items():
            wanted = providers(device, path / g["file"])
            sess = _session(path / g["file"], wanted, intra_op_threads, inter_op_threads)
            # The first runs allocate: do them before the first request. The time tells the batcher
            # which batches are small enough to run without a thread hand-off.
            batch1_ms, small = _warm_ms(sess, g["inputs"]), None
            if intra_op_threads == 0 and wanted[0] == "CPUExecutionProvider" and batch1_ms < SMALL_GRAPH_MS:
                # For a graph this small, a few-image batch spends more on handing work to pool
                # threads and waking them than it saves: those run on a one-thread session, large
                # batches keep the pool (ResNet-sized graphs run 256 images ~1.8x faster on 2 cores).
                small = _session(path / g["file"], wanted, 1, inter_op_threads)
                batch1_ms = _warm_ms(small, g["inputs"])
            model.graphs[gname] = Graph(gname, g["triton_name"], sess, g["inputs"], g["outputs"],
                                        int(model.manifest.get("max_batch_size", 256)), batch1_ms, small)
        used = {g.session.get_providers()[0] for g in model.graphs.values()}
        model.provider = ",".join(sorted(used))
        if wanted[0] not in used:  # say so loudly: a silent fall-back to CPU is a classic complaint
            log.warning("%s/%s: wanted %s but runs on %s", model.name, model.version, wanted[0], model.provider)
        log.info("loaded %s/%s on %s: %s", model.name, model.version, model.provider, ", ".join(
            f"{g.name} ({g.batch1_ms:.2f} ms at batch 1{', small batches on 1 thread' if g.small_session else ''})"
            for g in model.graphs.values()))
    except Exception as e:  # any failure: not served, reason kept for ListModels
        model.graphs = {}
        model.error = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
        log.error("not serving %s/%s: %s", model.name, model.version, model.error)
    return model


class Repository:
    """Every version of every model in the repository directory; the newest is the default."""

    def __init__(self, root: str | Path, **session_options):
        self.root = Path(root)
        if not self.root.is_dir():
            raise RepositoryMissing(f"model repository {self.root} does not exist (run train-all or export first)")
        self.models: dict[str, dict[int, Model]] = {}
        for mdir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            versions = (p for p in mdir.iterdir() if p.is_dir() and p.name.isdigit())
            for vdir in sorted(versions, key=lambda p: int(p.name)):
                self.models.setdefault(mdir.name, {})[int(vdir.name)] = load_model(vdir, **session_options)
        if not self.models:
            raise RepositoryMissing(f"model repository {self.root} holds no <model>/<version>/ directories")
        # v2 / Triton names (lenet, lenet.gradcam, cvae.encoder) -> (model name, graph name)
        self.triton_names = {g.triton_name: (m.name, g.name) for m in self.latest_all() for g in m.graphs.values()}

    def all(self) -> list[Model]:
        return [m for versions in self.models.values() for m in versions.values()]

    def latest_all(self) -> list[Model]:
        return [versions[max(versions)] for versions in self.models.values()]

    def get(self, name: str, version: int = 0) -> Model:
        """The model (newest version when 0); KeyError with the valid names otherwise."""
        from .errors import NotFound
        versions = self.models.get(name)
        if not versions:
            raise NotFound(f"unknown model {name!r}; models: {', '.join(sorted(self.models))}")
        v = version or max(versions)
        if v not in versions:
            raise NotFound(f"model {name!r} has no version {v}; versions: {', '.join(map(str, sorted(versions)))}")
        m = versions[v]
        if not m.ready:
            from .errors import FailedPrecondition
            raise FailedPrecondition(f"model {name!r} version {v} is not served: {m.error}")
        return m
