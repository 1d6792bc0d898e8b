"""The analysis figures (analysis/plots.py) on synthetic arrays: every figure draws, layouts and legends.

    .venv/bin/pytest -x -q tests/analysis/test_plots.py
"""

import numpy as np

from analysis import metrics, plots


def png_ok(path, min_bytes=5_000):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes, path
    return True


def test_every_figure_draws(tmp_path):
    rng = np.random.default_rng(0)
    classes = [f"class {i}" for i in range(10)]
    y = np.arange(60) % 10
    xy = rng.standard_normal((60, 2))
    sep = metrics.separation(xy, xy, y)
    fig = plots.embedding_figure("fc1", xy, xy, y, classes, sep, "m", [0.3, 0.2])
    assert png_ok(plots.save(fig, tmp_path / "e.png"))
    assert png_ok(plots.save(plots.layers_grid([("input", xy), ("fc1", xy), ("fc2", xy), ("logits", xy)], y, classes,
                                               {"fc1": sep}, "m"), tmp_path / "g.png"))
    gray = rng.random((60, 1, 28, 28)).astype(np.float32)
    rgb = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)   # uint8 HWC works too
    assert png_ok(plots.save(plots.thumbnail_map(xy, gray, y, classes), tmp_path / "t.png"))
    assert png_ok(plots.save(plots.overlay_grid(rgb, rng.random((12, 32, 32)), ["x"] * 12, "cams"), tmp_path / "o.png"))
    cm = rng.integers(0, 50, (10, 10))
    assert png_ok(plots.save(plots.confusion_figure(cm, classes), tmp_path / "c.png"))
    fig = plots.image_grid(gray[:10], [str(i) for i in range(10)], suptitle="grid")
    assert png_ok(plots.save(fig, tmp_path / "i.png"))
    hist = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_acc": 1 - 0.5 / e, "val_acc": 1 - 0.6 / e}
            for e in range(1, 6)]
    assert png_ok(plots.save(plots.curves_figure(hist), tmp_path / "h.png"))
    assert png_ok(plots.save(plots.rows_figure([gray[:6], gray[6:12]], ["a", "b"], [f"{a:.1f}" for a in range(6)]),
                             tmp_path / "r.png"), 2_000)


def test_to_display_layouts():
    assert plots.to_display(np.zeros((1, 5, 6))).shape == (5, 6)
    assert plots.to_display(np.zeros((3, 5, 6))).shape == (5, 6, 3)
    assert plots.to_display(np.zeros((5, 6, 3))).shape == (5, 6, 3)
    assert plots.to_display(np.full((5, 6), 255, np.uint8)).max() == 1.0


def test_class_legend_has_every_class_name():
    fig = plots.embedding_figure("fc1", np.zeros((3, 2)), np.zeros((3, 2)), np.array([0, 1, 2]),
                                 ["Coat", "Bag", "Shirt"])
    texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert texts == ["Coat", "Bag", "Shirt"]
