"""Write the JSON schema tests/deploy checks deploy/k8s/kserve's InferenceService against (check-jsonschema):

    pip download --no-deps kserve==0.21.0 -d build/kserve
    python deploy/kserve/make_schema.py build/kserve/kserve-0.21.0-py3-none-any.whl \
        > deploy/kserve/inferenceservice-v1beta1.schema.json

KServe's CRD (config/crd/full/serving.kserve.io_inferenceservices.yaml in its repository) cannot be fetched on
these machines: only package registries are reached. Its Python SDK, on PyPI, carries the same API types (both
are generated from KServe's Go types): each ``kserve/models/v1beta1_*.py`` has ``openapi_types`` (field ->
type) and ``attribute_map`` (field -> JSON name), read here from the wheel's source without importing it.
Kubernetes' own types (V1Probe, V1ResourceRequirements, ...) come from kubernetes-validate's strict
definitions, so the schema is self-contained. Every object refuses fields it does not define
(additionalProperties: false), as `kubectl apply --validate=strict` does and the CRD's structural schema
alone would not (the API server prunes unknown fields silently).
"""
from __future__ import annotations

import ast
import json
import re
import sys
import zipfile
from pathlib import Path

import kubernetes_validate

SCALARS = {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
           "bool": {"type": "boolean"}, "object": {}, "datetime": {"type": "string"}, "date": {"type": "string"}}
K8S_GROUPS = ("io.k8s.api.core.", "io.k8s.apimachinery.pkg.apis.meta.", "io.k8s.api.")


def sdk_models(wheel: Path) -> dict[str, dict]:
    """Class name -> {"types": {attr: type}, "names": {attr: json name}, "required": [attr]}."""
    models = {}
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if not re.fullmatch(r"kserve/models/v1beta1_\w+\.py", name):
                continue
            source = z.read(name).decode()
            for cls in (n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)):
                found = {t.id: ast.literal_eval(node.value) for node in cls.body if isinstance(node, ast.Assign)
                         for t in node.targets if getattr(t, "id", None) in ("openapi_types", "attribute_map")}
                if len(found) == 2:
                    required = re.findall(r"Invalid value for `(\w+)`, must not be `None`", source)
                    models[cls.name] = {"types": found["openapi_types"], "names": found["attribute_map"],
                                        "required": required}
    return models


def k8s_definitions(version: str) -> dict[str, dict]:
    folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{version}-local-strict"
    return json.loads((folder / "_definitions.json").read_text())["$defs"]


def plain(node):
    """A Kubernetes definition without its descriptions (the file stays small), refs pointing at ours."""
    if isinstance(node, dict):
        return {k: (v.replace("#/$defs/", "#/definitions/") if k == "$ref" else plain(v))
                for k, v in node.items() if k != "description"}
    return [plain(v) for v in node] if isinstance(node, list) else node


def k8s_name(cls: str, definitions: dict) -> str | None:
    """V1Probe -> io.k8s.api.core.v1.Probe (core and meta first: the SDK's V1 types are theirs);
    K8sIoApiAppsV1DeploymentStrategy -> io.k8s.api.apps.v1.DeploymentStrategy; None for the rest
    (Knative's and KEDA's types, which only the status and KEDA's triggers use, and the one KServe type the
    SDK does not model, V1beta1MetricQuantity)."""
    if m := re.fullmatch(r"K8sIoApi([A-Z][a-z]+)(V\d\w*?)([A-Z]\w*)", cls):
        return f"io.k8s.api.{m[1].lower()}.{m[2].lower()}.{m[3]}"
    if not (m := re.fullmatch(r"(V\d+)([A-Z]\w*)", cls)):  # V1beta1MetricQuantity has no SDK model: any
        return None
    for group in K8S_GROUPS:
        for key in definitions:
            if key.startswith(group) and key.endswith(f".{m[1].lower()}.{m[2]}"):
                return key
    raise KeyError(f"no Kubernetes definition for {cls}")


def schema(wheel: Path, version: str) -> dict:
    models, k8s = sdk_models(wheel), k8s_definitions(version)
    out: dict[str, dict] = {}

    def typed(t: str) -> dict:
        if t in SCALARS:
            return SCALARS[t]
        if m := re.fullmatch(r"list\[(.+)\]", t):
            return {"type": "array", "items": typed(m.group(1))}
        if m := re.fullmatch(r"dict\(str, (.+)\)", t):
            return {"type": "object", "additionalProperties": typed(m.group(1))}
        key = ref(t)
        return {"$ref": f"#/definitions/{key}"} if key else {}  # a type neither KServe's nor Kubernetes': any

    def ref(cls: str) -> str | None:
        if cls in models:
            key = f"kserve.{cls}"
            if key not in out:
                out[key] = {}  # reserved before recursing: the types refer to each other
                m = models[cls]
                out[key] = {"type": "object", "additionalProperties": False,
                            "properties": {m["names"][a]: typed(t) for a, t in m["types"].items()},
                            **({"required": [m["names"][a] for a in m["required"]]} if m["required"] else {})}
            return key
        key = k8s_name(cls, k8s)
        if key:
            copy_k8s(key)
        return key

    def copy_k8s(key: str) -> None:
        if key in out:
            return
        out[key] = plain(k8s[key])
        for inner in re.findall(r'"#/definitions/([^"]+)"', json.dumps(out[key])):
            copy_k8s(inner)

    root = ref("V1beta1InferenceService")
    return {"$schema": "http://json-schema.org/draft-07/schema#",
            "$comment": f"InferenceService serving.kserve.io/v1beta1: kserve {wheel.stem.split('-')[1]} SDK models "
                        f"(PyPI) + Kubernetes {version} definitions (kubernetes-validate "
                        f"{kubernetes_validate.version.__version__}), by deploy/kserve/make_schema.py",
            "allOf": [{"$ref": f"#/definitions/{root}"},
                      {"properties": {"apiVersion": {"const": "serving.kserve.io/v1beta1"},
                                      "kind": {"const": "InferenceService"}},
                       "required": ["apiVersion", "kind", "metadata", "spec"]}],
            "definitions": dict(sorted(out.items()))}


if __name__ == "__main__":
    version = sys.argv[2] if len(sys.argv) > 2 else kubernetes_validate.latest_version()
    json.dump(schema(Path(sys.argv[1]), version), sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")
