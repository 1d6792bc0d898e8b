"""What analyze writes (analysis/report.py, analysis/common.py): plain JSON written atomically, and the HTML
page, self-contained and escaping every name from a manifest or study.

    .venv/bin/pytest -x -q tests/analysis/test_report.py
"""
import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from analysis import plots, report
from analysis.common import write_json


def chromium_decoded(page_path):
    """(decoded, total) <img>s of a page per headless Chromium: a script in a copy sets the title."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("headless Chromium is needed for this check: apt-get install chromium")
    probe = page_path.with_name("probe.html")
    probe.write_text(page_path.read_text().replace("</body>", """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.title = 'decoded=' + imgs.filter(i => i.complete && i.naturalWidth > 0).length + '/' + imgs.length;
});</script></body>"""))
    out = subprocess.run([chromium, "--headless", "--disable-gpu", "--no-sandbox", "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r"<title>decoded=(\d+)/(\d+)</title>", out.stdout)
    assert m, out.stderr[-2000:]
    return int(m.group(1)), int(m.group(2))


def test_write_json_is_atomic_and_plain(tmp_path):
    p = write_json(tmp_path / "sub" / "a.json", {"x": np.float32(1.5), "n": np.int64(3), "a": [1, 2]})
    assert json.loads(p.read_text()) == {"x": 1.5, "n": 3, "a": [1, 2]}
    assert [f.name for f in p.parent.iterdir()] == ["a.json"]  # no temporary file left behind


def test_report_page_is_self_contained_and_decodes(tmp_path):
    classes = ["a", "b"]
    d = tmp_path / "m"
    xy = np.random.default_rng(0).standard_normal((20, 2))
    y = np.arange(20) % 2
    plots.save(plots.confusion_figure(np.array([[9, 1], [2, 8]]), classes), d / "confusion.png")
    plots.save(plots.embedding_figure("fc1", xy, xy, y, classes), d / "embeddings_fc1.png")
    (d / "mistakes.png").write_bytes(b"not a png")  # a corrupt figure must show up as not decoded
    acc = {"accuracy": 0.85, "images": 20, "dataset": "toy",
           "per_class": [{"class": c, "precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10} for c in classes]}
    man = {"name": "m", "version": 1, "task": "classifier", "dataset": "toy", "labels": classes, "cam_layer": None}
    page = report.render({"m": {"manifest": man, "accuracy": acc}}, tmp_path, "127.0.0.1:1")
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "no external resources"
    srcs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(srcs) == html.count("<img") == 2  # the missing curves.png is left out
    assert base64.b64decode(srcs[0])[:4] == b"\x89PNG"
    assert chromium_decoded(page) == (1, 2)    # the corrupt one is caught by the browser check
    (d / "mistakes.png").unlink()
    plots.save(plots.image_grid(np.zeros((2, 1, 8, 8))), d / "mistakes.png")
    page = report.render({"m": {"manifest": man, "accuracy": acc}}, tmp_path, "127.0.0.1:1")
    assert chromium_decoded(page) == (2, 2)


def test_report_escapes_every_name_from_a_manifest_or_study(tmp_path):
    """Names, labels and captions come from files the report does not control: the page must show them
    as text, never as markup (the template is autoescaped)."""
    evil = '<script>alert("x")</script>'
    man = {"name": "m", "version": 1, "task": "classifier", "dataset": evil, "labels": [evil], "cam_layer": evil,
           "provider": evil, "source": {"metrics": {"test_acc": 0.5}}}
    acc = {"accuracy": 0.5, "images": 2, "dataset": evil,
           "per_class": [{"class": evil, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}]}
    study = {"study": {"name": evil, "title": evil, "report": evil, "notes": evil}, "out": str(tmp_path / "s"),
             "metric": "acc", "figures": [], "columns": [("variant", evil)], "rows": [{"variant": evil}]}
    page = report.render({"m": {"manifest": man, "accuracy": acc, "gradcam": {}}}, tmp_path, evil,
                         studies=[study]).read_text()
    assert "<script>" not in page
    shown = page.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;")
    assert shown >= 9, page  # server, dataset x2, provider, class, cam layer, study name x2, title, report, ...
    assert "<td>0.5</td>" in page and "Training: test_acc = 0.5" in page
