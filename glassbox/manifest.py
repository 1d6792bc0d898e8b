"""The ``exported/`` manifest contract: its schema, its validation, and file integrity.

Export validates a manifest before publishing a version; the server validates every manifest it
loads with the same function and checks every file's sha256 with ``verify_files``. Which fields must
be there, and of what type, is a set of pydantic models (``Manifest`` and its sections); how the
fields must agree with each other (graphs and task, tensors and layers, files) is checked below them.

    from glassbox.manifest import validate_manifest, verify_files, versions
    problems = validate_manifest(json.loads(Path("exported/lenet/1/manifest.json").read_text()))
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from .io import sha256

# The dynamic-batching queue delay: the server's default (serve --max-delay-us) and what export
# writes into each Triton config.pbtxt, so both describe the same batching.
MAX_QUEUE_DELAY_US = 1000


def versions(model_dir: str | os.PathLike) -> list[int]:
    """The published version numbers of a model directory, ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def read_manifest(version_dir: str | os.PathLike) -> dict:
    """The manifest of a published version; ValueError with every problem when it is not valid."""
    path = Path(version_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: not a JSON object")
    if problems := validate_manifest(manifest):
        raise ValueError(f"{path}: invalid manifest: {'; '.join(problems)}")
    return manifest


def verify_files(version_dir: str | os.PathLike) -> list[str]:
    """Problems with a published version (empty when intact): an unreadable manifest, missing or
    unlisted files, sha256 mismatches."""
    d = Path(version_dir)
    try:
        manifest = json.loads((d / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        return [f"{d / 'manifest.json'}: unreadable ({e})"]
    problems = [f"{d / p.name}: not listed in the manifest's files" for p in sorted(d.iterdir())
                if p.name != "manifest.json" and p.name not in manifest.get("files", {})]
    for name, digest in manifest.get("files", {}).items():
        f = d / name
        if not f.is_file():
            problems.append(f"{f}: missing")
        elif sha256(f) != digest:
            problems.append(f"{f}: sha256 mismatch (file changed or corrupted since export)")
    return problems


class _Fields(BaseModel):
    """A part of the manifest schema: which fields must be there and of what type. The manifest stays
    a dict for its readers; these models only check it."""
    # strict: "1" is not the version 1 nor 2.0 the opset 2; extra fields are allowed (the readers ignore them).
    model_config = ConfigDict(strict=True, extra="allow")


class Manifest(_Fields):
    format: int
    name: str
    version: int
    task: str
    dataset: str
    model: dict
    input: dict
    preprocessing: dict
    labels: list
    layers: list
    cam_layer: str | None
    latent_dim: int | None
    opset: int
    max_batch_size: int
    graphs: dict
    files: dict
    source: dict
    training: dict
    versions: dict
    parity: dict


class ModelSpec(_Fields):
    arch: Any
    args: Any


class Preprocessing(_Fields):
    channels: Any
    size: Any
    mean: Any
    std: Any


class Source(_Fields):
    checkpoint: Any
    sha256: Any
    config: Any
    metrics: Any


class Training(_Fields):
    history: Any


class Versions(_Fields):
    torch: Any
    onnx: Any
    onnxruntime: Any


GRAPH_IO = {  # graph -> (input names, required output names)
    "classifier": (["input"], ["logits", "probabilities"]),
    "gradcam": (["input", "target"], ["cam", "logits"]),
    "encoder": (["input"], ["mean", "logvar"]),
    "decoder": (["latent"], ["image"]),
    # the explanation graphs a classifier may carry (training/export/explain.py); gradcampp needs cam_layer
    "gradcampp": (["input", "target"], ["map", "logits"]),
    "saliency": (["input", "target"], ["map", "logits"]),
    "ig": (["input", "target"], ["map", "logits"]),
    "smoothgrad": (["input", "target", "noise"], ["map", "logits"]),
}
EXPLAIN_GRAPHS = ("gradcampp", "saliency", "ig", "smoothgrad")


def _want(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(get_args(annotation))


def _fields(schema: type[_Fields], data: dict, prefix: str = "") -> list[str]:
    """Missing fields, then mistyped ones, each in the schema's order, one line each."""
    try:
        schema.model_validate(data)
        return []
    except ValidationError as e:
        wrong = {err["loc"][0]: err["type"] for err in e.errors()}
    fields = [k for k in schema.model_fields if k in wrong]
    return ([f"{prefix}{k}: missing" for k in fields if wrong[k] == "missing"]
            + [f"{prefix}{k}: {type(data[k]).__name__}, want {_want(schema.model_fields[k].annotation)}"
               for k in fields if wrong[k] != "missing"])


def _graph(gname: str, g: dict, m: dict) -> list[str]:
    """Problems with one graph of a manifest: its tensors' names, shapes and dtypes, and its files."""
    problems = []
    ins, outs = GRAPH_IO[gname]
    got_in = [t.get("name") for t in g.get("inputs", [])]
    got_out = [t.get("name") for t in g.get("outputs", [])]
    if got_in != ins:
        problems.append(f"graphs.{gname}.inputs: {got_in}, want {ins}")
    if got_out[:len(outs)] != outs:
        problems.append(f"graphs.{gname}.outputs: {got_out}, want {outs} first")
    if gname == "classifier" and got_out[2:] != [layer.get("name") for layer in m["layers"]]:
        problems.append(f"graphs.classifier.outputs: layers {got_out[2:]} differ from manifest layers")
    for t in g.get("inputs", []) + g.get("outputs", []):
        if not t.get("shape") or t["shape"][0] != -1 or t.get("dtype") not in ("float32", "int64"):
            problems.append(f"graphs.{gname}: tensor {t} needs a dynamic batch axis and a dtype")
    if "triton_name" not in g:
        problems.append(f"graphs.{gname}.triton_name: missing")
    for f in (g.get("file"), f"{gname}.config.pbtxt"):
        if f not in m["files"]:
            problems.append(f"files: {f} of graph {gname} has no sha256")
    return problems


def validate_manifest(m: dict) -> list[str]:
    """Problems with a manifest against docs/architecture.md §4 (empty when it is valid)."""
    if problems := _fields(Manifest, m):
        return problems
    task = m["task"]
    want_graphs = {"classifier": {"classifier", "gradcam"} if m["cam_layer"] else {"classifier"},
                   "vae": {"encoder", "decoder"}}.get(task)
    if want_graphs is None:
        return [f"task: {task!r}, want classifier or vae"]
    if task == "classifier":  # the optional explanation graphs
        want_graphs |= set(m["graphs"]) & set(EXPLAIN_GRAPHS[int(not m["cam_layer"]):])
    if set(m["graphs"]) != want_graphs:
        problems.append(f"graphs: {sorted(m['graphs'])}, want {sorted(want_graphs)}")
    if set(m["parity"]) != set(m["graphs"]):
        problems.append(f"parity: records for {sorted(m['parity'])}, graphs are {sorted(m['graphs'])}")
    problems += _fields(ModelSpec, m["model"], "model.") + _fields(Preprocessing, m["preprocessing"], "preprocessing.")
    if m["input"].get("name") != "input" or (m["input"].get("shape") or [None])[0] != -1:
        problems.append(f"input: {m['input']}, want name 'input' with a dynamic batch axis (-1)")
    problems += (_fields(Source, m["source"], "source.") + _fields(Training, m["training"], "training.")
                 + _fields(Versions, m["versions"], "versions."))
    if m["opset"] < 18:
        problems.append(f"opset: {m['opset']} < 18")
    if task == "classifier":
        if not m["labels"]:
            problems.append("labels: empty for a classifier")
        if m["cam_layer"] is not None and m["cam_layer"] not in [layer.get("name") for layer in m["layers"]]:
            problems.append(f"cam_layer: {m['cam_layer']!r} is not a layer")
    elif m["labels"] or m["layers"] or m["cam_layer"] is not None or not m["latent_dim"]:
        problems.append("vae: labels and layers must be empty, cam_layer null, latent_dim set")
    for gname, g in m["graphs"].items():
        if gname in GRAPH_IO:
            problems += _graph(gname, g, m)
    return problems
