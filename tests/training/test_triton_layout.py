"""``export --layout triton``: the Glassbox repository as a Triton Inference Server model repository,
checked against the rules of Triton's model repository documentation (model_repository.md,
model_configuration.md) and parsed with Triton's own ModelConfig."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from glassbox.io import sha256
from glassbox.manifest import MAX_QUEUE_DELAY_US
from tests.helpers.paths import BLOCK_TORCH
from training.export import triton
from training.export.triton import TritonLayoutWarning, write_triton_repository

ONNX_TYPES = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.INT64: mc.TYPE_INT64}


def onnx_io(path: Path):
    """(inputs, outputs) of an ONNX file: name -> (Triton data type, shape with None for a symbolic axis)."""
    g = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in g.initializer}

    def spec(values):
        return {v.name: (ONNX_TYPES[v.type.tensor_type.elem_type],
                         [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim])
                for v in values if v.name not in inits}
    return spec(g.input), spec(g.output)


def check_triton_repository(out: Path, source: Path) -> dict[str, list[int]]:
    """Every rule of Triton's model repository that applies to an ONNX model; returns name -> versions."""
    found = {}
    for model_dir in sorted(out.iterdir()):
        assert model_dir.is_dir(), f"{model_dir}: only model directories at the top of a repository"
        # config.pbtxt at the model level, parsed strictly by Triton's ModelConfig (unknown fields raise)
        cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
        assert cfg.name == model_dir.name, "the config's name must equal the model directory's"
        assert cfg.platform == "onnxruntime_onnx" or cfg.backend == "onnxruntime"
        assert cfg.default_model_filename in ("", "model.onnx")
        assert cfg.max_batch_size > 0 and cfg.dynamic_batching.max_queue_delay_microseconds == MAX_QUEUE_DELAY_US
        assert cfg.version_policy.HasField("all"), "the default policy serves only the newest version"
        # Versions: numeric subdirectories, not starting with 0 (Triton ignores those), each with model.onnx
        entries = {p.name for p in model_dir.iterdir()}
        vers = sorted(int(n) for n in entries if n.isdigit())
        assert vers and all(not n.startswith("0") for n in entries if n.isdigit())
        labels = {o.label_filename for o in cfg.output if o.label_filename}
        assert entries == {"config.pbtxt", *labels, *map(str, vers)}, f"{model_dir}: unexpected files {entries}"
        found[model_dir.name] = vers
        for v in vers:
            assert [p.name for p in (model_dir / str(v)).iterdir()] == ["model.onnx"]
            ins, outs = onnx_io(model_dir / str(v) / "model.onnx")
            # every model input in the config, in any order; each config output exists in the model
            assert {i.name for i in cfg.input} == set(ins)
            assert {o.name for o in cfg.output} <= set(outs)
            for t, model_io in [(i, ins) for i in cfg.input] + [(o, outs) for o in cfg.output]:
                dtype, shape = model_io[t.name]
                assert t.data_type == dtype in (mc.TYPE_FP32, mc.TYPE_INT64), t.name
                assert shape[0] is None, f"{t.name}: the ONNX batch axis must be dynamic"
                # with max_batch_size > 0, dims exclude the batch axis; a reshape gives the model's shape
                assert list(t.reshape.shape if t.HasField("reshape") else t.dims) == shape[1:], t.name
                assert all(d > 0 for d in t.dims), t.name
            # the very bytes export verified
            manifest = json.loads((source / _source_of(source, model_dir.name) / str(v) / "manifest.json")
                                  .read_text())
            graph = next(g for g in manifest["graphs"].values() if g["triton_name"] == model_dir.name)
            assert sha256(model_dir / str(v) / "model.onnx") == manifest["files"][graph["file"]]
            assert cfg.max_batch_size == manifest["max_batch_size"]
        for o in cfg.output:  # the classification extension's labels: one per class, in order
            if o.label_filename:
                assert (model_dir / o.label_filename).read_text().splitlines() == manifest["labels"]
                assert o.dims[-1] == len(manifest["labels"])
    return found


def _source_of(source: Path, triton_name: str) -> str:
    return triton_name.split(".")[0] if (source / triton_name.split(".")[0]).is_dir() else triton_name


def no_leftovers(out: Path):
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]


def test_triton_layout_follows_the_model_repository_rules(repository, tmp_path):
    out = tmp_path / "triton"
    with pytest.warns(TritonLayoutWarning, match=r"broken/1: skipped.*sha256"):
        written = write_triton_repository(repository, out)
    found = check_triton_repository(out, repository)
    # one Triton model per graph, named as the Glassbox v2 endpoint names it; the corrupted copy is left out
    assert found == {"cvae.decoder": [1], "cvae.encoder": [1], "lenet": [1], "lenet.gradcam": [1], "mlp": [1]}
    assert {t.name for t in written} == set(found)
    assert all(t.path == out / t.name for t in written)
    cfg = text_format.Parse((out / "lenet.gradcam" / "config.pbtxt").read_text(), mc.ModelConfig())
    target = cfg.input[1]  # [N] int64 in the graph: dims [1] reshaped to a per-item scalar
    assert target.name == "target" and list(target.dims) == [1] and list(target.reshape.shape) == []
    assert {o.name: o.label_filename for o in text_format.Parse(
        (out / "lenet" / "config.pbtxt").read_text(), mc.ModelConfig()).output}["probabilities"] == "labels.txt"
    no_leftovers(out)


def test_versions_replacement_and_all_or_nothing(repository, tmp_path, monkeypatch):
    src = tmp_path / "exported"
    for v in (1, 2):  # two versions of each; cvae's first encoder is declared with another latent size
        shutil.copytree(repository / "lenet" / "1", src / "lenet" / str(v))
        shutil.copytree(repository / "cvae" / "1", src / "cvae" / str(v))
    m = json.loads((src / "cvae" / "1" / "manifest.json").read_text())
    m["graphs"]["encoder"]["outputs"][0]["shape"] = [-1, 99]
    (src / "cvae" / "1" / "manifest.json").write_text(json.dumps(m))
    out = tmp_path / "triton"
    (out / "lenet" / "7").mkdir(parents=True)  # a stale model of the same name: replaced whole
    (out / "lenet" / "junk.txt").write_text("old")
    (out / "other").mkdir()  # someone else's model: left alone
    (out / "other" / "config.pbtxt").write_text('name: "other"')
    with pytest.warns(TritonLayoutWarning, match=r"cvae/1: encoder skipped, its inputs/outputs differ"):
        write_triton_repository(src, out)
    other = out / "other"
    assert (other / "config.pbtxt").read_text() == 'name: "other"'
    shutil.move(other, tmp_path / "other")
    found = check_triton_repository(out, src)
    assert found == {"lenet": [1, 2], "lenet.gradcam": [1, 2], "cvae.encoder": [2], "cvae.decoder": [1, 2]}
    shutil.move(tmp_path / "other", other)

    # A failure half-way (the third file copy) leaves the repository exactly as it was, and no temp dir.
    before = sorted((str(p.relative_to(out)), p.stat().st_ino) for p in out.rglob("*"))
    real, calls = shutil.copyfile, []

    def failing(a, b, **kw):
        calls.append(a)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(a, b, **kw)
    monkeypatch.setattr(triton.shutil, "copyfile", failing)
    (src / "lenet" / "3").mkdir()
    for f in (src / "lenet" / "2").iterdir():
        real(f, src / "lenet" / "3" / f.name)
    with pytest.raises(OSError, match="disk full"), pytest.warns(TritonLayoutWarning):
        write_triton_repository(src, out)
    assert sorted((str(p.relative_to(out)), p.stat().st_ino) for p in out.rglob("*")) == before
    no_leftovers(out)
    monkeypatch.undo()
    written = write_triton_repository(src, out, ["lenet"])  # only the models asked for
    assert {t.name: t.versions for t in written} == {"lenet": [1, 2, 3], "lenet.gradcam": [1, 2, 3]}
    assert sorted((out / "lenet").iterdir()) == [out / "lenet" / n for n in ("1", "2", "3", "config.pbtxt",
                                                                             "labels.txt")]


def test_cli_writes_the_triton_layout_without_torch(repository, tmp_path):
    out = tmp_path / "triton"
    code = BLOCK_TORCH + "from training.export.cli import export\nexport()\n"
    r = subprocess.run([sys.executable, "-c", code, "--repository", str(repository), "--layout", "triton",
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "warning: broken/1: skipped" in r.stderr and "Traceback" not in r.stderr
    assert "lenet.gradcam" in r.stdout and f"tritonserver --model-repository {out}" in r.stdout
    assert set(check_triton_repository(out, repository)) == {"cvae.decoder", "cvae.encoder", "lenet",
                                                             "lenet.gradcam", "mlp"}
    from click.testing import CliRunner

    from training.export.cli import export
    runner = CliRunner()
    for args in (["--out", str(out)], ["--layout", "triton"], []):
        r = runner.invoke(export, ["--repository", str(repository), *args])
        assert r.exit_code == 2 and r.output.startswith("error:"), (args, r.output)
    r = runner.invoke(export, ["--repository", str(tmp_path / "nope"), "--layout", "triton", "--out", str(out)])
    assert r.exit_code == 2 and "does not exist" in r.output
