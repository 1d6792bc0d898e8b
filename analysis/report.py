"""``analyze report``: every analysis for one or more models in one self-contained HTML page.

    analyze report --out reports/demo                 # every ready model on the server
    analyze report --model lenet --model cvae
    analyze report --study runs/weight-decay          # a study's compare figures and table, no server

Images are embedded as base64 PNG, so the page reads offline and can be mailed as one file.
"""
from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from glassbox.io import atomic_write

from . import accuracy, compare, embeddings, gradcam, vae
from .common import dataset, manifest


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
    return sections


def analyse_study(runs_dir, out: Path) -> dict:
    """``analyze compare`` of a study folder, drawn into out/studies/<folder name>/ (files only, no server)."""
    return compare.run(runs_dir, out / "studies" / Path(runs_dir).resolve().name)


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{html.escape(alt)}</figcaption></figure>')


def _table(head: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>"
                   + "".join(f"<td>{html.escape(c if isinstance(c, str) else f'{c:.4g}')}</td>" for c in r)
                   + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _study_anchor(r: dict) -> str:
    return html.escape(f"study-{r['study']['name']}")


def _study_section(r: dict) -> str:
    """A study's results table and compare figures (see ``analyze compare``)."""
    s, d = r["study"], Path(r["out"])
    head, rows = compare.table_cells(r)
    report = f" · report {html.escape(str(s['report']))}" if s.get("report") else ""
    parts = [f'<section id="{_study_anchor(r)}"><h2>{html.escape(s["title"] or s["name"])} '
             f'<small>study · {len(rows)} variants{report}</small></h2>']
    parts += [f"<p>{html.escape(str(s[k]))}</p>" for k in ("reported", "notes") if s.get(k)]
    parts.append(_table(head, rows))
    parts.append(f"<p><small>Test {r['metric']}: {html.escape(compare.TEST_NOTE)}.</small></p>")
    captions = {"compare_curves.png": "Curves of every variant", "first_layer_weights.png": "First-layer weights"}
    parts += [_img(d / f, captions.get(f, f)) for f in r["figures"]]
    return "".join(parts) + "</section>"


def _faces(v: dict, d: Path) -> str:
    """A faces VAE's named interpolations and attribute direction (the run's [analysis] table or the
    analyze vae options; see analysis/faces.py)."""
    pairs = "; ".join(f"{a} to {b}" for a, b in v.get("pair_labels", []))
    parts = ["<h3>Faces</h3>", _img(d / "vae_interpolations.png", f"Interpolations: {pairs} (alpha "
                                    f"{', '.join(f'{a:g}' for a in v['alphas'])})")]
    if r := v.get("direction"):
        parts.append(f"<p>Direction: the mean latent of {len(r['a'])} people ({r['images_a']} images: "
                     f"{html.escape(', '.join(r['a']))}) minus that of {len(r['b'])} people ({r['images_b']} "
                     f"images: {html.escape(', '.join(r['b']))}); norm {r['norm']:.3f}.</p>")
        parts.append(_img(d / "vae_direction.png", "Each face plus s times the direction, s = "
                          + ", ".join(f"{s:+g}" for s in r["strengths"])))
    return "".join(parts)


def render(results: dict[str, dict], out: Path, server: str, studies: list[dict] | None = None) -> Path:
    parts = []
    for name, s in results.items():
        man, d = s["manifest"], out / name
        src = man.get("source", {}).get("metrics", {})
        parts.append(f'<section id="{html.escape(name)}"><h2>{html.escape(name)} '
                     f'<small>v{man["version"]} · {html.escape(man["task"])} · {html.escape(man["dataset"])} · '
                     f'{html.escape(man.get("provider", ""))}</small></h2>')
        if src:
            parts.append("<p>Training: "
                         + ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                                     for k, v in src.items() if k.startswith(("test_", "best_", "epochs")))
                         + "</p>")
        if "accuracy" in s:
            a = s["accuracy"]
            parts.append(f"<h3>Accuracy: {a['accuracy']:.2%} on {a['images']} {html.escape(a['dataset'])} "
                         f"images</h3>")
            parts.append(_table(["class", "precision", "recall", "F1", "support"],
                                [[c["class"], c["precision"], c["recall"], c["f1"], str(c["support"])]
                                 for c in a["per_class"]]))
            parts += [_img(d / "confusion.png", "Confusion matrix"),
                      _img(d / "mistakes.png", "Most confident mistakes"),
                      _img(d / "curves.png", "Training curves")]
        if "vae" in s:
            v = s["vae"]
            parts.append(f"<h3>VAE on {v['n']} images: MSE {v['mse']:.4f}, PSNR {v['psnr']:.2f} dB, "
                         f"BCE {v['bce']:.1f}, KL {v['kl']:.1f}, ELBO {v['elbo']:.1f} (nats per image)</h3>")
            parts += [_img(d / "vae_reconstructions.png", "Reconstructions")]
            parts.append(_faces(v, d) if v.get("pair_names") or v.get("direction") else
                         _img(d / "vae_interpolations.png", "Interpolations"))
            parts.append(_img(d / "vae_samples.png", "Samples from the prior"))
        if "embeddings" in s:
            e = s["embeddings"]
            parts.append(f"<h3>Embeddings ({e['images']} images, {e['per_class']} per class)</h3>")
            parts.append(_table(["layer", "dims", "k-NN acc (layer)", "k-NN acc (t-SNE)", "trustworthiness",
                                 "silhouette"],
                                [[k, str(v["dims"]), v["knn_acc_layer"], v["knn_acc_2d"], v["trustworthiness"],
                                  v["silhouette_layer"]]
                                 for k, v in e["layers"].items()]))
            parts.append(_img(d / "embeddings_layers.png", "t-SNE of every layer, input to output"))
            last = e.get("focus") or list(e["layers"])[-1]
            parts += [_img(d / f"embeddings_{last}.png", f"PCA and t-SNE of '{last}'"),
                      _img(d / f"embeddings_{last}_thumbnails.png", f"t-SNE of '{last}' with the images")]
        if "gradcam" in s:
            parts.append(f"<h3>Grad-CAM at '{html.escape(man['cam_layer'])}'</h3>")
            parts += [_img(d / "gradcam_predicted.png", "Grad-CAM of the predicted class"),
                      _img(d / "gradcam_sensitivity_0.png", f"Where each class looks like '{man['labels'][0]}'")]
        parts.append("</section>")
    parts += [_study_section(r) for r in studies or []]
    nav = " · ".join([f'<a href="#{html.escape(n)}">{html.escape(n)}</a>' for n in results]
                     + [f'<a href="#{_study_anchor(r)}">{html.escape(r["study"]["name"])}</a>' for r in studies or []])
    source = f"Server {html.escape(server)}, " if results else ""
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Glassbox report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}}
h2{{border-bottom:2px solid #ddd;padding-bottom:.2em}} small{{color:#777;font-weight:normal}}
table{{border-collapse:collapse;margin:.5em 0}} td,th{{border:1px solid #ddd;padding:.2em .6em;text-align:right}}
td:first-child,th:first-child{{text-align:left}} figure{{margin:1em 0}} img{{max-width:100%}}
figcaption{{color:#555;font-size:.9em}}</style></head><body>
<h1>Glassbox report</h1><p>{source}{time.strftime('%Y-%m-%d %H:%M')}. Contents: {nav}</p>
{''.join(parts)}</body></html>"""
    return atomic_write(out / "report.html", lambda tmp: Path(tmp).write_text(page))
