"""``glassbox.manifest``: the exported/ contract, one check at a time.

Each test breaks a valid manifest in exactly one way and expects exactly the one problem that names it
(so a check that stops firing, fires for the wrong thing, or words its finding differently fails here),
then the file-level helpers: ``read_manifest``, ``verify_files`` and ``versions``.
"""
from __future__ import annotations

import copy
import json

import pytest

from glassbox.io import sha256
from glassbox.manifest import read_manifest, validate_manifest, verify_files, versions


def t(name, shape, dtype="float32"):
    return {"name": name, "shape": shape, "dtype": dtype}


def classifier(cam: bool = True) -> dict:
    """A valid classifier manifest (with its Grad-CAM graph unless ``cam`` is False)."""
    layers = [{"name": "conv1", "shape": [-1, 4, 8, 8]}, {"name": "fc1", "shape": [-1, 16]}]
    graphs = {"classifier": {"file": "classifier.onnx", "triton_name": "net", "inputs": [t("input", [-1, 1, 8, 8])],
                             "outputs": [t("logits", [-1, 3]), t("probabilities", [-1, 3]),
                                         t("conv1", [-1, 4, 8, 8]), t("fc1", [-1, 16])]}}
    if cam:
        graphs["gradcam"] = {"file": "gradcam.onnx", "triton_name": "net.gradcam",
                             "inputs": [t("input", [-1, 1, 8, 8]), t("target", [-1], "int64")],
                             "outputs": [t("cam", [-1, 8, 8]), t("logits", [-1, 3])]}
    files = {f: "0" * 64 for g in graphs for f in (f"{g}.onnx", f"{g}.config.pbtxt")}
    return {
        "format": 1, "name": "net", "version": 1, "task": "classifier", "dataset": "fashion-mnist",
        "model": {"arch": "lenet", "args": {}}, "input": {"name": "input", "shape": [-1, 1, 8, 8]},
        "preprocessing": {"channels": 1, "size": [8, 8], "mean": [0.5], "std": [0.5]},
        "labels": ["a", "b", "c"], "layers": layers, "cam_layer": "conv1" if cam else None, "latent_dim": None,
        "opset": 18, "max_batch_size": 64, "graphs": graphs, "files": files,
        "source": {"checkpoint": "best.pt", "sha256": "0" * 64, "config": {}, "metrics": {}},
        "training": {"history": []}, "versions": {"torch": "2", "onnx": "1", "onnxruntime": "1"},
        "parity": {g: {} for g in graphs},
    }


def vae() -> dict:
    m = classifier(cam=False)
    m.update(task="vae", labels=[], layers=[], cam_layer=None, latent_dim=4, graphs={
        "encoder": {"file": "encoder.onnx", "triton_name": "v.encoder", "inputs": [t("input", [-1, 1, 8, 8])],
                    "outputs": [t("mean", [-1, 4]), t("logvar", [-1, 4])]},
        "decoder": {"file": "decoder.onnx", "triton_name": "v.decoder", "inputs": [t("latent", [-1, 4])],
                    "outputs": [t("image", [-1, 1, 8, 8])]}})
    m["files"] = {f: "0" * 64 for g in m["graphs"] for f in (f"{g}.onnx", f"{g}.config.pbtxt")}
    m["parity"] = {"encoder": {}, "decoder": {}}
    return m


def test_valid_manifests_have_no_problems():
    assert validate_manifest(classifier()) == []
    assert validate_manifest(classifier(cam=False)) == []
    assert validate_manifest(vae()) == []


@pytest.mark.parametrize("key", list(classifier()))
def test_a_missing_top_level_field_is_the_only_problem(key):
    m = classifier()
    del m[key]
    assert validate_manifest(m) == [f"{key}: missing"]


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("version", "1", "version: str, want int"),
    ("labels", {}, "labels: dict, want list"),
    ("cam_layer", 3, "cam_layer: int, want (<class 'str'>, <class 'NoneType'>)"),
    ("latent_dim", "4", "latent_dim: str, want (<class 'int'>, <class 'NoneType'>)"),
    ("graphs", [], "graphs: list, want dict"),
])
def test_a_field_of_the_wrong_type_is_the_only_problem(key, value, problem):
    m = classifier()
    m[key] = value
    assert validate_manifest(m) == [problem]


def test_every_missing_and_mistyped_field_is_listed():
    m = classifier()
    del m["name"], m["files"]
    m["opset"] = "18"
    assert validate_manifest(m) == ["name: missing", "files: missing", "opset: str, want int"]


def test_an_unknown_task_stops_the_checks():
    m = classifier()
    m["task"] = "detector"
    m["opset"] = 1  # would be a problem too, but the task comes first
    assert validate_manifest(m) == ["task: 'detector', want classifier or vae"]


def broken(edit, base=classifier):
    m = base()
    edit(m)
    return validate_manifest(m)


def test_graphs_must_match_the_task_and_parity_the_graphs():
    assert broken(lambda m: m["graphs"].pop("gradcam")) == [
        "graphs: ['classifier'], want ['classifier', 'gradcam']",
        "parity: records for ['classifier', 'gradcam'], graphs are ['classifier']"]
    # Without a cam_layer a classifier has no Grad-CAM graph.
    assert broken(lambda m: m.update(cam_layer=None)) == ["graphs: ['classifier', 'gradcam'], want ['classifier']"]
    assert broken(lambda m: m["parity"].pop("gradcam")) == [
        "parity: records for ['classifier'], graphs are ['classifier', 'gradcam']"]
    assert broken(lambda m: m["graphs"].pop("decoder"), vae)[0] == "graphs: ['encoder'], want ['decoder', 'encoder']"


@pytest.mark.parametrize(("section", "key"), [
    ("model", "arch"), ("model", "args"), ("preprocessing", "channels"), ("preprocessing", "size"),
    ("preprocessing", "mean"), ("preprocessing", "std"), ("source", "checkpoint"), ("source", "sha256"),
    ("source", "config"), ("source", "metrics"), ("training", "history"), ("versions", "torch"),
    ("versions", "onnx"), ("versions", "onnxruntime"),
])
def test_a_missing_sub_field_is_named(section, key):
    assert broken(lambda m: m[section].pop(key)) == [f"{section}.{key}: missing"]


@pytest.mark.parametrize("inp", [{"name": "image", "shape": [-1, 1, 8, 8]}, {"name": "input", "shape": [1, 1, 8, 8]},
                                 {"name": "input", "shape": []}, {"name": "input"}, {"shape": [-1, 1, 8, 8]}])
def test_the_input_needs_its_name_and_a_dynamic_batch_axis(inp):
    assert broken(lambda m: m.update(input=inp)) == [
        f"input: {inp}, want name 'input' with a dynamic batch axis (-1)"]


def test_opset_18_is_the_minimum():
    assert broken(lambda m: m.update(opset=17)) == ["opset: 17 < 18"]
    assert broken(lambda m: m.update(opset=19)) == []


def test_classifier_labels_and_cam_layer():
    assert broken(lambda m: m.update(labels=[])) == ["labels: empty for a classifier"]
    assert broken(lambda m: m.update(cam_layer="fc9")) == ["cam_layer: 'fc9' is not a layer"]
    assert broken(lambda m: m.update(cam_layer="fc1")) == []


@pytest.mark.parametrize("edit", [{"labels": ["a"]}, {"layers": [{"name": "x"}]}, {"cam_layer": "x"},
                                  {"latent_dim": None}, {"latent_dim": 0}])
def test_a_vae_has_no_labels_layers_or_cam_and_a_latent_dim(edit):
    problems = broken(lambda m: m.update(edit), vae)
    assert "vae: labels and layers must be empty, cam_layer null, latent_dim set" in problems
    # a vae's graphs are encoder + decoder whatever cam_layer says: no graphs problem on top
    assert not [p for p in problems if p.startswith("graphs:")]


def test_graph_inputs_and_outputs_are_checked_by_name():
    def rename(graph, side, i, name):
        def edit(m):
            m["graphs"][graph][side][i]["name"] = name
        return edit
    assert broken(rename("gradcam", "inputs", 1, "targets")) == [
        "graphs.gradcam.inputs: ['input', 'targets'], want ['input', 'target']"]
    assert broken(rename("gradcam", "outputs", 0, "heatmap")) == [
        "graphs.gradcam.outputs: ['heatmap', 'logits'], want ['cam', 'logits'] first"]
    assert broken(rename("decoder", "inputs", 0, "z"), vae) == ["graphs.decoder.inputs: ['z'], want ['latent']"]
    assert broken(rename("encoder", "outputs", 1, "std"), vae) == [
        "graphs.encoder.outputs: ['mean', 'std'], want ['mean', 'logvar'] first"]
    assert broken(rename("classifier", "outputs", 3, "fc2")) == [
        "graphs.classifier.outputs: layers ['conv1', 'fc2'] differ from manifest layers"]
    # extra outputs after the required ones are fine for the other graphs
    assert broken(lambda m: m["graphs"]["gradcam"]["outputs"].append(t("extra", [-1]))) == []
    # a graph without inputs or outputs lists
    assert broken(lambda m: m["graphs"]["decoder"].pop("inputs"), vae) == [
        "graphs.decoder.inputs: [], want ['latent']"]
    assert broken(lambda m: m["graphs"]["decoder"].pop("outputs"), vae) == [
        "graphs.decoder.outputs: [], want ['image'] first"]


@pytest.mark.parametrize("tensor", [t("logits", [3, 3]), t("logits", []), t("logits", [-1, 3], "float64"),
                                    {"name": "logits", "shape": [-1, 3]}, {"name": "logits", "dtype": "float32"}])
def test_every_graph_tensor_needs_a_dynamic_batch_axis_and_a_dtype(tensor):
    def edit(m):
        m["graphs"]["classifier"]["outputs"][0] = tensor
    assert broken(edit) == [f"graphs.classifier: tensor {tensor} needs a dynamic batch axis and a dtype"]


def test_int64_tensors_and_input_tensors_are_checked_too():
    def edit(m):
        m["graphs"]["gradcam"]["inputs"][1]["shape"] = [2]
    target = {"name": "target", "shape": [2], "dtype": "int64"}
    assert broken(edit) == [f"graphs.gradcam: tensor {target} needs a dynamic batch axis and a dtype"]


def test_each_graph_needs_a_triton_name_and_sha256_of_its_files():
    assert broken(lambda m: m["graphs"]["gradcam"].pop("triton_name")) == ["graphs.gradcam.triton_name: missing"]
    assert broken(lambda m: m["files"].pop("gradcam.onnx")) == ["files: gradcam.onnx of graph gradcam has no sha256"]
    assert broken(lambda m: m["files"].pop("classifier.config.pbtxt")) == [
        "files: classifier.config.pbtxt of graph classifier has no sha256"]
    assert broken(lambda m: m["graphs"]["classifier"].pop("file")) == [
        "files: None of graph classifier has no sha256"]


def test_an_unknown_graph_is_reported_once_not_checked():
    def edit(m):
        m["graphs"]["extra"] = {}
        m["parity"]["extra"] = {}
    assert broken(edit) == ["graphs: ['classifier', 'extra', 'gradcam'], want ['classifier', 'gradcam']"]


def with_explanations(m: dict, methods=("gradcampp", "saliency", "ig", "smoothgrad")) -> dict:
    for g in methods:
        noise = [t("noise", [-1, 4, 1, 8, 8])] if g == "smoothgrad" else []
        m["graphs"][g] = {"file": f"{g}.onnx", "triton_name": f"net.{g}",
                          "inputs": [t("input", [-1, 1, 8, 8]), t("target", [-1], "int64"), *noise],
                          "outputs": [t("map", [-1, 8, 8]), t("logits", [-1, 3])]}
        m["files"].update({f"{g}.onnx": "0" * 64, f"{g}.config.pbtxt": "0" * 64})
        m["parity"][g] = {}
    return m


def test_explanation_graphs_are_optional_and_checked():
    assert validate_manifest(with_explanations(classifier())) == []
    assert validate_manifest(with_explanations(classifier(cam=False), ("saliency", "ig", "smoothgrad"))) == []
    # Grad-CAM++ needs the CAM layer, like Grad-CAM; a VAE carries none of them.
    assert validate_manifest(with_explanations(classifier(cam=False), ("gradcampp",))) == [
        "graphs: ['classifier', 'gradcampp'], want ['classifier']"]
    assert validate_manifest(with_explanations(vae(), ("saliency",)))[0] == (
        "graphs: ['decoder', 'encoder', 'saliency'], want ['decoder', 'encoder']")
    m = with_explanations(classifier())
    m["graphs"]["smoothgrad"]["inputs"].pop()  # no noise input
    m["graphs"]["ig"]["outputs"][0]["name"] = "cam"
    assert validate_manifest(m) == ["graphs.ig.outputs: ['cam', 'logits'], want ['map', 'logits'] first",
                                    "graphs.smoothgrad.inputs: ['input', 'target'], want ['input', 'target', 'noise']"]


# --- files ----------------------------------------------------------------------------------------

def publish(d, manifest=None, files=None):
    """A version directory: the files and a manifest listing their real sha256."""
    d.mkdir(parents=True)
    files = {"classifier.onnx": b"graph", "classifier.config.pbtxt": b"cfg"} if files is None else files
    for name, data in files.items():
        (d / name).write_bytes(data)
    m = manifest if manifest is not None else classifier(cam=False)
    m["files"] = {name: sha256(d / name) for name in files}
    (d / "manifest.json").write_text(json.dumps(m))
    return m


def test_read_manifest_returns_a_valid_one(tmp_path):
    m = publish(tmp_path / "1")
    assert read_manifest(tmp_path / "1") == m
    assert read_manifest(str(tmp_path / "1")) == m


def test_read_manifest_refuses_unreadable_non_object_and_invalid(tmp_path):
    path = tmp_path / "manifest.json"
    with pytest.raises(ValueError, match=rf"^{path}: unreadable \(\[Errno 2\]"):
        read_manifest(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=rf"^{path}: unreadable \(Expecting property name"):
        read_manifest(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"^{path}: not a JSON object$"):
        read_manifest(tmp_path)
    m = classifier()
    del m["name"]
    m["opset"] = "x"
    path.write_text(json.dumps(m))
    with pytest.raises(ValueError) as e:
        read_manifest(tmp_path)
    assert str(e.value) == f"{path}: invalid manifest: name: missing; opset: str, want int"


def test_verify_files_passes_an_intact_version(tmp_path):
    publish(tmp_path / "1")
    assert verify_files(tmp_path / "1") == []
    assert verify_files(str(tmp_path / "1")) == []


def test_verify_files_names_each_problem(tmp_path):
    d = tmp_path / "1"
    publish(d, files={"a.onnx": b"a", "b.onnx": b"b", "c.onnx": b"c"})
    (d / "a.onnx").write_bytes(b"A")  # changed
    (d / "b.onnx").unlink()  # missing
    (d / "stray.txt").write_text("?")  # not listed
    (d / "c.onnx").unlink()
    (d / "c.onnx").mkdir()  # a directory where a file should be: missing too
    assert verify_files(d) == [f"{d / 'stray.txt'}: not listed in the manifest's files",
                               f"{d / 'a.onnx'}: sha256 mismatch (file changed or corrupted since export)",
                               f"{d / 'b.onnx'}: missing", f"{d / 'c.onnx'}: missing"]


def test_verify_files_with_an_unreadable_manifest_or_no_files_key(tmp_path):
    d = tmp_path / "1"
    d.mkdir()
    problems = verify_files(d)
    assert len(problems) == 1 and problems[0].startswith(f"{d / 'manifest.json'}: unreadable ([Errno 2]")
    (d / "manifest.json").write_text("{")
    assert verify_files(d)[0].startswith(f"{d / 'manifest.json'}: unreadable (Expecting property name")
    (d / "manifest.json").write_text("{}")
    (d / "x.onnx").write_bytes(b"x")
    assert verify_files(d) == [f"{d / 'x.onnx'}: not listed in the manifest's files"]


def test_versions_lists_numbered_directories_in_numeric_order(tmp_path):
    model = tmp_path / "net"
    for name in ("10", "2", "1", "latest", ".3"):
        (model / name).mkdir(parents=True)
    (model / "7").write_text("a file, not a version")
    assert versions(model) == [1, 2, 10]
    assert versions(str(model)) == [1, 2, 10]
    assert versions(tmp_path / "absent") == []
    assert versions(model / "7") == []


def test_validate_does_not_change_the_manifest():
    m = classifier()
    before = copy.deepcopy(m)
    validate_manifest(m)
    assert m == before


def test_an_unknown_graph_listed_first_does_not_hide_the_checks_of_the_others():
    def edit(m):
        m["graphs"] = {"extra": {}, **m["graphs"]}
        m["graphs"]["gradcam"].pop("triton_name")
    assert broken(edit)[-1] == "graphs.gradcam.triton_name: missing"
