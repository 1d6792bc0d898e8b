"""Checkpoint -> a parity-checked version in the model repository.

    from training.export import export_checkpoint
    res = export_checkpoint("runs/quick/lenet/best.pt", "exported")   # exported/lenet/<version>/
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from glassbox.data import DatasetNotFound, load_dataset, preprocess, random_subset
from glassbox.io import sha256

from ..checkpoint import model_from_checkpoint
from ..options import DEFAULTS
from . import parity
from .explain import noise_std
from .explain_export import RANDOMIZED_IMAGES, check_methods, export_explanations, randomized_copy
from .gradcam import build_gradcam_graph, reference_gradcam
from .graphs import OPSET, ClassifierGraph, DecoderGraph, EncoderGraph, export_onnx, output_shapes
from .pbtxt import write_triton_configs
from .repository import publish, staging

MAX_BATCH_SIZE = 256


@dataclass
class ExportResult:
    name: str
    version: int
    path: Path
    manifest: dict
    seconds: float


def default_name(config: dict) -> str:
    arch, dataset = config["model"]["name"], config["dataset"]["name"]
    return arch if dataset == "fashion-mnist" else f"{arch}-{dataset}"


def _t(name, shape, dtype="float32"):
    return {"name": name, "shape": list(shape), "dtype": dtype}


def load_parity_images(config: dict, n: int, data_dir=None) -> np.ndarray:
    """``n`` real test images (uint8, a fixed random subset) of the checkpoint's dataset."""
    ds = config["dataset"]
    if data_dir is not None:
        test = load_dataset(ds["name"], split="test", data_dir=data_dir)
    else:  # the directory the model was trained from, else the usual search (it may have moved)
        try:
            test = load_dataset(ds["name"], split="test", data_dir=ds.get("data_dir"))
        except DatasetNotFound:
            if ds.get("data_dir") is None:
                raise
            test = load_dataset(ds["name"], split="test")
    return random_subset(test, n, seed=0).images


def _labels(ds: dict, graphs: dict) -> list[str]:
    """Class names from the config; their indices as names when the config has none."""
    k = graphs["classifier"]["outputs"][0]["shape"][1]
    classes = list(ds.get("classes") or [])
    if len(classes) != k:
        if classes:
            raise ValueError(f"config lists {len(classes)} classes but the model has {k} logits")
        classes = [str(i) for i in range(k)]
    return classes


def _check_onnx(path: Path) -> None:
    onnx.checker.check_model(str(path), full_check=True)


def _export_classifier(model, tmp: Path, x: np.ndarray, name: str, record: dict, batch_sizes) -> dict:
    xt = torch.from_numpy(x)
    shapes = output_shapes(model, xt[:2])
    outs = ["logits", "probabilities", *model.layers]
    export_onnx(ClassifierGraph(model), (xt[:2],), tmp / "classifier.onnx", ["input"], outs)
    _check_onnx(tmp / "classifier.onnx")
    with torch.no_grad():
        logits, feats = model.forward_intermediates(xt)
    ref = {"logits": logits.numpy(), "probabilities": torch.softmax(logits, 1).numpy(),
           **{k: v.numpy() for k, v in feats.items()}}
    record["classifier"] = parity.check("classifier", tmp / "classifier.onnx", {"input": x}, ref, "logits", batch_sizes)
    graphs = {"classifier": {"file": "classifier.onnx", "triton_name": name,
                             "inputs": [_t("input", [-1, *x.shape[1:]])],
                             "outputs": [_t(o, shapes[o]) for o in outs]}}
    if model.cam_layer is not None:
        export_onnx(build_gradcam_graph(model, xt[:2]), (xt[:2], torch.zeros(2, dtype=torch.int64)),
                    tmp / "gradcam.onnx", ["input", "target"], ["cam", "logits"])
        _check_onnx(tmp / "gradcam.onnx")
        # Half the images get their predicted class, half another class: both paths are checked.
        target = logits.argmax(1)
        target[1::2] = (target[1::2] + 1) % logits.shape[1]
        cam, cam_logits = reference_gradcam(model, xt, target)
        record["gradcam"] = parity.check("gradcam", tmp / "gradcam.onnx", {"input": x, "target": target.numpy()},
                                         {"cam": cam.numpy(), "logits": cam_logits.numpy()}, "logits", batch_sizes)
        graphs["gradcam"] = {"file": "gradcam.onnx", "triton_name": f"{name}.gradcam",
                             "inputs": [_t("input", [-1, *x.shape[1:]]), _t("target", [-1], "int64")],
                             "outputs": [_t("cam", [-1, *x.shape[2:]]), _t("logits", shapes["logits"])]}
    return graphs


def _export_vae(model, tmp: Path, x: np.ndarray, name: str, record: dict, batch_sizes) -> dict:
    xt = torch.from_numpy(x)
    d = model.latent_dim
    export_onnx(EncoderGraph(model), (xt[:2],), tmp / "encoder.onnx", ["input"], ["mean", "logvar"])
    export_onnx(DecoderGraph(model), (torch.zeros(2, d),), tmp / "decoder.onnx", ["latent"], ["image"])
    for f in ("encoder.onnx", "decoder.onnx"):
        _check_onnx(tmp / f)
    with torch.no_grad():
        mean, logvar = model.encode(xt)
        image = model.decode(mean)
    record["encoder"] = parity.check("encoder", tmp / "encoder.onnx", {"input": x},
                                     {"mean": mean.numpy(), "logvar": logvar.numpy()}, None, batch_sizes)
    record["decoder"] = parity.check("decoder", tmp / "decoder.onnx", {"latent": mean.numpy()},
                                     {"image": image.numpy()}, None, batch_sizes)
    return {"encoder": {"file": "encoder.onnx", "triton_name": f"{name}.encoder",
                        "inputs": [_t("input", [-1, *x.shape[1:]])],
                        "outputs": [_t("mean", [-1, d]), _t("logvar", [-1, d])]},
            "decoder": {"file": "decoder.onnx", "triton_name": f"{name}.decoder",
                        "inputs": [_t("latent", [-1, d])], "outputs": [_t("image", [-1, *x.shape[1:]])]}}


def _classifier_entries(model, graphs: dict, ds: dict) -> dict:
    shapes = {t["name"]: t["shape"] for t in graphs["classifier"]["outputs"]}
    return {"labels": _labels(ds, graphs), "layers": [{"name": n, "shape": shapes[n]} for n in model.layers],
            "latent_dim": None}


def _vae_entries(model, graphs: dict, ds: dict) -> dict:
    return {"labels": [], "layers": [], "latent_dim": model.latent_dim}


# task -> (write and parity-check its graphs, its manifest entries); the graphs are the ones
# training.tasks.TASKS names for the task.
EXPORTERS = {"classifier": (_export_classifier, _classifier_entries), "vae": (_export_vae, _vae_entries)}


def _source(config: dict, checkpoint, metrics: dict | None) -> dict:
    return {"checkpoint": str(checkpoint) if checkpoint else None,
            "sha256": sha256(Path(checkpoint)) if checkpoint else None, "config": config, "metrics": metrics or {}}


def export_model(model: torch.nn.Module, config: dict, repository="exported", name: str | None = None, *,
                 checkpoint: str | Path | None = None, metrics: dict | None = None, history: list | None = None,
                 parity_images: int = 1000, images: np.ndarray | None = None, data_dir=None,
                 batch_sizes=parity.BATCH_SIZES, explain=None, randomized: bool | None = None,
                 randomized_of: dict | None = None) -> ExportResult:
    """Export ``model`` (eval) as a new version of ``name`` in ``repository``.

    The gate compares onnxruntime with torch on ``parity_images`` real test images of the config's
    dataset (or on ``images``, uint8 [N,H,W(,3)], when given) at each of ``batch_sizes``; if any
    output fails, ParityError is raised and nothing is written. ``checkpoint``, ``metrics`` and
    ``history`` go into the manifest's ``source`` and ``training``. ``explain``: the explanation
    methods a classifier carries (else the config's ``explain``, else Grad-CAM), each also gated
    against its reference library (explain_export.py). ``randomized`` (else the config's
    ``explain_randomized``): also publish ``<name>-randomized``, the same classifier with every layer
    re-initialised, for the model-randomisation check (its manifest's ``randomized_of`` names this one).
    """
    t0 = time.perf_counter()
    model = model.eval()
    name = name or default_name(config)
    ds = config["dataset"]
    spec = {"channels": ds["channels"], "size": ds["size"], "mean": ds["mean"], "std": ds["std"]}
    if images is None and parity_images < 1:
        raise ValueError(f"parity_images must be at least 1, got {parity_images}")
    raw = images if images is not None else load_parity_images(config, parity_images, data_dir)
    x = preprocess(raw, spec)
    record: dict = {}
    with staging(Path(repository), name) as tmp:
        build, entries = EXPORTERS[model.task]
        graphs = build(model, tmp, x, name, record, batch_sizes)
        section, rows = None, []
        if model.task == "classifier":
            methods = check_methods(explain if explain is not None else config.get("explain", DEFAULTS["explain"]),
                                    model.cam_layer)
            if methods:
                more, section, rows = export_explanations(model, tmp, x, name, methods, record, std=noise_std(spec))
                graphs.update(more)
        parity.gate(record, rows)  # every graph checked: one table of everything that failed
        write_triton_configs(tmp, graphs, MAX_BATCH_SIZE)
        manifest = {
            "format": 1, "name": name, "version": None, "task": model.task, "dataset": ds["name"],
            "model": {"arch": config["model"]["name"], "args": config["model"].get("args", {})},
            "input": _t("input", [-1, *x.shape[1:]]),
            "preprocessing": spec,
            **entries(model, graphs, ds),  # labels, layers, latent_dim
            "cam_layer": model.cam_layer,
            "opset": OPSET, "max_batch_size": MAX_BATCH_SIZE, "graphs": graphs,
            "source": _source(config, checkpoint, metrics), "training": {"history": history or []},
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
            "parity": record, "explain": section, "randomized_of": randomized_of,
        }
        version, path = publish(tmp, manifest)
    manifest = json.loads((path / "manifest.json").read_text())
    if randomized is None:
        randomized = config.get("explain_randomized", DEFAULTS["explain_randomized"])
    if section and randomized:
        export_model(randomized_copy(model), config, repository, f"{name}-randomized", images=raw[:RANDOMIZED_IMAGES],
                     batch_sizes=batch_sizes, explain=section["methods"], randomized=False,
                     randomized_of={"name": name, "version": version})
    return ExportResult(name, version, path, manifest, time.perf_counter() - t0)


def export_checkpoint(checkpoint_path, repository="exported", name: str | None = None, *,
                      parity_images: int = 1000, data_dir=None, **kwargs) -> ExportResult:
    """Export a ``best.pt`` (or any Glassbox checkpoint) into ``repository``."""
    model, ckpt = model_from_checkpoint(checkpoint_path)
    return export_model(model, ckpt["config"], repository, name, checkpoint=checkpoint_path,
                        metrics=ckpt.get("metrics"), history=ckpt.get("history"),
                        parity_images=parity_images, data_dir=data_dir, **kwargs)
