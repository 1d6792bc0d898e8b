"""Version policies: which versions of a model are served (Triton's ``version_policy``).

A model's policy comes from ``exported/<model>/config.pbtxt`` (export writes it; edit it to change the policy),
unless ``serve --version-policy`` overrides it for every model:

    latest:N       the N newest versions that load (default latest:2: the newest serves "latest", the one before
                   stays loaded for clients pinned to it during a rollout and for an instant rollback; memory is
                   bounded whatever the number of versions exported)
    all            every version
    specific:1,3   these versions only

Versions outside the policy are listed as UNAVAILABLE and not loaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .configs import parse_config
from .errors import BadOption

DEFAULT_LATEST = 2


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "latest"           # latest, all, specific
    latest: int = DEFAULT_LATEST   # for latest
    versions: tuple[int, ...] = ()  # for specific

    def select(self, candidates: list[int]) -> set[int]:
        """The versions to serve out of ``candidates`` (those on disk that have not failed), newest first."""
        if self.kind == "all":
            return set(candidates)
        if self.kind == "specific":
            return set(candidates) & set(self.versions)
        return set(sorted(candidates)[-self.latest:])

    def __str__(self) -> str:
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all" if self.kind == "all" else f"latest:{self.latest}"


def parse_policy(text: str) -> VersionPolicy:
    """``latest:N`` / ``all`` / ``specific:V,V`` (the ``--version-policy`` flag); BadOption otherwise."""
    kind, _, arg = text.strip().partition(":")
    try:
        if kind == "all" and not arg:
            return VersionPolicy("all")
        if kind == "latest" and int(arg) >= 1:
            return VersionPolicy("latest", int(arg))
        if kind == "specific" and arg:
            return VersionPolicy("specific", versions=tuple(sorted({int(v) for v in arg.split(",")})))
    except ValueError:
        pass
    raise BadOption(f"--version-policy {text!r}: expected latest:N (N >= 1), all, or specific:V[,V...]")


def from_config(config) -> VersionPolicy:
    p = config.version_policy
    choice = p.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        return VersionPolicy("specific", versions=tuple(sorted(p.specific.versions)))
    if choice == "latest" and p.latest.num_versions >= 1:
        return VersionPolicy("latest", p.latest.num_versions)
    return VersionPolicy()


def read_model_config(model_dir: Path):
    """``<model>/config.pbtxt`` parsed (an empty config where there is none); ValueError if it does not parse."""
    return parse_config(model_dir / "config.pbtxt")
