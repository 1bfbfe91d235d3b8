"""The Kubernetes manifests in docker/k8s/: schemas, and the facts the autoscaling relies on.

Core kinds are validated with kubernetes-validate (offline OpenAPI schemas, strict: unknown fields
are errors). KEDA's ScaledObject is a custom resource those schemas lack; it is validated against
docker/schemas/keda-scaledobject-v1alpha1.json, written from KEDA's documented specification.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .helpers import FLEET_DOC, K8S, SCHEMAS, load_yaml, require

SCALEDOBJECT_SCHEMA = SCHEMAS / "keda-scaledobject-v1alpha1.json"
# The oldest Kubernetes minor still commonly run by managed services, and the newest the installed
# kubernetes-validate knows: a field that exists only in one of them fails here.
OLDEST_K8S = "1.30.0"

# Kinds validated elsewhere in this file: no Kubernetes OpenAPI schema covers them.
CUSTOM_KINDS = {"ScaledObject", "Kustomization"}

# What the ScaledObject's threshold assumes besides the exporter's target and start-up: one worker
# drains about 4 jobs/s, and the pending count reaches the HPA up to 40 s late (exporter refresh,
# scrape, HPA sync). See the threshold's comment in scaledobject.yaml and docs/fleet.md.
ASSUMED_JOBS_PER_S = 4.0
SIGNAL_DELAY_S = 40.0


@pytest.fixture(scope="session")
def kubernetes_validate():
    try:
        import kubernetes_validate
        import kubernetes_validate.utils as utils
    except ImportError:
        require(False, "kubernetes-validate not installed: pip install kubernetes-validate")
    return kubernetes_validate, utils


@pytest.fixture(scope="session")
def k8s_versions(kubernetes_validate) -> list[str]:
    _, utils = kubernetes_validate
    return sorted({OLDEST_K8S, utils.latest_version()})


@pytest.fixture(scope="session")
def scaledobject_validator():
    import jsonschema

    schema = json.loads(SCALEDOBJECT_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def by_kind(documents: list[tuple[Path, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents if doc.get("kind") == kind]


def one(documents: list[tuple[Path, dict[str, Any]]], kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in by_kind(documents, kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


# Kinds that run loopfree's images, each with one container.
WORKLOAD_KINDS = ("Deployment", "Job", "CronJob")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod template's spec of a Deployment or Job, or of the Jobs a CronJob creates."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1
    return containers[0]


def manifest_env(
    documents: list[tuple[Path, dict[str, Any]]], workload: dict[str, Any]
) -> dict[str, str]:
    """The environment a container of ``workload`` gets: envFrom ConfigMap/Secret, then env."""
    env: dict[str, str] = {}
    spec = container(workload)
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(documents, "ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            env.update(one(documents, "Secret", source["secretRef"]["name"])["stringData"])
    env.update({item["name"]: item["value"] for item in spec.get("env", []) if "value" in item})
    return env


# --- schemas ------------------------------------------------------------------------------------


def test_every_manifest_kind_has_a_validator(k8s_documents, kubernetes_validate, k8s_versions):
    kv, _ = kubernetes_validate
    kinds = {doc["kind"] for _, doc in k8s_documents}
    assert {
        "Deployment",
        "Job",
        "CronJob",
        "Service",
        "ConfigMap",
        "Secret",
        "ScaledObject",
    } <= kinds
    for path, doc in k8s_documents:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kv.validate(doc, k8s_versions[-1], strict=True)
        except kv.SchemaNotFoundError:
            pytest.fail(
                f"{path.name}: no schema for {doc['apiVersion']} {doc['kind']}: nothing checks it"
            )
        except kv.ValidationError:
            pass  # reported by the test below


def test_core_manifests_pass_strict_kubernetes_validation(
    k8s_documents, kubernetes_validate, k8s_versions
):
    kv, _ = kubernetes_validate
    errors = []
    checked = 0
    for path, doc in k8s_documents:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        for version in k8s_versions:
            try:
                kv.validate(doc, version, strict=True)
                checked += 1
            except kv.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                name = f"{doc['kind']}/{doc['metadata']['name']}"
                errors.append(f"{path.name} {name} @{version}: {where}: {exc.message}")
    assert not errors, "\n".join(errors)
    assert checked >= 2 * 7


def test_strict_kubernetes_validation_rejects_a_misspelt_field(k8s_documents, kubernetes_validate):
    kv, utils = kubernetes_validate
    deployment = copy.deepcopy(one(k8s_documents, "Deployment", "loopfree-worker"))
    resources = container(deployment)["resources"]
    resources["limit"] = resources.pop("limits")
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, utils.latest_version(), strict=True)


def test_scaledobject_schema_is_a_valid_json_schema_and_accepts_ours(check_jsonschema):
    scaledobject = K8S / "scaledobject.yaml"
    for args in (
        ["--check-metaschema", str(SCALEDOBJECT_SCHEMA)],
        ["--schemafile", str(SCALEDOBJECT_SCHEMA), str(scaledobject)],
    ):
        result = subprocess.run(
            [check_jsonschema, *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        doc = doc[int(key)] if isinstance(doc, list) else doc[key]
    if value is _DELETE:
        del doc[last]
    else:
        doc[last] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.triggers.0.metadata.threshold", 240),  # KEDA wants "240"
        ("spec.triggers.0.metadata.query", _DELETE),
        ("spec.triggers.0.metricType", "Average"),
        ("spec.scaleTargetRef.name", _DELETE),
        ("spec.minReplicas", 0),  # the HPA's spelling, not KEDA's
        ("spec.triggers", []),
        ("spec.cooldownPeriod", "600"),
        (
            "spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.policies.0.type",
            "Replicas",
        ),
        ("apiVersion", "keda.sh/v1"),
    ],
    ids=lambda v: "delete" if v is _DELETE else str(v),
)
def test_scaledobject_schema_rejects_broken_scaledobjects(scaledobject_validator, path, value):
    broken = copy.deepcopy(load_yaml(K8S / "scaledobject.yaml"))
    _set(broken, path, value)
    assert list(scaledobject_validator.iter_errors(broken)), f"schema accepted {path} = {value!r}"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.jobTemplate.spec.activeDeadlineSecond", 240),  # misspelt
        ("spec.concurrencyPolicy", 1),  # a string: Allow, Forbid or Replace
        ("spec.jobTemplate.spec.template.spec.containers.0.resource", {}),  # misspelt
        ("spec.schedule", _DELETE),
    ],
    ids=lambda v: "delete" if v is _DELETE else str(v),
)
def test_strict_kubernetes_validation_rejects_a_broken_cronjob(
    k8s_documents, kubernetes_validate, path, value
):
    kv, utils = kubernetes_validate
    cronjob = copy.deepcopy(one(k8s_documents, "CronJob", "loopfree-requeue"))
    _set(cronjob, path, value)
    with pytest.raises(kv.ValidationError):
        kv.validate(cronjob, utils.latest_version(), strict=True)


# --- what the autoscaling relies on -------------------------------------------------------------


def test_scaledobject_scales_the_worker_deployment_to_zero_on_pending_jobs(k8s_documents):
    (scaled,) = by_kind(k8s_documents, "ScaledObject")
    spec = scaled["spec"]
    worker = one(k8s_documents, "Deployment", spec["scaleTargetRef"]["name"])
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert spec["minReplicaCount"] == 0
    assert spec.get("idleReplicaCount", -1) < spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] >= 60, (
        "a cold start costs minutes; do not scale to zero on a lull"
    )
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    model = next(e["value"] for e in container(worker)["env"] if e["name"] == "LOOPFREE_MODEL")
    query = trigger["metadata"]["query"]
    assert re.fullmatch(r'sum\(loopfree_pending_jobs\{model="([^"]+)"\}\)', query), query
    assert f'model="{model}"' in query, f"the ScaledObject watches another model than {model}"
    assert float(trigger["metadata"]["threshold"]) > 0
    assert float(trigger["metadata"].get("activationThreshold", "0")) < float(
        trigger["metadata"]["threshold"]
    )


def test_keda_owns_the_worker_replica_count(k8s_documents):
    worker = one(k8s_documents, "Deployment", "loopfree-worker")
    assert "replicas" not in worker["spec"], "a replicas field resets KEDA's count on every apply"


def test_worker_pods_get_one_gpu_and_time_to_finish_a_batch(k8s_documents):
    worker = one(k8s_documents, "Deployment", "loopfree-worker")
    pod = worker["spec"]["template"]["spec"]
    assert container(worker)["resources"]["limits"]["nvidia.com/gpu"] == 1
    grace = pod["terminationGracePeriodSeconds"]
    env = manifest_env(k8s_documents, worker)
    assert 120 <= grace < int(env["LOOPFREE_VISIBILITY_TIMEOUT_S"]), grace
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_worker_probes_watch_the_metrics_port_the_worker_serves(k8s_documents):
    worker = one(k8s_documents, "Deployment", "loopfree-worker")
    spec = container(worker)
    env = manifest_env(k8s_documents, worker)
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    assert ports["metrics"] == int(env["LOOPFREE_METRICS_PORT"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = spec[probe]["httpGet"]
        assert http["path"] == "/metrics" and http["port"] in ("metrics", ports["metrics"]), probe
    startup = spec["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model load needs minutes"
    assert spec["command"][:2] == ["loopfree", "worker"]


def test_exporter_service_reaches_the_exporter_pods(k8s_documents):
    exporter = one(k8s_documents, "Deployment", "loopfree-exporter")
    service = one(k8s_documents, "Service", "loopfree-exporter")
    labels = exporter["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in container(exporter)["ports"]}
    assert port["targetPort"] in container_ports
    command = container(exporter)["command"]
    assert command[:2] == ["loopfree", "metrics"]
    assert int(command[command.index("--port") + 1]) == container_ports[port["targetPort"]]


def option(command: list[str], name: str) -> float:
    assert name in command, f"{' '.join(command)} does not pass {name}"
    return float(command[command.index(name) + 1])


def test_threshold_is_what_one_worker_drains_within_the_exporters_target(k8s_documents):
    # The exporter's --target-seconds and --startup-seconds (loopfree_recommended_workers) and the
    # threshold must describe the same target, or the docs' and the simulation's numbers do not
    # hold for what is deployed.
    command = container(one(k8s_documents, "Deployment", "loopfree-exporter"))["command"]
    target, startup = option(command, "--target-seconds"), option(command, "--startup-seconds")
    (scaled,) = by_kind(k8s_documents, "ScaledObject")
    threshold = float(scaled["spec"]["triggers"][0]["metadata"]["threshold"])
    assert threshold == ASSUMED_JOBS_PER_S * (target - startup - SIGNAL_DELAY_S), (
        f"threshold {threshold:g} is not {ASSUMED_JOBS_PER_S:g} jobs/s x ({target:g} s target - "
        f"{startup:g} s start-up - {SIGNAL_DELAY_S:g} s signal delay)"
    )


def test_fleet_doc_quotes_the_shipped_threshold_and_replica_cap(k8s_documents):
    (scaled,) = by_kind(k8s_documents, "ScaledObject")
    spec = scaled["spec"]
    doc = FLEET_DOC.read_text(encoding="utf-8")
    threshold = spec["triggers"][0]["metadata"]["threshold"]
    assert f'`threshold: "{threshold}"`' in doc, "docs/fleet.md quotes another threshold"
    assert f"`maxReplicaCount: {spec['maxReplicaCount']}`" in doc, (
        "docs/fleet.md quotes another maxReplicaCount"
    )


def test_reconciler_cronjob_runs_requeue_stuck_every_few_minutes_one_at_a_time(k8s_documents):
    cronjob = one(k8s_documents, "CronJob", "loopfree-requeue")
    spec = cronjob["spec"]
    assert container(cronjob)["command"] == ["loopfree", "requeue", "--stuck"]
    assert spec["concurrencyPolicy"] == "Forbid"
    every = re.fullmatch(r"\*/(\d+) \* \* \* \*", spec["schedule"])
    assert every, f"expected every N minutes, got {spec['schedule']!r}"
    period_s = int(every.group(1)) * 60
    assert period_s <= 10 * 60, "a lost message would wait that long for its job to be republished"
    job = spec["jobTemplate"]["spec"]
    assert 0 < job["activeDeadlineSeconds"] < period_s, (
        "a hung run must end before the next is due, or Forbid skips that one too"
    )
    assert pod_spec(cronjob)["restartPolicy"] in ("Never", "OnFailure")
    assert pod_spec(cronjob)["securityContext"]["runAsNonRoot"] is True
    resources = container(cronjob)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]


def test_reconciler_uses_the_cli_image_and_the_environment_of_the_other_workloads(k8s_documents):
    cronjob = container(one(k8s_documents, "CronJob", "loopfree-requeue"))
    exporter = container(one(k8s_documents, "Deployment", "loopfree-exporter"))
    migrate = container(one(k8s_documents, "Job", "loopfree-migrate"))
    assert cronjob["image"] == exporter["image"] == migrate["image"]
    assert cronjob["envFrom"] == exporter["envFrom"] == migrate["envFrom"]


def test_migration_job_runs_db_upgrade(k8s_documents):
    job = one(k8s_documents, "Job", "loopfree-migrate")
    assert container(job)["command"] == ["loopfree", "db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def test_selectors_match_their_pod_labels(k8s_documents):
    for deployment in by_kind(k8s_documents, "Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), deployment["metadata"]["name"]


def test_kustomization_lists_every_manifest_except_the_example_secret():
    kustomization = load_yaml(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    for resource in listed:
        assert (K8S / resource).is_file(), f"kustomization.yaml lists missing {resource}"
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == on_disk, (
        f"not listed: {on_disk - listed}; listed but absent: {listed - on_disk}"
    )
    assert "secret.example.yaml" not in listed, "placeholder credentials must never be applied"


def test_kustomization_images_are_the_ones_the_workloads_use(k8s_documents):
    kustomization = load_yaml(K8S / "kustomization.yaml")
    names = {image["name"] for image in kustomization["images"]}
    used = set()
    for kind in WORKLOAD_KINDS:
        for workload in by_kind(k8s_documents, kind):
            used.add(container(workload)["image"].rsplit(":", 1)[0])
    assert names == used


def test_workloads_read_config_and_secrets_that_exist(k8s_documents):
    configmaps = {doc["metadata"]["name"] for doc in by_kind(k8s_documents, "ConfigMap")}
    secrets = {doc["metadata"]["name"] for doc in by_kind(k8s_documents, "Secret")}
    for kind in WORKLOAD_KINDS:
        for workload in by_kind(k8s_documents, kind):
            sources = container(workload)["envFrom"]
            assert {s["configMapRef"]["name"] for s in sources if "configMapRef" in s} <= configmaps
            assert {s["secretRef"]["name"] for s in sources if "secretRef" in s} <= secrets
            assert any("secretRef" in s for s in sources), (
                "database and broker URLs come from a Secret"
            )


def test_no_plain_env_value_carries_a_password(k8s_documents):
    for kind in WORKLOAD_KINDS:
        for workload in by_kind(k8s_documents, kind):
            for item in container(workload).get("env", []):
                assert not re.search(r"://[^/@\s]*:[^/@\s]+@", item.get("value", "")), item["name"]
    (configmap,) = by_kind(k8s_documents, "ConfigMap")
    for name, value in configmap["data"].items():
        assert not re.search(r"://[^/@\s]*:[^/@\s]+@", value), (
            f"ConfigMap {name} holds a credential"
        )
        assert "SECRET" not in name and "PASSWORD" not in name, name


@pytest.mark.parametrize(
    ("kind", "workload"),
    [
        ("Deployment", "loopfree-worker"),
        ("Deployment", "loopfree-exporter"),
        ("Job", "loopfree-migrate"),
        ("CronJob", "loopfree-requeue"),
    ],
)
def test_manifest_environment_is_accepted_by_settings(
    k8s_documents, settings_from_env, settings_env_names, kind, workload
):
    env = manifest_env(k8s_documents, one(k8s_documents, kind, workload))
    unknown = {name for name in env if name.startswith("LOOPFREE_")} - settings_env_names
    assert not unknown, f"{workload}: core.settings reads no {', '.join(sorted(unknown))}"
    settings = settings_from_env(env)
    assert settings.resolved_broker_url.startswith("redis://")
    assert settings.resolved_database_url.startswith("postgresql+psycopg://")
    assert settings.metrics_port == 9400
    assert settings.visibility_timeout_s == 3600
