"""deploy/k8s checked offline (no cluster): kustomize renders every kustomization, kubernetes-validate --strict
accepts the core kinds, check-jsonschema accepts the InferenceService against the vendored schema, and the
objects agree with each other and with `serve`. Each check is also shown to refuse a broken manifest.

    pytest tests/deploy/test_manifests.py -q
"""
from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy.manifests import K8S, KUBECTL, KUSTOMIZATIONS, RenderError, adapter_metrics, problems, render
from tests.helpers.paths import ROOT

SCHEMA = ROOT / "deploy" / "kserve" / "inferenceservice-v1beta1.schema.json"
NO_KUBECTL = ("kubectl not found: kustomize rendering and the overlays not checked (the base, adapter and kserve "
              "files are checked as they are)")
# Without kubectl the overlays cannot be rendered; the other folders' files are whole objects.
RENDERABLE = KUSTOMIZATIONS if KUBECTL else tuple(k for k in KUSTOMIZATIONS if not k.startswith("overlays/"))


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {k: render(K8S / k) for k in RENDERABLE}


def exported_metrics() -> set[str]:
    from serving.metrics import Metrics
    return {s.name for family in Metrics().registry.collect() for s in family.samples} | \
           {f"{f.name}_{suffix}" for f in Metrics().registry.collect() if f.type == "histogram"
            for suffix in ("sum", "count", "bucket")}


def check_jsonschema(doc: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "isvc.yaml"
    path.write_text(yaml.safe_dump(doc))
    cli = Path(sys.executable).with_name("check-jsonschema")
    return subprocess.run([str(cli), "--schemafile", str(SCHEMA), str(path)], capture_output=True, text=True)


def test_kustomize_renders_every_kustomization_and_refuses_broken_ones(tmp_path):
    """The one test that needs kubectl (without it: one line saying so). Every kustomization renders; a
    misspelled kustomization field is refused; an overlay that moves the readiness probe to a wrong port
    renders and passes the schema, and the agreement check refuses it."""
    if KUBECTL is None:
        pytest.skip(NO_KUBECTL)
    kinds = {k: sorted(d["kind"] for d in render(K8S / k)) for k in KUSTOMIZATIONS}
    serving = ["Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "PodDisruptionBudget", "Service"]
    assert kinds == {"base": serving, "overlays/dev": serving, "overlays/production": serving,
                     "prometheus-adapter": ["ConfigMap"], "kserve": ["InferenceService"]}, kinds
    shutil.copytree(K8S, tmp_path / "k8s")
    kustomization = tmp_path / "k8s" / "overlays" / "dev" / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("patches:", "patchez:"))
    with pytest.raises(RenderError, match="patchez"):
        render(tmp_path / "k8s" / "overlays" / "dev")
    overlay = tmp_path / "k8s" / "overlays" / "wrong-port"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "resources: [../../base]\npatches:\n  - target: {kind: Deployment}\n    patch: |-\n"
        "      - {op: replace, path: /spec/template/spec/containers/0/readinessProbe/grpc/port, value: 9500}\n")
    docs = render(overlay)
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    assert any("readinessProbe is not a grpc probe" in p for p in problems(docs)), problems(docs)


@pytest.mark.parametrize("name", RENDERABLE)
def test_core_kinds_pass_kubernetes_validate_strict(rendered, name):
    version = kubernetes_validate.latest_version()
    for doc in rendered[name]:
        if doc["apiVersion"] != "serving.kserve.io/v1beta1":
            kubernetes_validate.validate(doc, version, strict=True)


def test_kubernetes_validate_refuses_a_misspelled_field(rendered):
    deploy = copy.deepcopy(next(d for d in rendered["base"] if d["kind"] == "Deployment"))
    serve = deploy["spec"]["template"]["spec"]["containers"][0]
    serve["readinesProbe"] = serve.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deploy, kubernetes_validate.latest_version(), strict=True)


def test_inferenceservice_matches_the_kserve_schema(rendered, tmp_path):
    (isvc,) = rendered["kserve"]
    assert isvc["spec"]["predictor"]["model"]["modelFormat"]["name"] == "triton"
    assert isvc["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
    out = check_jsonschema(isvc, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    broken = copy.deepcopy(isvc)
    model = broken["spec"]["predictor"]["model"]
    model["storageURI"] = model.pop("storageUri")
    out = check_jsonschema(broken, tmp_path)
    assert out.returncode == 1 and "storageURI" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("name", [k for k in RENDERABLE if k == "base" or k.startswith("overlays/")])
def test_objects_agree_with_each_other_and_with_serve(rendered, name):
    provided, missing = adapter_metrics(rendered["prometheus-adapter"], exported_metrics())
    assert not missing, f"the adapter rule reads series serve does not export: {missing}"
    assert problems(rendered[name], provided) == []


@pytest.mark.parametrize("breakage, expected", [
    (lambda c, s: c["startupProbe"]["grpc"].update(port=8600), "startupProbe is not a grpc probe"),
    (lambda c, s: c["args"].append("--max-conection-age-ms=1000"), "serve has no option --max-conection-age-ms"),
    (lambda c, s: s.update(terminationGracePeriodSeconds=20), "terminationGracePeriodSeconds must exceed"),
    (lambda c, s: c["ports"][0].update(name="grpcs"), "containerPort grpc None"),
])
def test_a_broken_deployment_is_refused(rendered, breakage, expected):
    docs = copy.deepcopy(rendered["base"])
    spec = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    breakage(spec["containers"][0], spec)
    assert any(expected in p for p in problems(docs)), problems(docs)
