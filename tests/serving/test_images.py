"""Encoded images through a real server: JPEG and PNG of other sizes and colours, decoded and resized as
training's ``preprocess`` does. (The in-process checks: test_tensors.py.)

    .venv/bin/pytest -x -q tests/serving/test_images.py
"""
import io
import json

import numpy as np
import onnxruntime as ort
from PIL import Image

from glassbox.data import load_dataset, preprocess


def encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def ort_logits(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def test_jpeg_and_other_sizes_through_the_server(server, repository, fmnist_dir):
    """Encoded JPEG (RGB, 56x56) and PNG (grayscale, 20x20) images in one Classify call are decoded, made
    grayscale and resized to 28x28 by the server, as `preprocess` does: the logits match onnxruntime on the same
    decoding, and the upscaled JPEGs mostly keep the class of the original 28x28 images. Catches a server that
    only takes 28x28 PNGs, drops the colour conversion or the resize, or mixes images of one batch."""
    from serving.client import GlassboxClient
    images = load_dataset("fashion-mnist", "test", data_dir=fmnist_dir).images[:24]
    spec = json.loads((repository / "lenet" / "1" / "manifest.json").read_text())["preprocessing"]
    rgb = [np.asarray(Image.fromarray(im).resize((56, 56), Image.BICUBIC).convert("RGB")) for im in images[:20]]
    files = [encode(a, "JPEG", quality=95) for a in rgb]
    files += [encode(np.asarray(Image.fromarray(im).resize((20, 20), Image.BILINEAR)), "PNG") for im in images[20:]]
    decoded = np.concatenate([preprocess(np.asarray(Image.open(io.BytesIO(f)).convert("L"))[None], spec)
                              for f in files])
    assert decoded.shape == (24, 1, 28, 28)
    with GlassboxClient(server, timeout=30) as c:
        got = c.classify("lenet", files, top_k=1, return_logits=True)
    want = ort_logits(repository / "lenet" / "1" / "classifier.onnx", decoded)
    np.testing.assert_allclose(got.logits, want, rtol=1e-4, atol=1e-4)
    original = ort_logits(repository / "lenet" / "1" / "classifier.onnx", preprocess(images[:20], spec)).argmax(1)
    assert np.mean(got.indices[:20, 0] == original) >= 0.8, (got.indices[:20, 0], original)
