"""The KServe v2 repository and statistics extensions, as Triton has them: the replies of RepositoryIndex,
RepositoryModelLoad / RepositoryModelUnload and ModelStatistics, shared by gRPC (serving/v2.py) and REST
(serving/rest.py). ``tritonclient``'s ``get_model_repository_index``, ``load_model``, ``unload_model`` and
``get_inference_statistics`` work unchanged; perf_analyzer reads ModelStatistics for its server-side breakdown.

Loads and unloads name a model of the repository (``lenet``), and act on all its graphs (the v2 models
``lenet``, ``lenet.gradcam``); statistics name a v2 model, or every one for an empty name.
"""
from __future__ import annotations

from ._generated.inference import grpc_service_pb2 as pb
from .errors import InvalidArgument, NotFound


async def index(rt, ready_only: bool = False) -> pb.RepositoryIndexResponse:
    """Every model and version the server knows, with its state and reason; a model on disk that was never
    loaded is listed without a version, UNAVAILABLE (as Triton lists it)."""
    repo = rt.repository()
    entries = [pb.RepositoryIndexResponse.ModelIndex(
        name=m.name, version=str(m.version) if m.version else m.directory, state=m.state, reason=m.error)
        for m in sorted(repo.all(), key=lambda m: (m.name, m.version, m.directory))]
    known = {m.name for m in repo.all()}
    entries += [pb.RepositoryIndexResponse.ModelIndex(name=n, state="UNAVAILABLE", reason="not loaded")
                for n in repo.names_on_disk() if n not in known]
    if ready_only:
        entries = [e for e in entries if e.state == "READY"]
    return pb.RepositoryIndexResponse(models=entries)


def _model_name(rt, name: str) -> str:
    """A repository model name from a load/unload request (a v2 graph name like ``lenet.gradcam`` means its model)."""
    if not name:
        raise InvalidArgument("model_name is empty")
    names = rt.repository().triton_names
    return names[name][0] if name in names and name not in rt.repository().names_on_disk() else name


async def load(rt, name: str) -> pb.RepositoryModelLoadResponse:
    await rt.control.load(_model_name(rt, name))
    return pb.RepositoryModelLoadResponse()


async def unload(rt, name: str) -> pb.RepositoryModelUnloadResponse:
    await rt.control.unload(_model_name(rt, name))
    return pb.RepositoryModelUnloadResponse()


def _duration(d) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def model_statistics(name: str, version: int, s) -> pb.ModelStatistics:
    """One graph's ``serving/stats.Stats`` as Triton's ModelStatistics."""
    return pb.ModelStatistics(
        name=name, version=str(version), last_inference=s.last_inference_ms, inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(s.success), fail=_duration(s.fail), queue=_duration(s.queue),
            compute_input=_duration(s.compute_input), compute_infer=_duration(s.compute_infer),
            compute_output=_duration(s.compute_output)),
        batch_stats=[pb.InferBatchStatistics(batch_size=size, compute_input=_duration(i),
                                             compute_infer=_duration(c), compute_output=_duration(o))
                     for size, (i, c, o) in sorted(s.batches.items())])


async def statistics(rt, name: str, version: str) -> pb.ModelStatisticsResponse:
    """The statistics of v2 model ``name`` (every READY version, or ``version``), or of every v2 model."""
    repo = rt.repository()
    if version and not version.isdigit():
        raise InvalidArgument(f"model version must be an integer, got {version!r}")
    if name and name not in repo.triton_names:
        raise NotFound(f"unknown model {name!r}; models: {', '.join(sorted(repo.triton_names))}")
    stats = []
    for m in sorted(repo.all(), key=lambda m: (m.name, m.version)):
        for g in m.graphs.values():
            if (not name or g.triton_name == name) and (not version or int(version) == m.version):
                stats.append(model_statistics(g.triton_name, m.version, g.stats))
    return pb.ModelStatisticsResponse(model_stats=stats)
