"""The Helm chart, rendered by a real helm: strict values, RBAC, security, CRD and images.

These pytest tests are the chart's test suite (helm-unittest is a helm plugin that no package
registry reachable here ships, so there are no charts/kubeaccel/tests/ suites).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeaccel_api.version import __version__
from kubeaccel_operator.kube import REQUIRED_PERMISSIONS
from kubeaccel_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubeaccel"
# The release and namespace the conftest's render fixture uses.
RELEASE = "kubeaccel"
NAMESPACE = "kubeaccel-system"
Render = Callable[..., list[dict[str, Any]]]
Run = Callable[..., subprocess.CompletedProcess[str]]

CRD_FILES = sorted((ROOT / "crds").glob("*.yaml"))
STANDARD_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
}
# Resources the operator may touch that are not namespaced: they can only be granted by a
# ClusterRole, whatever watchNamespaces says.
CLUSTER_SCOPED = {
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("", "namespaces"),
    ("kopf.dev", "clusterkopfpeerings"),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations"),
}
Grants = dict[tuple[str, str], frozenset[str]]


# --------------------------------------------------------------------------- helpers


def of_kind(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Objects of one kind."""
    return [o for o in objects if o.get("kind") == kind]


def one(objects: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single object of a kind."""
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def grants(roles: Iterable[dict[str, Any]]) -> Grants:
    """(apiGroup, resource) -> verbs, merged over every rule of the given (Cluster)Roles."""
    merged: dict[tuple[str, str], set[str]] = {}
    for role in roles:
        for rule in role.get("rules") or []:
            assert not rule.get("resourceNames"), "rules must not depend on resource names"
            assert not rule.get("nonResourceURLs"), "the operator calls no non-resource URL"
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    merged.setdefault((group, resource), set()).update(rule["verbs"])
    return {key: frozenset(verbs) for key, verbs in merged.items()}


def required_permissions() -> Grants:
    """kubeaccel_operator.kube.REQUIRED_PERMISSIONS merged by (apiGroup, resource)."""
    merged: dict[tuple[str, str], set[str]] = {}
    for group, resource, verbs in REQUIRED_PERMISSIONS:
        merged.setdefault((group, resource), set()).update(verbs)
    return {key: frozenset(verbs) for key, verbs in merged.items()}


def describe_difference(granted: Grants, required: Grants) -> str:
    """Human-readable difference between what the chart grants and what the operator needs."""
    lines = []
    for key in sorted(set(granted) | set(required)):
        have, need = granted.get(key, frozenset()), required.get(key, frozenset())
        if have != need:
            group = key[0] or "core"
            lines.append(
                f"  {group}/{key[1]}: chart grants {sorted(have)}, operator needs {sorted(need)}"
            )
    return "\n".join(lines)


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator container of the Deployment."""
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """The container's plain env values by name."""
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def schema_nodes(node: Any, path: str = "$") -> Iterable[tuple[str, dict[str, Any]]]:
    """Every sub-schema of a JSON schema, with its path."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from schema_nodes(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from schema_nodes(value, f"{path}[{i}]")


# --------------------------------------------------------------------------- metadata


def test_chart_version_and_app_version_follow_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == __version__
    assert chart["appVersion"] == __version__


def test_chart_passes_helm_lint_in_strict_mode(run: Run) -> None:
    proc = run("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in proc.stdout


def test_chart_passes_helm_lint_with_per_namespace_rbac(run: Run) -> None:
    proc = run("lint", "--strict", str(CHART), "--set", "watchNamespaces={a,b}")
    assert "0 chart(s) failed" in proc.stdout


def test_default_render_has_exactly_the_expected_objects(
    default_objects: list[dict[str, Any]],
) -> None:
    kinds = sorted(o["kind"] for o in default_objects)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
    ]


def test_every_object_carries_the_standard_labels(default_objects: list[dict[str, Any]]) -> None:
    for obj in default_objects:
        labels = obj["metadata"].get("labels", {})
        missing = STANDARD_LABELS - set(labels)
        assert not missing, f"{obj['kind']} lacks labels {sorted(missing)}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == __version__


def test_namespaced_objects_go_to_the_release_namespace(
    default_objects: list[dict[str, Any]],
) -> None:
    # helm template leaves metadata.namespace empty; helm install puts them in --namespace.
    for obj in of_kind(default_objects, "Deployment") + of_kind(default_objects, "ServiceAccount"):
        assert obj["metadata"].get("namespace") in (None, NAMESPACE)


def test_names_are_truncated_to_63_characters(render: Render) -> None:
    objects = render({"fullnameOverride": "x" * 63})
    long_release = render({"nameOverride": "n" * 63})
    for obj in objects + long_release:
        name = obj["metadata"]["name"]
        assert len(name) <= 63, name
        if obj["kind"] != "CustomResourceDefinition":
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name


# --------------------------------------------------------------------------- values schema


def test_every_object_schema_in_values_schema_forbids_unknown_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, node in schema_nodes(schema):
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} allows unknown keys"


def test_every_setting_in_values_yaml_has_a_comment() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    # Walk values.yaml keeping the schema node of each indentation level.
    stack: list[tuple[int, dict[str, Any]]] = [(-1, schema)]
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9_]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        node = parent.get("properties", {}).get(key)
        # A key inside a free-form map (e.g. resources.requests.cpu) is an example, not a setting.
        if node is not None and not lines[i - 1].lstrip().startswith("#"):
            undocumented.append(key)
        stack.append((indent, node or {}))
    assert not undocumented, f"values.yaml keys without a comment: {undocumented}"


def test_every_schema_property_has_a_default_in_values_yaml() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(schema["properties"]) == set(values)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicas": 2}, "Additional property replicas is not allowed"),
        ({"image": {"registry": "ghcr.io"}}, "Additional property registry is not allowed"),
        ({"crds": {"enabled": True}}, "Additional property enabled is not allowed"),
        ({"serviceAccount": {"automount": False}}, "Additional property automount"),
        ({"resources": {"requests": {"gpu": 1}}}, "gpu"),
    ],
    ids=["top-level", "image", "crds", "serviceAccount", "resource-name"],
)
def test_values_schema_rejects_an_unknown_key(
    render_error: Callable[[dict[str, Any]], str], values: dict[str, Any], complaint: str
) -> None:
    assert complaint in render_error(values)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"workers": 0}, "workers"),
        ({"runAsUser": 0}, "runAsUser"),
        ({"image": {"digest": "latest"}}, "digest"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
        ({"gpuResourceName": "gpu"}, "gpuResourceName"),
        ({"crds": {"install": "yes"}}, "install"),
        ({"health": {"port": 80}}, "port"),
        ({"optimizer": {"memory": "lots"}}, "memory"),
        ({"optimizerImage": {"repository": ""}}, "repository"),
    ],
    ids=[
        "workers",
        "root-user",
        "digest",
        "pull-policy",
        "namespace",
        "gpu-name",
        "bool",
        "port",
        "optimizer-memory",
        "optimizer-repository",
    ],
)
def test_values_schema_rejects_a_bad_value(
    render_error: Callable[[dict[str, Any]], str], values: dict[str, Any], field: str
) -> None:
    assert field in render_error(values)


def test_an_existing_service_account_must_be_named(
    render_error: Callable[[dict[str, Any]], str],
) -> None:
    error = render_error({"serviceAccount": {"create": False}})
    assert "serviceAccount.name is required when serviceAccount.create is false" in error


def test_an_existing_service_account_is_used_and_not_created(render: Render) -> None:
    objects = render({"serviceAccount": {"create": False, "name": "mine"}})
    assert not of_kind(objects, "ServiceAccount")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "mine"
    assert one(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "mine"


# --------------------------------------------------------------------------- RBAC


def test_rbac_has_no_wildcards_and_no_access_to_secrets(
    default_objects: list[dict[str, Any]],
) -> None:
    granted = grants(of_kind(default_objects, "ClusterRole"))
    for (group, resource), verbs in granted.items():
        assert "*" not in (group, resource, *verbs)
    assert ("", "secrets") not in granted
    assert not {"escalate", "bind", "impersonate"} & set().union(*granted.values())


def test_rbac_rules_are_split_in_commented_framework_and_application_blocks() -> None:
    text = (CHART / "templates" / "rbac.yaml").read_text()
    assert "# ---- framework (kopf)" in text
    assert "# ---- application (kubeaccel reconciler)" in text


def test_cluster_wide_rbac_binds_one_cluster_role_to_the_service_account(
    default_objects: list[dict[str, Any]],
) -> None:
    role = one(default_objects, "ClusterRole")
    binding = one(default_objects, "ClusterRoleBinding")
    account = one(default_objects, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert not of_kind(default_objects, "Role")
    env = env_of(operator_container(default_objects))
    assert env["KUBEACCEL_NAMESPACES"] == ""


def test_per_namespace_rbac_renders_a_role_and_binding_in_each_namespace(render: Render) -> None:
    objects = render({"watchNamespaces": ["team-a", "team-b", "team-a"]})
    roles = of_kind(objects, "Role")
    bindings = of_kind(objects, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    # Namespaced resources are granted only inside the watched namespaces (the operator
    # needs nothing cluster-scoped, so nothing is bound cluster-wide) ...
    cluster_grants = grants(of_kind(objects, "ClusterRole"))
    assert set(cluster_grants) <= CLUSTER_SCOPED, sorted(set(cluster_grants) - CLUSTER_SCOPED)
    assert not of_kind(objects, "ClusterRoleBinding")
    for role in roles:
        assert not set(grants([role])) & CLUSTER_SCOPED
    # ... and both modes grant the same permissions overall.
    per_namespace = grants([*of_kind(objects, "ClusterRole"), roles[0]])
    cluster_wide = grants(of_kind(render(), "ClusterRole"))
    assert per_namespace == cluster_wide
    assert env_of(operator_container(objects))["KUBEACCEL_NAMESPACES"] == "team-a,team-b"


def test_rbac_can_be_left_to_the_cluster_admin(render: Render) -> None:
    objects = render({"rbac": {"create": False}})
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & {
        o["kind"] for o in objects
    }


@pytest.mark.parametrize("watch", [[], ["team-a", "team-b"]], ids=["cluster-wide", "namespaced"])
def test_rbac_grants_exactly_the_permissions_the_operator_uses(
    render: Render, watch: list[str]
) -> None:
    required = required_permissions()
    objects = render({"watchNamespaces": watch})
    roles = of_kind(objects, "ClusterRole") + of_kind(objects, "Role")[:1]
    granted = grants(roles)
    missing = {k: v - granted.get(k, frozenset()) for k, v in required.items()}
    assert not any(missing.values()), "chart misses permissions:\n" + describe_difference(
        granted, required
    )
    assert granted == required, "chart grants more than the operator uses:\n" + (
        describe_difference(granted, required)
    )


# --------------------------------------------------------------------------- security


def test_operator_pod_meets_the_restricted_pod_security_standard(
    default_objects: list[dict[str, Any]],
) -> None:
    pod = one(default_objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    for volume in pod.get("volumes", []):
        assert set(volume) - {"name"} <= {"emptyDir", "configMap", "secret", "projected"}
    for container in pod["containers"] + pod.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc.get("privileged") in (None, False)
        assert sc.get("runAsUser", 1) != 0
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        for port in container.get("ports", []):
            assert "hostPort" not in port


def test_writable_paths_are_volumes_and_home_points_at_tmp(
    default_objects: list[dict[str, Any]],
) -> None:
    container = operator_container(default_objects)
    env = env_of(container)
    assert env["HOME"] == "/tmp"
    assert env["TMPDIR"] == "/tmp"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = one(default_objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": mounts["/tmp"], "emptyDir": {"sizeLimit": "64Mi"}} in volumes


def test_operator_has_resources_and_a_liveness_probe_on_kopfs_health_endpoint(
    render: Render,
) -> None:
    container = operator_container(render({"health": {"port": 9090}}))
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]
    port = next(p for p in container["ports"] if p["name"] == "health")
    assert port["containerPort"] == 9090
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert env_of(container)["KUBEACCEL_HEALTH_PORT"] == "9090"


def test_the_operator_runs_as_a_single_replica(default_objects: list[dict[str, Any]]) -> None:
    deployment = one(default_objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


# --------------------------------------------------------------------------- settings, images


def test_operator_settings_come_from_values(render: Render) -> None:
    objects = render(
        {
            "watchNamespaces": ["ml"],
            "gpuResourceName": "amd.com/gpu",
            "workers": 7,
            "runtimeImage": {"pullPolicy": "Always"},
            "logFormat": "plain",
            "verbose": True,
            "extraEnv": [{"name": "KUBEACCEL_TIMER_INTERVAL", "value": "5"}],
            "optimizer": {"cpu": "2", "memory": "6Gi", "deadlineSeconds": 7200},
            "networkPolicy": {"enabled": True},
        }
    )
    env = env_of(operator_container(objects))
    assert env["KUBEACCEL_OPTIMIZER_CPU"] == "2"
    assert env["KUBEACCEL_OPTIMIZER_MEMORY"] == "6Gi"
    assert env["KUBEACCEL_JOB_DEADLINE_SECONDS"] == "7200"
    assert env["KUBEACCEL_NETWORK_POLICY"] == "true"
    assert env["KUBEACCEL_NAMESPACES"] == "ml"
    assert env["KUBEACCEL_GPU_RESOURCE_NAME"] == "amd.com/gpu"
    assert env["KUBEACCEL_WORKERS"] == "7"
    assert env["KUBEACCEL_IMAGE_PULL_POLICY"] == "Always"
    assert env["KUBEACCEL_LOG_FORMAT"] == "plain"
    assert env["KUBEACCEL_VERBOSE"] == "true"
    assert env["KUBEACCEL_TIMER_INTERVAL"] == "5"


def test_image_tags_default_to_the_app_version(default_objects: list[dict[str, Any]]) -> None:
    container = operator_container(default_objects)
    env = env_of(container)
    assert container["image"] == f"kubeaccel/operator:{__version__}"
    assert env["KUBEACCEL_RUNTIME_IMAGE"] == f"kubeaccel/runtime:{__version__}"
    assert env["KUBEACCEL_OPTIMIZER_IMAGE"] == f"kubeaccel/optimizer:{__version__}"
    assert (env["KUBEACCEL_OPTIMIZER_CPU"], env["KUBEACCEL_OPTIMIZER_MEMORY"]) == ("500m", "2Gi")
    assert env["KUBEACCEL_GPU_RUNTIME_IMAGE"] == f"kubeaccel/runtime:{__version__}-gpu"


def test_a_digest_pins_the_image_and_a_tag_overrides_the_app_version(render: Render) -> None:
    digest = "sha256:" + "ab" * 32
    objects = render(
        {
            "image": {"repository": "reg.example/op", "digest": digest},
            "runtimeImage": {"repository": "reg.example/rt", "tag": "1.2.3-gpu"},
        }
    )
    container = operator_container(objects)
    env = env_of(container)
    assert container["image"] == f"reg.example/op@{digest}"
    assert env["KUBEACCEL_RUNTIME_IMAGE"] == "reg.example/rt:1.2.3-gpu"
    assert env["KUBEACCEL_OPTIMIZER_IMAGE"] == f"kubeaccel/optimizer:{__version__}"


@pytest.mark.parametrize(
    ("values", "image"),
    [
        (
            {"runtimeImage": {"repository": "reg.example/rt", "tag": "1.2.3"}},
            "reg.example/rt:1.2.3-gpu",
        ),
        (
            {"runtimeImage": {"digest": "sha256:" + "cd" * 32}},
            f"kubeaccel/runtime:{__version__}-gpu",
        ),
        ({"gpuRuntimeImage": {"tag": "cuda13"}}, "kubeaccel/runtime:cuda13"),
        (
            {
                "gpuRuntimeImage": {
                    "repository": "reg.example/rt-gpu",
                    "digest": "sha256:" + "ef" * 32,
                }
            },
            "reg.example/rt-gpu@sha256:" + "ef" * 32,
        ),
    ],
    ids=["runtime-tag", "runtime-digest", "own-tag", "own-digest"],
)
def test_the_gpu_image_follows_the_runtime_image_unless_set(
    render: Render, values: dict[str, Any], image: str
) -> None:
    assert env_of(operator_container(render(values)))["KUBEACCEL_GPU_RUNTIME_IMAGE"] == image


def test_the_optimizer_image_and_resources_are_set_on_their_own(render: Render) -> None:
    values = {
        "optimizerImage": {"repository": "reg.example/opt", "digest": "sha256:" + "cd" * 32},
        "optimizer": {"cpu": "2", "memory": "8Gi"},
    }
    env = env_of(operator_container(render(values)))
    assert env["KUBEACCEL_OPTIMIZER_IMAGE"] == "reg.example/opt@sha256:" + "cd" * 32
    assert env["KUBEACCEL_RUNTIME_IMAGE"] == f"kubeaccel/runtime:{__version__}"
    assert (env["KUBEACCEL_OPTIMIZER_CPU"], env["KUBEACCEL_OPTIMIZER_MEMORY"]) == ("2", "8Gi")


# --------------------------------------------------------------------------- CRD


def test_the_charts_crd_equals_the_generated_crd_in_crds(
    default_objects: list[dict[str, Any]],
) -> None:
    assert CRD_FILES, "crds/ is empty: run `kubeaccel crd --write`"
    expected = [yaml.safe_load(p.read_text()) for p in CRD_FILES]
    rendered = of_kind(default_objects, "CustomResourceDefinition")
    for crd in rendered:
        meta = crd["metadata"]
        assert set(meta["labels"]) >= STANDARD_LABELS
        meta.pop("labels")
        meta.pop("annotations", None)
    assert sorted(rendered, key=lambda c: c["metadata"]["name"]) == sorted(
        expected, key=lambda c: c["metadata"]["name"]
    )


def test_crds_install_false_leaves_the_crd_out(render: Render) -> None:
    assert not of_kind(
        render({"crds": {"install": False, "keep": True}}), "CustomResourceDefinition"
    )


@pytest.mark.parametrize("keep", [True, False])
def test_crds_keep_decides_the_helm_resource_policy(render: Render, keep: bool) -> None:
    crd = one(render({"crds": {"install": True, "keep": keep}}), "CustomResourceDefinition")
    annotations = crd["metadata"].get("annotations") or {}
    assert ("helm.sh/resource-policy" in annotations) is keep
    if keep:
        assert annotations["helm.sh/resource-policy"] == "keep"


# --------------------------------------------------------------------------- NOTES.txt


def test_notes_tell_the_user_the_next_commands(render: Render, tmp_path: Path) -> None:
    # `helm install --dry-run` needs a cluster; render NOTES.txt through a ConfigMap in a copy.
    chart = tmp_path / "kubeaccel"
    shutil.copytree(CHART, chart)
    (chart / "notes.tpl").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ tpl (.Files.Get "notes.tpl") . | toJson }}\n'
    )
    for values, namespace in ((None, "default"), ({"watchNamespaces": ["ml"]}, "ml")):
        notes = next(o for o in render(values, chart=chart) if o["metadata"]["name"] == "notes")[
            "data"
        ]["notes"]
        assert f"kubectl -n {NAMESPACE} rollout status deployment/{RELEASE}" in notes
        assert f"kubectl apply -n {namespace} -f examples/cnn.yaml" in notes
        assert f"kubectl get am -n {namespace}" in notes
        assert "/v2/models/cnn" in notes


@pytest.mark.parametrize("watch", [[], ["team-a", "team-b"]], ids=["cluster-wide", "namespaced"])
def test_the_operator_accepts_every_setting_the_chart_gives_it(
    render: Render, watch: list[str]
) -> None:
    container = operator_container(render({"watchNamespaces": watch}))
    env = env_of(container)
    fields = set(Settings.model_fields)
    unknown = [
        name
        for name in env
        if name.startswith("KUBEACCEL_") and name.removeprefix("KUBEACCEL_").lower() not in fields
    ]
    assert not unknown, f"the operator reads no setting named {unknown}"
    settings = Settings.from_env(env)
    assert tuple(settings.namespaces) == tuple(sorted(watch))
    assert settings.runtime_image == f"kubeaccel/runtime:{__version__}"
    assert settings.optimizer_image == f"kubeaccel/optimizer:{__version__}"
    assert settings.gpu_runtime_image == f"kubeaccel/runtime:{__version__}-gpu"
    assert settings.gpu_resource_name == "nvidia.com/gpu"
    # The chart's defaults are the operator's own (values.yaml documents them once).
    defaults = Settings()
    assert (settings.optimizer_cpu, settings.optimizer_memory) == (
        defaults.optimizer_cpu,
        defaults.optimizer_memory,
    )
    assert settings.job_deadline_seconds == defaults.job_deadline_seconds
    assert settings.network_policy is defaults.network_policy is False
    # The probe and the operator agree on kopf's liveness endpoint.
    port = next(p for p in container["ports"] if p["name"] == "health")["containerPort"]
    assert settings.liveness_endpoint == f"http://0.0.0.0:{port}/healthz"
    # One replica only makes sense without peering.
    assert settings.standalone
