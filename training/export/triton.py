"""A Triton Inference Server model repository from a Glassbox one (torch-free: runs anywhere).

    export --layout triton --out triton_repo                 # from exported/ (--repository)
    tritonserver --model-repository triton_repo

    from training.export.triton import write_triton_repository
    written = write_triton_repository("exported", "triton_repo")

Every graph becomes one Triton model named by its manifest ``triton_name`` - the v2 names the
Glassbox server answers to (``lenet``, ``lenet.gradcam``, ``cvae.encoder``, ``cvae.decoder``):

    <out>/<triton_name>/config.pbtxt       name = the directory, onnxruntime_onnx, every version served
    <out>/<triton_name>/labels.txt         class names, for Triton's classification extension
    <out>/<triton_name>/<version>/model.onnx

A version is copied only when its manifest is valid and every file matches its sha256; one that is
not, or whose inputs/outputs differ from the newest version's (Triton keeps one config for all
versions), is skipped with a ``TritonLayoutWarning``. Each model directory is built beside ``out``
and renamed into place, so ``out`` never holds a half-written model; directories of ``out`` this
call does not write are left alone.
"""
from __future__ import annotations

import os
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from glassbox.io import sha256
from glassbox.manifest import MAX_QUEUE_DELAY_US, read_manifest, verify_files, versions

from .pbtxt import parse_triton_config, triton_config

MODEL_FILE = "model.onnx"  # Triton's default_model_filename for the onnxruntime backend
LABELS_FILE = "labels.txt"
LABELLED_OUTPUTS = ("logits", "probabilities")  # the classifier outputs whose classes labels.txt names


class TritonLayoutWarning(UserWarning):
    """A model or version left out of the Triton repository (the reason is the message)."""


@dataclass
class TritonModel:
    name: str                          # the Triton model name = its directory name
    source: str                        # the Glassbox model it comes from
    graph: str                         # classifier, gradcam, encoder, decoder
    versions: list[int] = field(default_factory=list)
    path: Path | None = None


def _signature(manifest: dict, graph: str):
    g = manifest["graphs"][graph]
    return manifest["max_batch_size"], g["triton_name"], g["inputs"], g["outputs"]


def model_config(manifest: dict, graph: str, *, labels: bool = False,
                 max_queue_delay_us: int = MAX_QUEUE_DELAY_US) -> str:
    """The model-level ``config.pbtxt`` of one graph: the version-level config export writes, with
    every version served (Triton's default policy serves only the newest) and, for a classifier
    with ``labels``, ``label_filename`` on its logits and probabilities."""
    g = manifest["graphs"][graph]
    config = parse_triton_config(triton_config(g["triton_name"], g, manifest["max_batch_size"], max_queue_delay_us))
    config.version_policy.all.SetInParent()
    if labels:
        for out in config.output:
            if out.name in LABELLED_OUTPUTS:
                out.label_filename = LABELS_FILE
    return text_format.MessageToString(config)


def _valid_versions(model_dir: Path) -> dict[int, dict]:
    """version -> manifest, for the versions that are intact; a warning for each one that is not."""
    good = {}
    for v in versions(model_dir):
        try:
            manifest = read_manifest(model_dir / str(v))
            if problems := verify_files(model_dir / str(v)):
                raise ValueError("; ".join(problems))
        except ValueError as e:
            warnings.warn(f"{model_dir.name}/{v}: skipped, not a valid export ({e})", TritonLayoutWarning,
                          stacklevel=3)
            continue
        good[v] = manifest
    return good


def plan(repository: str | os.PathLike, models: list[str] | None = None) -> list[tuple[TritonModel, dict]]:
    """What ``write_triton_repository`` would write: each Triton model with {version: manifest}."""
    root = Path(repository)
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} does not exist (run train-all or export first)")
    names = models or sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    out, taken = [], {}
    for name in names:
        if not (root / name).is_dir():
            raise FileNotFoundError(f"{root / name}: no such model in the repository")
        good = _valid_versions(root / name)
        if not good:
            if not versions(root / name):  # else each version has had its warning
                warnings.warn(f"{name}: skipped, no <version>/ directories", TritonLayoutWarning, stacklevel=2)
            continue
        newest = good[max(good)]
        for graph in newest["graphs"]:
            want = _signature(newest, graph)
            tm = TritonModel(want[1], name, graph)
            chosen = {}
            for v, m in sorted(good.items()):
                if graph not in m["graphs"]:
                    continue  # an older version exported without this graph
                if _signature(m, graph) != want:
                    warnings.warn(f"{name}/{v}: {graph} skipped, its inputs/outputs differ from version "
                                  f"{max(good)}'s (Triton keeps one config for all versions of {tm.name})",
                                  TritonLayoutWarning, stacklevel=2)
                    continue
                chosen[v] = m
            if tm.name in taken:
                warnings.warn(f"{name}: {graph} skipped, Triton name {tm.name!r} is already {taken[tm.name]}'s",
                              TritonLayoutWarning, stacklevel=2)
                continue
            taken[tm.name] = name
            tm.versions = sorted(chosen)
            out.append((tm, chosen))
    return out


def _labels(manifest: dict, graph: str) -> list[str] | None:
    labels = manifest.get("labels") or []
    outputs = {o["name"] for o in manifest["graphs"][graph]["outputs"]}
    if graph != "classifier" or not labels or not set(LABELLED_OUTPUTS) <= outputs:
        return None
    if any("\n" in lab or "\r" in lab for lab in labels):
        return None  # one label per line: a multi-line label cannot be written
    return labels


def _build(tm: TritonModel, chosen: dict[int, dict], source: Path, dest: Path) -> None:
    newest = chosen[max(chosen)]
    labels = _labels(newest, tm.graph)
    dest.mkdir()
    (dest / "config.pbtxt").write_text(model_config(newest, tm.graph, labels=labels is not None))
    if labels is not None:
        (dest / LABELS_FILE).write_text("".join(f"{lab}\n" for lab in labels))
    for v, m in chosen.items():
        g = m["graphs"][tm.graph]
        (dest / str(v)).mkdir()
        target = dest / str(v) / MODEL_FILE
        shutil.copyfile(source / str(v) / g["file"], target)
        if sha256(target) != m["files"][g["file"]]:  # changed while we copied
            raise ValueError(f"{source / str(v) / g['file']}: sha256 changed while copying")


def write_triton_repository(repository: str | os.PathLike, out: str | os.PathLike,
                            models: list[str] | None = None) -> list[TritonModel]:
    """Write the Triton layout of ``repository`` (all models, or ``models``) into ``out``; returns
    what was written. Models already in ``out`` under the same names are replaced whole."""
    source = Path(repository)
    todo = plan(source, models)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Staged beside ``out``, not in it: Triton (with --model-control-mode=poll) would try to load
    # any directory inside the repository, hidden or not.
    stage = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    written = []
    try:
        for tm, chosen in todo:
            _build(tm, chosen, source / tm.source, stage / tm.name)
        for tm, _ in todo:  # everything built: now the renames, two per replaced model
            final = out / tm.name
            if final.exists():
                os.rename(final, stage / f"{tm.name}.old")
            os.rename(stage / tm.name, final)
            tm.path = final
            written.append(tm)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return written
