"""``analyze report``: every analysis for one or more models in one self-contained HTML page.

    analyze report --out reports/demo                 # every ready model on the server
    analyze report --model lenet --model cvae
    analyze report --study runs/weight-decay          # a study's compare figures and table, no server

Images are embedded as base64 PNG, so the page reads offline and can be mailed as one file. The page
is the Jinja2 template analysis/templates/report.html (autoescaped); this module gathers what it shows.
"""
from __future__ import annotations

import base64
import time
from pathlib import Path

import jinja2

from glassbox.io import atomic_write

from . import accuracy, compare, embeddings, explain, gradcam, vae
from .common import dataset, manifest

EXPLAIN_IMAGES = 100  # test images of the report's faithfulness table (analyze explain takes more)


def analyse_model(client, name: str, split: str, data_dir, out: Path, per_class: int, progress: bool,
                  jobs: int | None = None, dataset_name: str | None = None) -> dict:
    man = manifest(client, name)
    ds = dataset(man, dataset_name, split, data_dir)
    d = out / name
    sections = {"manifest": man}
    # The layer shown large (with thumbnails): the last before the logits, or a VAE's latent mean.
    focus = embeddings.model_layers(man)[-2 if man["task"] == "classifier" else -1]
    if man["task"] == "classifier":
        sections["accuracy"] = accuracy.run(client, man, ds, d, progress=progress)
    else:
        sections["vae"] = vae.run(client, man, ds, d, progress=progress)
    sections["embeddings"] = embeddings.run(client, man, ds, ["all"], per_class, d, thumbnails=[focus],
                                            progress=progress, jobs=jobs)
    sections["embeddings"]["focus"] = focus
    if man["task"] == "classifier" and man["graphs"].get("gradcam"):
        sections["gradcam"] = gradcam.run(client, man, ds, "predicted", 2, d, sensitivity="0", progress=progress)
    if man["task"] == "classifier" and len(explain.carried(man)) > 1:  # the methods side by side, and their checks
        sections["explain"] = explain.run(client, man, ds, d, images=EXPLAIN_IMAGES)
    return sections


def analyse_study(runs_dir, out: Path) -> dict:
    """``analyze compare`` of a study folder, drawn into out/studies/<folder name>/ (files only, no server)."""
    return compare.run(runs_dir, out / "studies" / Path(runs_dir).resolve().name)


# Autoescape: names, labels and captions come from manifests and study files, so the page escapes
# every one of them; StrictUndefined makes a misspelt field an error instead of an empty cell.
_ENV = jinja2.Environment(loader=jinja2.PackageLoader("analysis", "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined)
_ENV.filters["fmt"] = format
_ENV.globals["png"] = lambda path: base64.b64encode(path.read_bytes()).decode() if path.is_file() else ""

_CAPTIONS = {"compare_curves.png": "Curves of every variant", "first_layer_weights.png": "First-layer weights"}


def _model_view(name: str, sections: dict, out: Path) -> dict:
    man = sections["manifest"]
    metrics = man.get("source", {}).get("metrics", {})
    training = {k: v for k, v in metrics.items() if k.startswith(("test_", "best_", "epochs"))}
    return {"name": name, "manifest": man, "dir": out / name, "sections": sections, "training": training}


def _study_view(r: dict) -> dict:
    head, rows = compare.table_cells(r)
    return {"study": r["study"], "anchor": f"study-{r['study']['name']}", "head": head, "rows": rows,
            "metric": r["metric"], "note": compare.TEST_NOTE, "dir": Path(r["out"]), "figures": r["figures"],
            "captions": _CAPTIONS}


def render(results: dict[str, dict], out: Path, server: str, studies: list[dict] | None = None) -> Path:
    page = _ENV.get_template("report.html").render(
        models=[_model_view(n, s, out) for n, s in results.items()],
        studies=[_study_view(r) for r in studies or []],
        server=server, when=time.strftime("%Y-%m-%d %H:%M"))
    return atomic_write(out / "report.html", lambda tmp: Path(tmp).write_text(page))
