"""The live model repository: ``exported/<model>/<version>/`` on disk, and the state of every version the server
knows (LOADING, READY, UNLOADING, UNAVAILABLE, FAILED; serving/loader.py loads one). What to load and when is
serving/control.py's job; this module answers what is on disk, what the policy wants, and which version a call
gets: the newest READY one for version 0.

A version is published by export with one rename of a finished directory (training/export/repository.py), so a
directory that is there is whole; hidden ``.tmp-*`` directories (an export in progress) are never looked at.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .errors import FailedPrecondition, NotFound, RepositoryMissing
from .loader import FAILED, READY, UNAVAILABLE, Model, signature
from .policy import VersionPolicy, from_config, read_model_config

log = logging.getLogger("glassbox.serving")


class Repository:
    def __init__(self, root: str | Path, *, policy: VersionPolicy | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise RepositoryMissing(f"model repository {self.root} does not exist (run train-all or export first)")
        self.override = policy             # serve --version-policy, for every model
        self.models: dict[str, dict[int, Model]] = {}
        self.bad_dirs: dict[tuple[str, str], Model] = {}  # version directories whose name is not a number
        self.policies: dict[str, VersionPolicy] = {}       # the last policy read for each model
        self.config_errors: dict[str, str] = {}            # a model's config.pbtxt that does not parse
        self.triton_names: dict[str, tuple[str, str]] = {}  # v2 name -> (model, graph), of READY versions
        self.generation = 0                                 # bumped whenever what calls can reach changes

    # --- what is on disk

    def names_on_disk(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def on_disk(self, name: str) -> dict[int, Path]:
        """The version directories of ``name``; a directory whose name is not a number is recorded FAILED."""
        found = {}
        model_dir = self.root / name
        entries = sorted(model_dir.iterdir()) if model_dir.is_dir() else []
        bad_now = set()
        for p in entries:
            if not p.is_dir() or p.name.startswith("."):
                continue
            if p.name.isdigit():
                found[int(p.name)] = p
                continue
            bad_now.add((name, p.name))
            if (name, p.name) not in self.bad_dirs:
                reason = f"version directory {p.name!r} is not a number"
                log.error("not serving %s/%s: %s", name, p.name, reason)
                self.bad_dirs[(name, p.name)] = Model(name, 0, p, state=FAILED, error=reason, directory=p.name)
        for key in [k for k in self.bad_dirs if k[0] == name and k not in bad_now]:
            del self.bad_dirs[key]  # removed or renamed
        return found

    def policy(self, name: str) -> VersionPolicy:
        """The model's version policy: the server's override, else its config.pbtxt (the last one that parsed)."""
        if self.override is not None:
            return self.override
        try:
            self.policies[name] = from_config(read_model_config(self.root / name))
            if self.config_errors.pop(name, None):
                log.info("%s/config.pbtxt parses again", name)
        except ValueError as e:
            if self.config_errors.get(name) != str(e):
                log.error("%s (keeping policy %s)", e, self.policies.get(name, VersionPolicy()))
            self.config_errors[name] = str(e)
        return self.policies.get(name, VersionPolicy())

    def plan(self, name: str) -> tuple[dict[int, Path], dict[int, Path], VersionPolicy]:
        """(wanted, on_disk, policy): the versions the policy serves out of those on disk not known to fail."""
        disk = self.on_disk(name)
        known = self.models.get(name, {})
        candidates = [v for v, p in disk.items()
                      if not (v in known and known[v].state == FAILED and known[v].signature == signature(p))]
        policy = self.policy(name)
        return {v: disk[v] for v in sorted(policy.select(candidates))}, disk, policy

    # --- state

    def put(self, model: Model) -> None:
        self.models.setdefault(model.name, {})[model.version] = model
        self.changed()

    def forget(self, name: str, version: int) -> None:
        self.models.get(name, {}).pop(version, None)
        if name in self.models and not self.models[name]:
            del self.models[name]
        self.changed()

    def changed(self) -> None:
        """Rebuild the v2 names from the newest READY versions; cached lookups (v2.py) see the generation move."""
        self.triton_names = {g.triton_name: (m.name, g.name) for m in self.latest_all() for g in m.graphs.values()}
        self.generation += 1

    def all(self) -> list[Model]:
        return [m for versions in self.models.values() for m in versions.values()] + list(self.bad_dirs.values())

    def ready_versions(self, name: str) -> list[int]:
        return sorted(v for v, m in self.models.get(name, {}).items() if m.state == READY)

    def latest_all(self) -> list[Model]:
        return [self.models[n][vs[-1]] for n in self.models if (vs := self.ready_versions(n))]

    def get(self, name: str, version: int = 0) -> Model:
        """The READY model (the newest READY version for 0); NotFound / FailedPrecondition saying why not."""
        versions = self.models.get(name)
        if not versions:
            raise NotFound(f"unknown model {name!r}; models: {', '.join(sorted(self.models))}")
        ready = self.ready_versions(name)
        v = version or (ready[-1] if ready else max(versions))
        if v not in versions:
            raise NotFound(f"model {name!r} has no version {v}; versions: {', '.join(map(str, sorted(versions)))}")
        m = versions[v]
        if m.state != READY:
            why = f": {m.error}" if m.error else ""
            raise FailedPrecondition(f"model {name!r} version {v} is not served ({m.state}{why})")
        return m

    def unavailable(self, name: str, version: int, path: Path, reason: str) -> None:
        """Record a version that is on disk but not loaded (outside the policy, or unloaded); a FAILED one stays."""
        current = self.models.get(name, {}).get(version)
        if current is None or (current.state == UNAVAILABLE and current.error != reason):
            self.put(Model(name, version, path, state=UNAVAILABLE, error=reason, directory=path.name))
