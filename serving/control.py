"""Model control: which versions are loaded, and changing that while serving (Triton's model control modes).

    serve --model-control-mode poll --repository-poll-secs 2     # default: new exports are served, deleted retired
    serve --model-control-mode explicit --load-model lenet        # only what the API loads (RepositoryModelLoad)
    serve --model-control-mode none                               # what is there at start, for good

A rollout: the new version is loaded beside the old ones (the old keep serving meanwhile); once READY it is what
"latest" (version 0) means for every call scheduled from then on; the versions the policy no longer wants are
retired: UNLOADING (no new call reaches them), then unloaded once the calls that hold them have finished
(``Model.inflight``), their sessions freed. Loads and unloads of one model are serialised by a lock, so a load and
an unload racing from two clients end in the state of whichever ran last; the other model's calls never wait.
A bad new version (truncated ONNX, sha256 mismatch, bad manifest or config.pbtxt, a directory that is not a
number) is FAILED with its reason, one log line and a metric; the versions already served keep serving.
"""
from __future__ import annotations

import asyncio
import logging
import time

from .errors import FailedPrecondition, NotFound
from .loader import FAILED, LOADING, READY, UNAVAILABLE, UNLOADING, Model, load_model, signature
from .memory import free_memory
from .repository import Repository

log = logging.getLogger("glassbox.serving")
MODES = ("none", "poll", "explicit")
RETIRE_WAIT_S = 60.0  # the longest a retiring version waits for the calls holding it


class ModelControl:
    def __init__(self, repo: Repository, runtime, *, mode: str = "poll", poll_secs: float = 2.0,
                 load_models: tuple[str, ...] = (), session_options: dict | None = None, metrics=None):
        self.repo, self.runtime, self.metrics = repo, runtime, metrics
        self.mode, self.poll_secs, self.load_models = mode, poll_secs, tuple(load_models)
        self.session_options = session_options or {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.unloaded: set[str] = set()  # unloaded through the API: poll leaves them alone until loaded again
        self.broadcast = None            # serve --workers: tell the other workers (``ParentLink.control``)
        self._poller: asyncio.Task | None = None

    def _lock(self, name: str) -> asyncio.Lock:
        return self.locks.setdefault(name, asyncio.Lock())

    # --- the modes

    async def start(self) -> None:
        """The first load: every model (none, poll) or those of --load-model (explicit; ``*`` for all)."""
        names = self.repo.names_on_disk()
        if self.mode == "explicit":
            names = names if "*" in self.load_models else [n for n in self.load_models if n in names]
            missing = [n for n in self.load_models if n != "*" and n not in self.repo.names_on_disk()]
            for n in missing:
                log.error("--load-model %s: no such model in %s", n, self.repo.root)
        for name in names:
            await self.sync(name)

    def start_polling(self) -> None:
        if self.mode == "poll" and self._poller is None:
            self._poller = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_secs)
            try:
                await self.sync_all()
            except Exception:  # a poll must never take the server down; the next one tries again
                log.exception("polling the model repository failed")

    async def sync_all(self) -> None:
        names = set(self.repo.names_on_disk()) | set(self.repo.models)
        for name in sorted(names - self.unloaded):
            await self.sync(name)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()

    # --- the API (RepositoryModelLoad / RepositoryModelUnload)

    def _check_allowed(self, what: str) -> None:
        if self.mode == "none":
            raise FailedPrecondition(f"{what} is disabled: the server runs with --model-control-mode none "
                                     "(use poll or explicit)")

    async def load(self, name: str, *, tell_others: bool = True) -> None:
        """Load ``name`` as its policy says (again: new versions on disk are picked up). NotFound for a model that
        is not in the repository; FailedPrecondition when no version of it could be loaded."""
        self._check_allowed("loading models")
        if name not in self.repo.names_on_disk():
            raise NotFound(f"no model {name!r} in the repository {self.repo.root}")
        async with self._lock(name):  # inside the lock: a racing unload runs wholly before or after
            self.unloaded.discard(name)
            await self._sync(name)
        if tell_others and self.broadcast:
            await self.broadcast("load", name)
        if not self.repo.ready_versions(name):
            reasons = "; ".join(f"v{m.version}: {m.error}" for m in self.repo.models.get(name, {}).values() if m.error)
            raise FailedPrecondition(f"model {name!r}: no version could be loaded ({reasons or 'none on disk'})")

    async def unload(self, name: str, *, tell_others: bool = True) -> None:
        """Retire every version of ``name`` (the calls holding one finish first). NotFound for an unknown model."""
        self._check_allowed("unloading models")
        if name not in self.repo.models and name not in self.repo.names_on_disk():
            raise NotFound(f"unknown model {name!r}")
        async with self._lock(name):
            self.unloaded.add(name)
            for m in list(self.repo.models.get(name, {}).values()):
                if m.state == READY:
                    await self._retire(m, "unloaded")
        if tell_others and self.broadcast:
            await self.broadcast("unload", name)

    async def apply(self, op: str, name: str) -> None:
        """A load or unload another worker of ``serve --workers`` took (told through the parent): do it here too."""
        try:
            await (self.load if op == "load" else self.unload)(name, tell_others=False)
        except Exception as e:  # noqa: BLE001 - the worker that took the call has answered it; log here
            log.warning("%s %s, as another worker did: %s", op, name, e)

    # --- one model brought in line with its policy

    async def sync(self, name: str) -> None:
        async with self._lock(name):
            if name not in self.unloaded:
                await self._sync(name)

    async def _sync(self, name: str) -> None:
        """Load what the policy wants and is not loaded, then retire what it no longer wants (under the lock)."""
        wanted, disk, policy = self.repo.plan(name)
        for version, path in wanted.items():
            current = self.repo.models.get(name, {}).get(version)
            if current is None or current.state in (UNAVAILABLE, FAILED):
                await self._load(name, version, path)
        # Only now retire: "latest" always has a READY version while a new one loads.
        outside = f"outside the version policy ({policy})"  # config.pbtxt read once per sync
        for version, m in list(self.repo.models.get(name, {}).items()):
            if version not in disk:
                if m.state == READY:
                    await self._retire(m, "deleted from the repository")
                self.repo.forget(name, version)
            elif version not in wanted and m.state == READY:
                await self._retire(m, outside)
        for version, path in disk.items():
            if version not in wanted:
                self.repo.unavailable(name, version, path, outside)

    async def _load(self, name: str, version: int, path) -> None:
        placeholder = Model(name, version, path, state=LOADING, directory=path.name, signature=signature(path))
        self.repo.put(placeholder)
        t0 = time.perf_counter()
        model = await asyncio.get_running_loop().run_in_executor(
            None, lambda: load_model(path, **self.session_options))
        seconds = time.perf_counter() - t0
        if model.state == READY:
            self.runtime.add(model)  # its batchers first, then visible to calls
            log.info("%s v%d READY on %s in %.2f s", name, version, model.provider, seconds)
        self.repo.put(model)
        if self.metrics:
            self.metrics.model_loaded(name, version, "ok" if model.state == READY else "failed", seconds)

    async def _retire(self, m: Model, reason: str) -> None:
        m.state, m.error = UNLOADING, ""
        self.repo.changed()  # no new call reaches it; the calls holding it finish on it
        if m.inflight:
            try:
                await asyncio.wait_for(m.idle.wait(), RETIRE_WAIT_S)
            except asyncio.TimeoutError:
                log.warning("%s v%d: %d calls still running after %.0f s; unloading anyway", m.name, m.version,
                            m.inflight, RETIRE_WAIT_S)
        await self.runtime.remove(m)
        m.graphs, m.state, m.error = {}, UNAVAILABLE, reason
        self.repo.changed()
        free_memory()
        log.info("%s v%d unloaded (%s)", m.name, m.version, reason)
        if self.metrics:
            self.metrics.model_unloaded(m.name, m.version)
