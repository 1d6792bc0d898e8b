"""Reading deploy/k8s for the tests: render a kustomization, and check that the rendered objects agree with
each other and with `serve` (what a schema cannot see: a probe on the wrong port, a flag serve lacks).

    from tests.deploy.manifests import render, problems
"""
from __future__ import annotations

import re
import shutil
import subprocess
from importlib.metadata import entry_points
from pathlib import Path

import yaml

from tests.helpers.paths import ROOT

K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = ("base", "overlays/dev", "overlays/production", "prometheus-adapter", "kserve")
KUBECTL = shutil.which("kubectl")


class RenderError(Exception):
    """kubectl kustomize refused a kustomization."""


def render(folder: Path) -> list[dict]:
    """`kubectl kustomize folder` -> its objects. Without kubectl (KUBECTL is None): the resource files the
    kustomization lists, as they are (no patches, no images, no namespace)."""
    if KUBECTL is None:
        listed = yaml.safe_load((folder / "kustomization.yaml").read_text()).get("resources", [])
        return [d for name in listed if (folder / name).is_file()
                for d in yaml.safe_load_all((folder / name).read_text()) if d]
    out = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    if out.returncode:
        raise RenderError(f"kubectl kustomize {folder}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def serve_options() -> set[str]:
    """Every option of the `serve` console script (wherever its entry point lives)."""
    (script,) = entry_points(group="console_scripts", name="serve")
    return {o for p in script.load().params for o in p.opts}


def flags(args: list[str]) -> dict[str, str]:
    """["--port=8500", "--workers=$(CPU_LIMIT)"] -> {"--port": "8500", "--workers": "$(CPU_LIMIT)"}."""
    return dict(a.split("=", 1) if "=" in a else (a, "") for a in args)


def _one(docs: list[dict], kind: str) -> dict | None:
    found = [d for d in docs if d.get("kind") == kind]
    return found[0] if found else None


def deployment_problems(deploy: dict, options: set[str]) -> list[str]:
    spec = deploy["spec"]["template"]["spec"]
    (serve,) = [c for c in spec["containers"] if c["name"] == "serve"]
    args, ports = flags(serve.get("args", [])), {p["name"]: p["containerPort"] for p in serve.get("ports", [])}
    found = [f"serve has no option {f}" for f in args if f not in options]
    port = int(args.get("--port", 8500))
    if ports.get("grpc") != port:
        found.append(f"containerPort grpc {ports.get('grpc')} is not serve's --port {port}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if (serve.get(probe) or {}).get("grpc", {}).get("port") != port:
            found.append(f"{probe} is not a grpc probe on serve's --port {port}: {serve.get(probe)}")
    if int(args.get("--metrics-port", 8501)) != ports.get("metrics"):
        found.append(f"containerPort metrics {ports.get('metrics')} is not serve's --metrics-port")
    if args.get("--host") != "0.0.0.0":
        found.append("serve must listen on 0.0.0.0 in a pod (--host)")
    pause = (serve.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command") or ["", "0"])[-1]
    grace = float(args.get("--grace", 10))
    if not spec.get("terminationGracePeriodSeconds", 30) > float(pause) + grace:
        found.append(f"terminationGracePeriodSeconds must exceed the preStop pause {pause} s + --grace {grace} s")
    if m := re.fullmatch(r"\$\((\w+)\)", args.get("--workers", "")):
        env = {e["name"]: e for e in serve.get("env", [])}
        source = env.get(m[1], {}).get("valueFrom", {}).get("resourceFieldRef", {})
        if source.get("resource") != "limits.cpu":
            found.append(f"--workers=$({m[1]}) but {m[1]} is not the container's limits.cpu")
    mounts = {v["mountPath"]: v["name"] for v in serve.get("volumeMounts", [])}
    if args.get("--repository") not in mounts:
        found.append(f"--repository {args.get('--repository')} is not a mounted volume")
    return found


def problems(docs: list[dict], metric_names: set[str] = frozenset()) -> list[str]:
    """What is inconsistent among the objects of one kustomization (and with `serve`)."""
    found = []
    deploy, service, hpa = _one(docs, "Deployment"), _one(docs, "Service"), _one(docs, "HorizontalPodAutoscaler")
    if deploy:
        found += deployment_problems(deploy, serve_options())
        (serve,) = [c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "serve"]
        names = {p["name"] for p in serve["ports"]} | {str(p["containerPort"]) for p in serve["ports"]}
        labels = deploy["spec"]["template"]["metadata"].get("labels", {})
        if service:
            found += [f"Service port {p['name']} targets {p['targetPort']}, which the pod has not"
                      for p in service["spec"]["ports"] if str(p["targetPort"]) not in names]
            if service["spec"].get("clusterIP") != "None":
                found.append("the Service must be headless (clusterIP: None) for client-side balancing")
            if any(labels.get(k) != v for k, v in service["spec"].get("selector", {}).items()):
                found.append("the Service's selector does not select the pods")
        if hpa and hpa["spec"]["scaleTargetRef"]["name"] != deploy["metadata"]["name"]:
            found.append("the HPA does not scale the Deployment")
    if hpa and metric_names:
        wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
        found += [f"the HPA scales on {w}, which no prometheus-adapter rule provides" for w in wanted - metric_names]
    return found


def adapter_metrics(docs: list[dict], exported: set[str]) -> tuple[set[str], list[str]]:
    """The metric names the prometheus-adapter rules provide, and the series they read that serve does not
    export (``exported``: serve's Prometheus sample names)."""
    config = yaml.safe_load(_one(docs, "ConfigMap")["data"]["config.yaml"])
    provided, missing = set(), []
    for rule in config["rules"]:
        provided.add(rule["name"]["as"])
        used = set(re.findall(r"\b(glassbox_\w+)\{", rule["seriesQuery"] + rule["metricsQuery"]))
        missing += sorted(used - exported)
    return provided, missing
