"""Scenarios for the Helm chart (charts/cluster-init), rendered offline with Helm's own engine.

Each test renders the chart with some values through helm-python-sdk (Helm 4's Go SDK, no helm
binary, no cluster), parses every manifest as YAML, validates every object against the
Kubernetes schemas (strict: unknown fields fail) for 1.30 and the newest version
kubernetes-validate carries, the Prometheus Operator's objects against its CRD schemas
(tests/chart/crds/, strict too), and checks the mapping from values to what cluster-init reads.

Run: `cargo test --test chart` (makes target/chart-venv), or by hand:
`python -m pytest tests/chart` in a venv with tests/chart/requirements.txt.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import values_table  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "cluster-init"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
# Values files users copy: they must render, validate and start the binary like ci/ ones.
EXAMPLE_VALUES = sorted((REPO / "examples").glob("*/chart-values.yaml"))
CRD_DIR = pathlib.Path(__file__).parent / "crds"
RELEASE = "web"
NAMESPACE = "prod"
FULLNAME = "web"

# The chart requires an image of yours: every render gets this one unless it says otherwise.
IMAGE = {"image": {"repository": "registry.example.com/team/web", "tag": "1.4.2"}}

# The oldest Kubernetes the chart supports (preStop sleep actions) and the newest we can check.
KUBE_VERSIONS = ["1.30", kubernetes_validate.utils.latest_version()]

# Lint severities (helm_python.lint): 1 info, 2 warning, 3 error.
WARNING = 2


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, as Helm merges values files (maps merge, anything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merged(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def with_image(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return merged(IMAGE, values or {})


# --- rendering ----------------------------------------------------------------------------------


class Rendered:
    """The objects a release would create, and its NOTES.txt."""

    def __init__(self, manifests: dict[str, str]):
        self.notes = ""
        self.objects: list[dict[str, Any]] = []
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            # Render does not check YAML: parse every document here.
            for doc in yaml.safe_load_all(text):
                if doc is not None:
                    assert isinstance(doc, dict), f"{path}: a document that is not a mapping"
                    self.objects.append(doc)

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)

    def one(self, kind: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind]
        assert len(found) == 1, f"expected one {kind}, got {self.kinds()}"
        return found[0]

    def template(self) -> dict[str, Any]:
        return self.one("Deployment")["spec"]["template"]

    def pod_spec(self) -> dict[str, Any]:
        return self.template()["spec"]

    def container(self) -> dict[str, Any]:
        """The server container: the first, named `server` (sidecars come after it)."""
        containers = self.pod_spec()["containers"]
        assert containers[0]["name"] == "server", [c["name"] for c in containers]
        return containers[0]

    def env(self) -> list[dict[str, Any]]:
        return self.container()["env"]

    def env_names(self) -> list[str]:
        return [e["name"] for e in self.env()]

    def env_value(self, name: str) -> Any:
        """The literal value of env var `name`, or None when it is absent."""
        found = [e for e in self.env() if e["name"] == name]
        assert len(found) <= 1, f"{name} set {len(found)} times"
        if not found:
            return None
        assert "value" in found[0], f"{name} has no literal value: {found[0]}"
        return found[0]["value"]

    def env_var(self, name: str) -> dict[str, Any]:
        found = [e for e in self.env() if e["name"] == name]
        assert len(found) == 1, f"expected {name} once, env is {self.env_names()}"
        return found[0]


@pytest.fixture(scope="session")
def chart():
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart):
    def do(values: dict[str, Any] | None = None, image: bool = True) -> Rendered:
        values = with_image(values) if image else (values or {})
        rendered = Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE))
        for obj in rendered.objects:
            validate(obj)
        return rendered

    return do


def refuse(chart, values: dict[str, Any], match: str | None = None, image: bool = True) -> None:
    """The schema refuses `values`, and so does rendering (helm install/template)."""
    values = with_image(values) if image else values
    with pytest.raises(helm_python.HelmValuesError, match=match):
        chart.validate_schema(values)
    with pytest.raises(helm_python.HelmValuesError):
        chart.render(values, name=RELEASE)


def render_fails(chart, values: dict[str, Any], message: str) -> None:
    """Rendering fails with `message`: a check across values in the templates."""
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        chart.render(with_image(values), name=RELEASE, namespace=NAMESPACE)


# --- validation ---------------------------------------------------------------------------------


def crd_validator(plural: str) -> jsonschema.Draft7Validator:
    """A strict validator of a Prometheus Operator object from its vendored CRD.

    The API server prunes unknown fields of a custom resource; a client with strict field
    validation (kubectl's default) refuses them. So: every object schema that lists its
    properties refuses others. `metadata` is ObjectMeta, checked by the API server itself.
    """
    crd = yaml.safe_load((CRD_DIR / f"monitoring.coreos.com_{plural}.yaml").read_text())
    schema = copy.deepcopy(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])

    def tighten(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for v in node.values():
                tighten(v)
        elif isinstance(node, list):
            for v in node:
                tighten(v)

    tighten(schema)
    return jsonschema.Draft7Validator(schema)


CRD_VALIDATORS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): crd_validator("servicemonitors"),
    ("monitoring.coreos.com/v1", "PodMonitor"): crd_validator("podmonitors"),
}

_VALIDATED: set[str] = set()


def validate(obj: dict[str, Any]) -> None:
    # Many renders give identical objects, and each validation loads the schemas anew.
    key = json.dumps(obj, sort_keys=True)
    if key in _VALIDATED:
        return
    crd = CRD_VALIDATORS.get((obj["apiVersion"], obj["kind"]))
    if crd:
        errors = sorted(crd.iter_errors(obj), key=lambda e: list(e.path))
        if errors:
            where = ".".join(str(p) for p in errors[0].path)
            pytest.fail(f"{obj['kind']} does not match its CRD: {where}: {errors[0].message}")
        assert set(obj["metadata"]) <= {"name", "namespace", "labels", "annotations"}, obj["metadata"]
    else:
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                pytest.fail(f"{obj['kind']} is not valid Kubernetes {version}: {where}: {e.message}")
    _VALIDATED.add(key)


def lint_problems(values: dict[str, Any], **opts: Any) -> list[str]:
    """Warnings and errors of a strict `helm lint` (an info such as 'icon is recommended' is not one)."""
    report = helm_python.lint(CHART_DIR, values, strict=True, **opts)
    # A bad path lints 0 charts instead of raising.
    assert report["total_charts_linted"] == 1, report
    return [m["error"] for m in report["messages"] if m["severity"] >= WARNING] + report["errors"]


def walk(node: Any):
    """Every (key, value) pair of every mapping in a nested structure."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def ci_values(path: pathlib.Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


# --- the tools themselves -----------------------------------------------------------------------


def test_lint_of_a_missing_chart_reports_zero_charts_so_the_count_is_worth_checking(tmp_path):
    assert helm_python.lint(tmp_path / "nope", {}, strict=True)["total_charts_linted"] == 0


def test_strict_validation_refuses_an_unknown_field(render):
    deployment = copy.deepcopy(render().one("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["tcpSoket"] = {"port": 8080}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


@pytest.mark.parametrize("plural, kind", [("servicemonitors", "ServiceMonitor"), ("podmonitors", "PodMonitor")])
def test_crd_validation_is_strict_and_knows_the_shape(plural, kind):
    validator = crd_validator(plural)
    endpoints = "endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"
    good = {"apiVersion": "monitoring.coreos.com/v1", "kind": kind, "metadata": {"name": "x"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, endpoints: [{"port": "metrics", "interval": "30s"}]}}
    assert list(validator.iter_errors(good)) == []
    for bad in [
        {endpoints: [{"prot": "metrics"}]},                    # a typo: refused, not pruned
        {endpoints: [{"port": "metrics", "interval": "30"}]},  # no unit
        {endpoints: [{"port": 9090}]},                          # a Service or pod port *name*
        {endpoints: [{"port": "metrics", "scheme": "tcp"}]},
    ]:
        obj = copy.deepcopy(good)
        obj["spec"].update(bad)
        assert list(validator.iter_errors(obj)), bad
    missing_selector = copy.deepcopy(good)
    del missing_selector["spec"]["selector"]
    assert list(validator.iter_errors(missing_selector))


# --- defaults -----------------------------------------------------------------------------------


def test_defaults_render_a_deployment_a_pdb_a_service_and_a_service_account(render):
    assert render().kinds() == ["Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]


def test_defaults_lint_clean_for_the_oldest_and_the_default_kubernetes():
    assert lint_problems(IMAGE) == []
    assert lint_problems(IMAGE, kube_version="v1.30.0") == []


def test_default_workers_is_max(render):
    assert render().env_value("CLUSTER_INIT_WORKERS") == "max"


def test_no_command_and_no_args_so_the_image_entrypoint_runs_cluster_init(render):
    container = render().container()
    assert "command" not in container
    assert "args" not in container


def test_defaults_have_a_cpu_limit_so_max_means_something(render):
    resources = render().container()["resources"]
    assert resources["limits"]["cpu"]
    assert resources["requests"]["cpu"]


def test_server_port_is_named_http_and_the_service_targets_it_by_name(render):
    r = render()
    ports = {p["name"]: p for p in r.container()["ports"]}
    assert ports["http"]["containerPort"] == 8080
    assert r.env_value("CLUSTER_INIT_LISTEN") == "http=:8080"
    service = r.one("Service")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}["http"] == "http"
    assert service["spec"]["selector"] == r.one("Deployment")["spec"]["selector"]["matchLabels"]


def test_listen_follows_the_container_port(render):
    r = render({"containerPort": 3000, "admin": {"port": 3001}})
    assert r.env_value("CLUSTER_INIT_LISTEN") == "http=:3000"
    assert r.env_value("CLUSTER_INIT_ADMIN_LISTEN") == ":3001"
    ports = {p["name"]: p["containerPort"] for p in r.container()["ports"]}
    assert ports == {"http": 3000, "admin": 3001}


def test_no_tcp_socket_probe_anywhere(render):
    for values in [{}, {"probes": {"startup": {"enabled": True}}}] + [ci_values(p) for p in CI_VALUES]:
        for obj in render(values).objects:
            assert "tcpSocket" not in [k for k, _ in walk(obj)], values


def test_secure_by_default(render):
    r = render()
    pod = r.pod_spec()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = r.container()["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # The root filesystem is read-only: /tmp is an emptyDir.
    assert {"name": "tmp", "mountPath": "/tmp"} in r.container()["volumeMounts"]


def test_process_namespace_is_not_shared_so_cluster_init_stays_pid_1(render):
    assert render().pod_spec()["shareProcessNamespace"] is False


def test_service_links_are_off_so_no_service_can_look_like_a_cluster_init_option(render):
    assert render().pod_spec()["enableServiceLinks"] is False


def test_names_come_from_the_release(render):
    r = render()
    for obj in r.objects:
        assert obj["metadata"]["name"] == FULLNAME
    assert r.pod_spec()["serviceAccountName"] == FULLNAME


def test_logs_and_pod_identity(render):
    r = render()
    assert r.env_value("CLUSTER_INIT_LOG_FORMAT") == "json"
    assert r.env_value("CLUSTER_INIT_LOG_LEVEL") == "info"
    assert r.env_var("POD_NAME")["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


OPTIONAL_ENV = ["CLUSTER_INIT_READY", "CLUSTER_INIT_READY_TIMEOUT", "CLUSTER_INIT_MIN_READY", "CLUSTER_INIT_CPUS",
                "CLUSTER_INIT_CPU_MILLIS", "CLUSTER_INIT_WORKER_MEMORY", "CLUSTER_INIT_MEMORY_RESERVE",
                "CLUSTER_INIT_BUDGET_INTERVAL", "CLUSTER_INIT_STALL_TIMEOUT", "CLUSTER_INIT_MAX_WORKER_MEMORY",
                "CLUSTER_INIT_WORKER_OUTPUT"]


def test_optional_settings_are_left_to_cluster_init_by_default(render):
    names = render().env_names()
    for name in OPTIONAL_ENV:
        assert name not in names


# --- 1. labels, names, the image ----------------------------------------------------------------


def test_every_object_is_labelled_as_the_app_not_as_cluster_init(render):
    r = render()
    expected = {
        "app.kubernetes.io/name": RELEASE,
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/version": "1.4.2",
        "app.kubernetes.io/component": "server",
        "app.kubernetes.io/managed-by": "Helm",
        "helm.sh/chart": "cluster-init-" + yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["version"],
    }
    for obj in r.objects:
        labels = obj["metadata"]["labels"]
        assert expected.items() <= labels.items(), (obj["kind"], labels)
    assert r.one("Deployment")["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": RELEASE,
        "app.kubernetes.io/instance": RELEASE,
    }


def test_pod_template_has_no_chart_or_version_label(render):
    labels = render().template()["metadata"]["labels"]
    assert "helm.sh/chart" not in labels
    assert "app.kubernetes.io/version" not in labels
    assert labels["app.kubernetes.io/name"] == RELEASE


def test_a_chart_upgrade_alone_leaves_the_pod_template_as_it_was(tmp_path, render):
    bumped = tmp_path / "cluster-init"
    shutil.copytree(CHART_DIR, bumped)
    meta = yaml.safe_load((bumped / "Chart.yaml").read_text())
    meta["version"], meta["appVersion"] = "9.8.7", "9.8.7"
    (bumped / "Chart.yaml").write_text(yaml.safe_dump(meta))
    with helm_python.Chart.load(bumped) as newer:
        after = Rendered(newer.render(with_image(), name=RELEASE, namespace=NAMESPACE))
    before = render()
    assert after.template() == before.template()
    assert after.one("Deployment")["metadata"]["labels"]["helm.sh/chart"] == "cluster-init-9.8.7"


def test_name_override_component_and_part_of(render):
    r = render({"nameOverride": "api", "component": "backend", "partOf": "shop"})
    for obj in r.objects + [r.template()]:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "api"
        assert labels["app.kubernetes.io/component"] == "backend"
        assert labels["app.kubernetes.io/part-of"] == "shop"
    # RELEASE-NAME, as bitnami's and helm create's charts name objects.
    assert r.one("Deployment")["metadata"]["name"] == "web-api"


def test_fullname_override_and_empty_component(render):
    r = render({"fullnameOverride": "checkout", "component": ""})
    assert {o["metadata"]["name"] for o in r.objects} == {"checkout"}
    assert "app.kubernetes.io/component" not in r.template()["metadata"]["labels"]


def test_common_labels_and_annotations_reach_every_object_and_the_pods(render):
    r = render({"commonLabels": {"team": "a"}, "commonAnnotations": {"owner": "team-a@example.com"},
                "podLabels": {"tier": "web"}, "podAnnotations": {"example.com/scrape": "false"}})
    for obj in r.objects:
        assert obj["metadata"]["labels"]["team"] == "a", obj["kind"]
        assert obj["metadata"]["annotations"]["owner"] == "team-a@example.com", obj["kind"]
    template = r.template()["metadata"]
    assert template["labels"]["team"] == "a"
    assert template["labels"]["tier"] == "web"
    assert template["annotations"] == {"example.com/scrape": "false"}


@pytest.mark.parametrize("where", ["commonLabels", "podLabels"])
def test_labels_must_not_replace_the_selector(chart, where):
    render_fails(chart, {where: {"app.kubernetes.io/name": "other"}},
                 "commonLabels and podLabels must not set app.kubernetes.io/name")


def test_the_image_needs_a_repository_and_a_tag_or_a_digest(chart):
    # The chart's appVersion is cluster-init's version: my-server:0.1.0 was never the app.
    refuse(chart, {}, match="image", image=False)
    refuse(chart, {"image": {"repository": "example/api"}}, image=False)
    refuse(chart, {"image": {"repository": "example/api", "tag": "", "digest": ""}}, image=False)
    refuse(chart, {"image": {"tag": "1.0"}}, image=False)


@pytest.mark.parametrize("bad", [{"tag": 1.1}, {"tag": "1.0 beta"}, {"tag": "-rc"}, {"digest": "sha256:abc"},
                                 {"digest": "1.0"}, {"pullPolicy": "Sometimes"}, {"name": "x"}])
def test_schema_refuses_bad_image_values(chart, bad):
    # A tag given as the YAML number 1.10 would arrive as 1.1: the schema wants it quoted.
    refuse(chart, {"image": bad}, match="image")


DIGEST = "sha256:" + "ab" * 32


def test_image_by_digest_has_no_version_label(render):
    r = render({"image": {"repository": "example/api", "tag": "", "digest": DIGEST}}, image=False)
    assert r.container()["image"] == f"example/api@{DIGEST}"
    assert "app.kubernetes.io/version" not in r.one("Deployment")["metadata"]["labels"]


def test_image_with_registry_tag_and_digest(render):
    r = render({"image": {"registry": "registry.example.com", "repository": "team/api", "tag": "2.0", "digest": DIGEST}},
               image=False)
    assert r.container()["image"] == f"registry.example.com/team/api:2.0@{DIGEST}"
    assert r.one("Deployment")["metadata"]["labels"]["app.kubernetes.io/version"] == "2.0"


def test_global_image_registry_is_the_fallback(render):
    r = render({"global": {"imageRegistry": "mirror.example.com"}})
    assert r.container()["image"] == "mirror.example.com/registry.example.com/team/web:1.4.2"
    r = render({"global": {"imageRegistry": "mirror.example.com"}, "image": {"registry": "own.example.com"}})
    assert r.container()["image"].startswith("own.example.com/")


def test_a_whole_number_tag_is_printed_as_such(render):
    r = render({"image": {"tag": 2}})
    assert r.container()["image"].endswith(":2")
    assert r.one("Deployment")["metadata"]["labels"]["app.kubernetes.io/version"] == "2"


def test_image_and_pull_secrets(render):
    r = render({"image": {"repository": "example/api", "tag": "1.2.3"}, "imagePullSecrets": [{"name": "regcred"}]})
    assert r.container()["image"] == "example/api:1.2.3"
    assert r.pod_spec()["imagePullSecrets"] == [{"name": "regcred"}]


# --- workers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given, rendered",
    [(4, "4"), ("4", "4"), (1, "1"), ("max", "max"), ("max-1", "max-1"), ("max-12", "max-12"),
     # Numbers reach templates as float64: no 1e+06, no 4.0.
     (1000000, "1000000"), (4.0, "4")],
)
def test_workers_reach_the_container_as_a_string(render, given, rendered):
    assert render({"workers": given}).env_value("CLUSTER_INIT_WORKERS") == rendered


# max-0 is refused: it means max, and a typo such as max-O should not pass for it.
@pytest.mark.parametrize(
    "bad", [0, -1, 1.5, "0", "-1", "1.5", "04", "banana", "max-0", "max-", "max+1", "MAX", "", " 4", True]
)
def test_schema_refuses_bad_workers(chart, bad):
    refuse(chart, {"workers": bad}, match="workers")


def test_templates_refuse_bad_workers_even_without_the_schema(tmp_path):
    # `helm install --skip-schema-validation`: here, a copy of the chart without its schema.
    # (lint is no use: in lint mode Helm logs `fail` instead of failing.)
    copy_dir = tmp_path / "cluster-init"
    shutil.copytree(CHART_DIR, copy_dir)
    (copy_dir / "values.schema.json").unlink()
    message = 'workers must be max, a whole number N >= 1, or max-K with K >= 1; got "max-0"'
    with helm_python.Chart.load(copy_dir) as unchecked:
        with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
            unchecked.render(with_image({"workers": "max-0"}), name=RELEASE)
        with pytest.raises(helm_python.HelmRenderError, match="image.tag or image.digest is required"):
            unchecked.render({"image": {"repository": "example/api"}}, name=RELEASE)
        unchecked.render(with_image({"workers": "max-2"}), name=RELEASE)


@pytest.mark.parametrize("bad", [{"worker": 4}, {"env": []}, {"volumes": []}, {"probes": {"readiness": {"tcpSocket": {}}}},
                                 {"metrics": {"serviceMonitor": {"intervall": "30s"}}}])
def test_schema_refuses_unknown_keys(chart, bad):
    # Old names (env, volumes) too: they were renamed extraEnv, extraVolumes.
    refuse(chart, bad)


# --- CPU budget ---------------------------------------------------------------------------------


def test_cpu_from_requests_uses_the_downward_api_in_millicores(render):
    r = render({"cpuFromRequests": True})
    assert r.env_var("CLUSTER_INIT_CPU_MILLIS")["valueFrom"] == {
        "resourceFieldRef": {"containerName": "server", "resource": "requests.cpu", "divisor": "1m"}
    }
    assert "CLUSTER_INIT_CPUS" not in r.env_names()


@pytest.mark.parametrize(
    "given, rendered", [(2, "2"), (1.5, "1.5"), ("1500m", "1500m"), ("0.5", "0.5"), ("100m", "100m"), (".5", ".5")]
)
def test_explicit_cpus_are_a_quantity(render, given, rendered):
    r = render({"cpus": given})
    assert r.env_value("CLUSTER_INIT_CPUS") == rendered
    assert "CLUSTER_INIT_CPU_MILLIS" not in r.env_names()


@pytest.mark.parametrize("bad", [0, -1, "0", "0m", "0.0", "-1", "two", "1.5 m", "m", "1e3"])
def test_schema_refuses_bad_cpus(chart, bad):
    refuse(chart, {"cpus": bad}, match="cpus")


def test_cpus_and_cpu_from_requests_are_exclusive(chart):
    render_fails(chart, {"cpus": 2, "cpuFromRequests": True}, "set cpuFromRequests or cpus, not both")


def test_cpu_from_requests_needs_a_cpu_request(chart):
    values = {"cpuFromRequests": True, "resources": {"requests": {"cpu": None}, "limits": {"cpu": None}}}
    render_fails(chart, values, "cpuFromRequests needs resources.requests.cpu")


NO_CPU_LIMIT = {"resources": {"limits": {"cpu": None}}}
WARNING_TEXT = "without a CPU limit"


def test_no_cpu_limit_removes_the_limit(render):
    assert "cpu" not in render(NO_CPU_LIMIT).container()["resources"]["limits"]


@pytest.mark.parametrize("workers", ["max", "max-1"])
def test_notes_warn_when_max_runs_without_a_cpu_limit(render, workers):
    notes = render({**NO_CPU_LIMIT, "workers": workers}).notes
    assert f"WARNING: workers={workers} {WARNING_TEXT}" in notes


@pytest.mark.parametrize(
    "values",
    [{}, {**NO_CPU_LIMIT, "workers": 4}, {**NO_CPU_LIMIT, "cpuFromRequests": True}, {**NO_CPU_LIMIT, "cpus": 2}],
)
def test_notes_do_not_warn_when_the_pool_has_a_size(render, values):
    notes = render(values).notes
    assert notes.strip(), "NOTES.txt rendered empty"
    assert WARNING_TEXT not in notes


# --- 6 and issue 14. the pool's size in NOTES, cpuRound, workerMemory -----------------------------


def notes_workers(notes: str) -> int:
    found = re.findall(r"^  (\d+) worker\(s\) per pod", notes, re.M)
    assert len(found) == 1, notes
    return int(found[0])


def dry_run(env: dict[str, str]) -> dict[str, Any]:
    binary = os.environ.get("CLUSTER_INIT_BIN")
    if not binary:
        pytest.skip("CLUSTER_INIT_BIN is set by tests/chart.rs")
    env = {**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    out = subprocess.run([binary, "--dry-run", "--", "true"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"{out.stderr}\nenv: {env}"
    return json.loads(out.stdout)


@pytest.mark.parametrize("limit", ["500m", "1", "1500m", "2", "2500m", 3, 1.5, "7"])
@pytest.mark.parametrize("cpu_round", ["floor", "ceil"])
@pytest.mark.parametrize("workers", ["max", "max-1", "max-3"])
def test_notes_count_the_workers_as_cluster_init_does(render, limit, cpu_round, workers):
    """The count NOTES.txt gives for a CPU limit is the one cluster-init computes for that budget
    (the real binary, with the limit as an explicit budget: what the cgroup quota would say)."""
    r = render({"workers": workers, "cpuRound": cpu_round,
                "resources": {"requests": {"cpu": limit}, "limits": {"cpu": limit}}})
    assert r.env_value("CLUSTER_INIT_CPU_ROUND") == cpu_round
    plan = dry_run({"CLUSTER_INIT_CPUS": str(limit), "CLUSTER_INIT_CPU_ROUND": cpu_round, "CLUSTER_INIT_WORKERS": workers})
    assert notes_workers(r.notes) == plan["workers"], (plan["sizing"], r.notes)


def test_notes_show_what_the_other_rounding_would_give(render):
    notes = render({"resources": {"limits": {"cpu": "1500m"}}}).notes
    assert "1 worker(s) per pod: resources.limits.cpu (1500m) = 1.5 CPUs, rounded with cpuRound=floor (ceil would give 2)" in notes
    assert "(floor would give" not in render({"cpuRound": "ceil"}).notes  # 2 CPUs: the same either way


@pytest.mark.parametrize("bad", ["round", "up", ""])
def test_schema_refuses_bad_cpu_round(chart, bad):
    refuse(chart, {"cpuRound": bad}, match="cpuRound")


@pytest.mark.parametrize(
    "memory, reserve, per_worker, cpu, expected",
    [("512Mi", "", "300M", "4", 1), ("2Gi", "", "300M", "8", 6), ("2Gi", "448M", "400M", "8", 4),
     ("2G", "", "500Mi", "8", 3), ("1Gi", "", "128M", "2", 2), ("256Mi", "", "1G", "2", 1)],
)
def test_notes_bound_max_by_memory_with_worker_memory(render, memory, reserve, per_worker, cpu, expected):
    r = render({"workerMemory": per_worker, "memoryReserve": reserve,
                "resources": {"limits": {"cpu": cpu, "memory": memory}, "requests": {"memory": memory}}})
    assert r.env_value("CLUSTER_INIT_WORKER_MEMORY") == per_worker
    assert r.env_value("CLUSTER_INIT_MEMORY_RESERVE") == (reserve or None)
    assert notes_workers(r.notes) == expected, r.notes


def test_notes_warn_when_a_fixed_pool_exceeds_the_cpu_limit(render):
    assert "WARNING: workers=4 exceeds the CPU budget of 2" in render({"workers": 4}).notes
    assert "exceeds the CPU budget" not in render({"workers": 2}).notes
    assert "exceeds the CPU budget" not in render({"workers": 3, "resources": {"limits": {"cpu": "3"}}}).notes


def test_notes_say_a_limit_sized_pool_follows_a_resize_and_others_do_not(render):
    assert "grows or shrinks the pool without a restart" in render().notes
    assert "Fixed at start" in render({"cpus": 2}).notes
    assert "Fixed at start" in render({"cpuFromRequests": True}).notes


@pytest.mark.parametrize("name, key, value", [
    ("CLUSTER_INIT_WORKER_MEMORY", "workerMemory", "300M"),
    ("CLUSTER_INIT_WORKER_MEMORY", "workerMemory", "1.5Gi"),
    ("CLUSTER_INIT_MEMORY_RESERVE", "memoryReserve", "64M"),
    ("CLUSTER_INIT_MEMORY_RESERVE", "memoryReserve", "0"),
    ("CLUSTER_INIT_BUDGET_INTERVAL", "budgetInterval", "5s"),
    ("CLUSTER_INIT_BUDGET_INTERVAL", "budgetInterval", "0"),
    ("CLUSTER_INIT_STALL_TIMEOUT", "stallTimeout", "30s"),
    ("CLUSTER_INIT_STALL_TIMEOUT", "stallTimeout", "0"),
    ("CLUSTER_INIT_MAX_WORKER_MEMORY", "maxWorkerMemory", "512M"),
    ("CLUSTER_INIT_WORKER_OUTPUT", "workerOutput", "json"),
    ("CLUSTER_INIT_READY_TIMEOUT", "readyTimeout", "2m"),
])
def test_pool_options_map_to_their_variables_and_the_binary_takes_them(render, name, key, value):
    assert render({key: value}).env_value(name) == value
    dry_run({name: value})


@pytest.mark.parametrize("key, bad", [
    ("workerMemory", "0"), ("workerMemory", "300m"), ("workerMemory", "lots"), ("workerMemory", "-1G"),
    ("memoryReserve", "64 M"), ("maxWorkerMemory", "1Q"),
    # A bare number other than 0 is refused by cluster-init: so by the schema.
    ("budgetInterval", "5"), ("budgetInterval", "soon"), ("stallTimeout", "30"), ("stallTimeout", "-1s"),
    ("readyTimeout", "60"), ("workerOutput", "pretty"),
])
def test_schema_refuses_what_cluster_init_would_refuse_for_pool_options(chart, key, bad):
    refuse(chart, {key: bad}, match=key)


# --- issue 14. in-place resize ------------------------------------------------------------------


def test_resize_policy_keeps_the_container_for_cpu_and_restarts_it_for_memory(render):
    assert render().container()["resizePolicy"] == [
        {"resourceName": "cpu", "restartPolicy": "NotRequired"},
        {"resourceName": "memory", "restartPolicy": "RestartContainer"},
    ]


def test_resize_policy_can_be_overridden_or_dropped(render):
    live = [{"resourceName": "cpu", "restartPolicy": "NotRequired"},
            {"resourceName": "memory", "restartPolicy": "NotRequired"}]
    assert render({"resizePolicy": live}).container()["resizePolicy"] == live
    assert "resizePolicy" not in render({"resizePolicy": []}).container()


@pytest.mark.parametrize("bad", [[{"resourceName": "gpu", "restartPolicy": "NotRequired"}],
                                 [{"resourceName": "cpu", "restartPolicy": "Never"}], [{"resourceName": "cpu"}]])
def test_schema_refuses_bad_resize_policy(chart, bad):
    refuse(chart, {"resizePolicy": bad}, match="resizePolicy")


# --- 2. drain by default ------------------------------------------------------------------------


def test_pre_stop_sleep_is_on_by_default_and_the_grace_period_covers_it(render):
    r = render()
    assert r.container()["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    stop = r.env_value("CLUSTER_INIT_STOP_TIMEOUT")
    assert stop == "25s"
    # Computed: the sleep, the stop timeout, and 5 s to flush the last spans and exit.
    assert r.pod_spec()["terminationGracePeriodSeconds"] == 5 + 25 + 5


@pytest.mark.parametrize("sleep, stop, grace", [(10, 25, 40), (0, 25, 30), (30, 60, 95), (5, 1, 11)])
def test_grace_period_is_computed_from_what_the_stop_needs(render, sleep, stop, grace):
    # Setting preStopSleepSeconds alone used to fail rendering (the grace period stayed 30).
    r = render({"preStopSleepSeconds": sleep, "stopTimeoutSeconds": stop})
    assert r.pod_spec()["terminationGracePeriodSeconds"] == grace
    assert r.env_value("CLUSTER_INIT_STOP_TIMEOUT") == f"{stop}s"


def test_no_pre_stop_hook_when_the_sleep_is_zero(render):
    assert "lifecycle" not in render({"preStopSleepSeconds": 0}).container()


def test_pre_stop_is_a_sleep_action_not_an_exec(render):
    r = render({"preStopSleepSeconds": 10})
    assert r.container()["lifecycle"] == {"preStop": {"sleep": {"seconds": 10}}}


def test_explicit_grace_period_one_second_longer_is_enough(render):
    r = render({"stopTimeoutSeconds": 25, "preStopSleepSeconds": 10, "terminationGracePeriodSeconds": 36})
    assert r.pod_spec()["terminationGracePeriodSeconds"] == 36


@pytest.mark.parametrize("stop, sleep, grace", [(25, 0, 25), (25, 0, 10), (25, 10, 35), (30, 5, 30), (25, 5, 30)])
def test_grace_period_not_larger_than_stop_timeout_and_pre_stop_fails_rendering(chart, stop, sleep, grace):
    values = {"stopTimeoutSeconds": stop, "preStopSleepSeconds": sleep, "terminationGracePeriodSeconds": grace}
    render_fails(chart, values, f"terminationGracePeriodSeconds ({grace}) must be larger than stopTimeoutSeconds "
                                f"({stop}) + preStopSleepSeconds ({sleep}) = {stop + sleep}")


@pytest.mark.parametrize("bad", [{"terminationGracePeriodSeconds": 0}, {"terminationGracePeriodSeconds": "35"},
                                 {"terminationGracePeriodSeconds": 1}, {"preStopSleepSeconds": -1},
                                 {"stopTimeoutSeconds": 0}, {"stopTimeoutSeconds": "25s"}])
def test_schema_refuses_bad_stop_values(chart, bad):
    refuse(chart, bad)


# --- 3. readiness the app controls --------------------------------------------------------------


def test_probes_default_to_cluster_init_s_admin_endpoint(render):
    r = render()
    container = r.container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert r.env_value("CLUSTER_INIT_ADMIN_LISTEN") == f":{ports['admin']}"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "admin"}
    assert "startupProbe" not in container
    assert "enabled" not in container["readinessProbe"]


def test_probes_can_ask_the_app_on_its_own_port_and_path(render):
    app = {"path": "/healthz", "port": "http"}
    r = render({"probes": {"readiness": {"httpGet": app}, "liveness": {"httpGet": {"path": "/alive", "port": 8080}},
                           "startup": {"enabled": True, "httpGet": {**app, "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                                       "failureThreshold": 60}}})
    container = r.container()
    assert container["readinessProbe"]["httpGet"] == app
    assert container["livenessProbe"]["httpGet"] == {"path": "/alive", "port": 8080}
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["failureThreshold"] == 60
    assert "enabled" not in startup


def test_probes_can_be_turned_off(render):
    container = render({"probes": {"liveness": {"enabled": False}}}).container()
    assert "livenessProbe" not in container
    assert "readinessProbe" in container


@pytest.mark.parametrize("bad", [
    {"readiness": {"tcpSocket": {"port": 8080}}},
    {"liveness": {"exec": {"command": ["true"]}}},
    {"startup": {"grpc": {"port": 9090}}},
    {"readiness": {"httpGet": {"path": "healthz", "port": "http"}}},
    {"readiness": {"httpGet": {"path": "/healthz", "port": 0}}},
    {"readiness": {"httpGet": {"path": "/", "port": "http", "scheme": "TCP"}}},
    {"readiness": {"periodSeconds": 0}},
])
def test_schema_refuses_probes_that_are_not_http(chart, bad):
    refuse(chart, {"probes": bad}, match="probes")


def test_a_probe_on_a_port_the_container_lacks_fails_rendering(chart):
    render_fails(chart, {"probes": {"readiness": {"httpGet": {"path": "/", "port": "web"}}}},
                 'probes.readiness.httpGet.port "web" is not a port of the server container')


def test_startup_probe_when_enabled(render):
    r = render({"probes": {"startup": {"enabled": True, "failureThreshold": 60}}})
    startup = r.container()["startupProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert startup["failureThreshold"] == 60


@pytest.mark.parametrize("ready", ["started", "notify", "2s", "1.5s", "500ms", "1m30s"])
def test_ready_modes(render, ready):
    r = render({"ready": ready})
    assert r.env_value("CLUSTER_INIT_READY") == ready
    assert dry_run({"CLUSTER_INIT_READY": ready})["ready"]


def test_ready_and_min_ready(render):
    r = render({"ready": "2s", "minReady": 2})
    assert r.env_value("CLUSTER_INIT_READY") == "2s"
    assert r.env_value("CLUSTER_INIT_MIN_READY") == "2"


@pytest.mark.parametrize("bad", [{"ready": "soon"}, {"ready": "2"}, {"minReady": 0}, {"log": {"level": "loud"}},
                                 {"log": {"format": "xml"}}])
def test_schema_refuses_what_cluster_init_would_refuse(chart, bad):
    refuse(chart, bad)


# --- 4. metrics ---------------------------------------------------------------------------------


def test_the_service_has_the_admin_port_as_metrics(render):
    ports = {p["name"]: p for p in render().one("Service")["spec"]["ports"]}
    assert ports["metrics"] == {"name": "metrics", "port": 9090, "targetPort": "admin", "protocol": "TCP"}
    ports = {p["name"]: p for p in render({"metrics": {"service": {"port": 9100}}}).one("Service")["spec"]["ports"]}
    assert ports["metrics"]["port"] == 9100
    service = render({"metrics": {"service": {"enabled": False}}}).one("Service")
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]


def test_service_monitor_scrapes_the_services_metrics_port(render):
    r = render({"metrics": {"serviceMonitor": {
        "enabled": True, "namespace": "monitoring", "labels": {"release": "kube-prometheus-stack"},
        "interval": "30s", "scrapeTimeout": "10s", "honorLabels": True, "jobLabel": "app.kubernetes.io/name",
        "relabelings": [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}],
        "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"], "regex": "go_.*"}],
        "targetLabels": ["team"], "podTargetLabels": ["app.kubernetes.io/version"]}}})
    monitor = r.one("ServiceMonitor")  # validated against the vendored CRD by render()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    service = r.one("Service")
    # It selects the chart's Service, in the release's namespace, by the port's name.
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = spec["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"], endpoint["scrapeTimeout"]) == (
        "metrics", "/metrics", "30s", "10s")
    assert endpoint["honorLabels"] is True
    assert endpoint["metricRelabelings"][0]["action"] == "drop"
    assert spec["targetLabels"] == ["team"]
    assert "PodMonitor" not in r.kinds()


def test_pod_monitor_scrapes_the_pods_admin_port(render):
    r = render({"metrics": {"service": {"enabled": False},
                            "podMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "kps"}}}})
    monitor = r.one("PodMonitor")
    pod_labels = r.template()["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in [p["name"] for p in r.container()["ports"]]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("admin", "/metrics", "15s")
    assert "ServiceMonitor" not in r.kinds()


def test_no_monitors_by_default(render):
    kinds = render().kinds()
    assert "ServiceMonitor" not in kinds and "PodMonitor" not in kinds


def test_one_monitor_at_a_time_and_a_service_monitor_needs_the_service_port(chart):
    render_fails(chart, {"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}},
                 "enable serviceMonitor or podMonitor, not both")
    render_fails(chart, {"metrics": {"serviceMonitor": {"enabled": True}, "service": {"enabled": False}}},
                 "metrics.serviceMonitor needs metrics.service.enabled")


@pytest.mark.parametrize("bad", [{"serviceMonitor": {"interval": "30"}}, {"podMonitor": {"scrapeTimeout": "1 s"}},
                                 {"service": {"port": 0}}, {"serviceMonitor": {"labels": {"a": 1}}}])
def test_schema_refuses_bad_monitor_values(chart, bad):
    refuse(chart, {"metrics": bad}, match="metrics")


def test_notes_warn_when_a_load_balancer_exposes_the_admin_port(render):
    assert "exposes cluster-init's admin endpoint" in render({"service": {"type": "LoadBalancer"}}).notes
    assert "exposes cluster-init's admin endpoint" not in render().notes
    values = {"service": {"type": "LoadBalancer"}, "metrics": {"service": {"enabled": False}}}
    assert "exposes cluster-init's admin endpoint" not in render(values).notes


README = (CHART_DIR / "README.md").read_text()


def test_readme_lists_the_metrics_an_autoscaler_wants():
    for metric in ["cluster_init_workers", "cluster_init_workers_desired", "cluster_init_restarts_total",
                   "cluster_init_worker_exits_total", "cluster_init_cpu_budget", "cluster_init_generation",
                   "cluster_init_ready", "cluster_init_start_time_seconds", "cluster_init_listen_queue",
                   "cluster_init_listen_backlog"]:
        assert re.search(rf"^\| `{metric}(\{{[^`]*\}})?` \|", README, re.M), metric
    # How to scale on the saturation signal, with either adapter.
    assert "prometheus-adapter" in README and "seriesQuery: 'cluster_init_listen_queue" in README
    assert "keda.sh/v1alpha1" in README and "stallTimeout" in README


# --- 5. extension points ------------------------------------------------------------------------

EXTENSIONS = ci_values(CHART_DIR / "ci" / "extensions-values.yaml")


def test_extension_points_land_where_they_belong(render):
    r = render(EXTENSIONS)
    deployment = r.one("Deployment")
    spec, pod = deployment["spec"], r.pod_spec()
    assert spec["strategy"] == EXTENSIONS["strategy"]
    assert spec["minReadySeconds"] == EXTENSIONS["minReadySeconds"]
    assert spec["revisionHistoryLimit"] == EXTENSIONS["revisionHistoryLimit"]
    for key in ["topologySpreadConstraints", "runtimeClassName", "priorityClassName", "hostAliases", "dnsConfig",
                "dnsPolicy"]:
        assert pod[key] == EXTENSIONS[key], key
    assert [c["name"] for c in pod["containers"]] == ["server"] + [c["name"] for c in EXTENSIONS["sidecars"]]
    assert [c["name"] for c in pod["initContainers"]] == [c["name"] for c in EXTENSIONS["initContainers"]]
    volumes = [v["name"] for v in pod["volumes"]]
    assert volumes == ["tmp"] + [v["name"] for v in EXTENSIONS["extraVolumes"]]
    mounts = [m["name"] for m in r.container()["volumeMounts"]]
    assert mounts == ["tmp"] + [m["name"] for m in EXTENSIONS["extraVolumeMounts"]]
    assert r.container()["envFrom"] == [{"configMapRef": {"name": "web-settings"}}]
    # After the chart's own variables.
    extra = [e["name"] for e in EXTENSIONS["extraEnv"]]
    assert r.env_names()[-len(extra):] == extra


def test_extension_values_are_templates(render):
    r = render(EXTENSIONS)
    sidecar = r.pod_spec()["containers"][1]
    assert "--upstream=http://localhost:8080" in sidecar["args"]
    assert r.pod_spec()["volumes"][1]["configMap"]["name"] == "web-proxy"


def test_service_extra_ports_and_ingress(render):
    r = render(EXTENSIONS)
    ports = [p["name"] for p in r.one("Service")["spec"]["ports"]]
    assert ports == ["http", "metrics", "proxy"]
    ingress = r.one("Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "web.example.com"
    assert rule["http"]["paths"][0]["backend"] == {"service": {"name": FULLNAME, "port": {"name": "http"}}}
    assert ingress["spec"]["tls"] == [{"secretName": "web-tls", "hosts": ["web.example.com"]}]


def test_no_ingress_by_default_and_one_needs_hosts(chart, render):
    assert "Ingress" not in render().kinds()
    render_fails(chart, {"ingress": {"enabled": True}}, "ingress.enabled needs ingress.hosts")


def test_extra_env_must_not_redefine_the_charts_variables(chart):
    render_fails(chart, {"extraEnv": [{"name": "CLUSTER_INIT_WORKERS", "value": "3"}]},
                 "extraEnv sets CLUSTER_INIT_WORKERS, which the chart sets from its values")
    render_fails(chart, {"ready": "notify", "extraEnv": [{"name": "CLUSTER_INIT_READY", "value": "2s"}]},
                 "extraEnv sets CLUSTER_INIT_READY")


def test_extra_env_may_set_what_the_chart_leaves_alone(render):
    r = render({"extraEnv": [{"name": "CLUSTER_INIT_BALANCE", "value": "shared"}, {"name": "CLUSTER_INIT_READY", "value": "2s"}]})
    assert r.env_value("CLUSTER_INIT_BALANCE") == "shared"
    assert r.env_value("CLUSTER_INIT_READY") == "2s"


@pytest.mark.parametrize("bad", [{"sidecars": [{"name": "server", "image": "x"}]}, {"sidecars": [{"image": "x"}]},
                                 {"service": {"extraPorts": [{"name": "http", "port": 81}]}},
                                 {"extraVolumeMounts": [{"name": "data"}]}, {"dnsPolicy": "Sometimes"},
                                 {"ingress": {"hosts": [{"host": "a", "paths": [{"path": "/", "pathType": "Regex"}]}]}}])
def test_schema_refuses_bad_extension_values(chart, bad):
    refuse(chart, bad)


def test_a_native_sidecar_collector_as_the_readme_recommends(render):
    values = ci_values(CHART_DIR / "ci" / "sidecar-collector-values.yaml")
    r = render(values)
    [collector] = r.pod_spec()["initContainers"]
    assert collector["restartPolicy"] == "Always"
    assert r.env_value("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://localhost:4318"
    # Restricted Pod Security holds for it too.
    assert collector["securityContext"]["runAsNonRoot"] is True
    assert collector["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_replicas_omitted_for_an_autoscaler_of_your_own(render):
    assert "replicas" not in render({"replicaCount": None}).one("Deployment")["spec"]
    assert render({"replicaCount": 3}).one("Deployment")["spec"]["replicas"] == 3


# --- 6. defaults that cannot hurt: HPA and PDB --------------------------------------------------


def test_hpa_only_when_enabled(render):
    assert "HorizontalPodAutoscaler" not in render().kinds()
    r = render({"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}})
    hpa = r.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    # The HPA owns the replica count.
    assert "replicas" not in r.one("Deployment")["spec"]


def test_hpa_memory_target_custom_metrics_and_behavior(render):
    pods_metric = {"type": "Pods", "pods": {"metric": {"name": "cluster_init_listen_queue"},
                                            "target": {"type": "AverageValue", "averageValue": "5"}}}
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 300}}
    r = render({"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": "",
                                "targetMemoryUtilizationPercentage": 75, "metrics": [pods_metric], "behavior": behavior}})
    spec = r.one("HorizontalPodAutoscaler")["spec"]
    assert spec["metrics"][0] == {"type": "Resource", "resource": {"name": "memory", "target": {
        "type": "Utilization", "averageUtilization": 75}}}
    assert spec["metrics"][1] == pods_metric
    assert spec["behavior"] == behavior


def test_hpa_needs_a_target_and_the_requests_its_targets_divide(chart):
    render_fails(chart, {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": ""}},
                 "autoscaling needs a target")
    render_fails(chart, {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}, "limits": {"cpu": None}}},
                 "autoscaling on CPU utilisation needs resources.requests.cpu")
    render_fails(chart, {"autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80},
                         "resources": {"requests": {"memory": None}, "limits": {"memory": None}}},
                 "autoscaling on memory utilisation needs resources.requests.memory")
    render_fails(chart, {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
                 "autoscaling.minReplicas (5) must not exceed maxReplicas (2)")


def test_notes_explain_the_cpu_target_against_requests_when_max_follows_limits(render):
    notes = render({"autoscaling": {"enabled": True}}).notes
    # Defaults: request 500m, limit 2, target 80%.
    assert "the HPA's CPU target (80%) is a share of resources.requests.cpu (500m)" in notes
    assert "once they average\n0.4 CPUs" in notes
    assert "up to 2 CPUs\n(400% of its request)" in notes
    for aligned in [{"resources": {"requests": {"cpu": "2"}}}, {"cpuFromRequests": True}, {"workers": 2},
                    {"autoscaling": {"targetCPUUtilizationPercentage": "", "targetMemoryUtilizationPercentage": 80}}]:
        assert "is a share of resources.requests.cpu" not in render(merged({"autoscaling": {"enabled": True}}, aligned)).notes


def test_pdb_by_default_never_blocks_a_drain(render):
    r = render()
    pdb = r.one("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["spec"]["selector"]["matchLabels"] == r.one("Deployment")["spec"]["selector"]["matchLabels"]
    assert "allows no eviction" not in r.notes
    assert "A single pod: the PodDisruptionBudget lets a node drain evict it" in r.notes


@pytest.mark.parametrize("values", [
    {"podDisruptionBudget": {"minAvailable": 1}},
    {"podDisruptionBudget": {"minAvailable": 2}, "replicaCount": 2},
    {"podDisruptionBudget": {"minAvailable": "100%"}, "replicaCount": 3},
    {"podDisruptionBudget": {"maxUnavailable": 0}, "replicaCount": 3},
    {"podDisruptionBudget": {"minAvailable": 2}, "autoscaling": {"enabled": True, "minReplicas": 2}},
])
def test_notes_warn_when_the_pdb_allows_no_eviction(render, values):
    assert "allows no eviction" in render(values).notes


@pytest.mark.parametrize("values", [
    {"podDisruptionBudget": {"minAvailable": 1}, "replicaCount": 2},
    {"podDisruptionBudget": {"minAvailable": "50%"}, "replicaCount": 2},
    {"podDisruptionBudget": {"maxUnavailable": "25%"}, "replicaCount": 4},
])
def test_notes_do_not_warn_when_the_pdb_allows_evictions(render, values):
    assert "allows no eviction" not in render(values).notes


def test_pdb_takes_one_of_min_available_and_max_unavailable(chart, render):
    pdb = render({"podDisruptionBudget": {"maxUnavailable": "50%"}}).one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == "50%"
    pdb = render({"podDisruptionBudget": {"minAvailable": 2, "unhealthyPodEvictionPolicy": ""}}).one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2 and "unhealthyPodEvictionPolicy" not in pdb["spec"]
    render_fails(chart, {"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}},
                 "podDisruptionBudget: set minAvailable or maxUnavailable, not both")
    assert "PodDisruptionBudget" not in render({"podDisruptionBudget": {"enabled": False}}).kinds()


def test_rollouts_start_a_new_pod_before_stopping_an_old_one(render):
    assert render().one("Deployment")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


# --- telemetry ----------------------------------------------------------------------------------


def test_otel_unset_means_no_otel_variables(render):
    assert [n for n in render().env_names() if n.startswith("OTEL_")] == []


def test_otel_endpoint_turns_tracing_on_with_the_pod_identity(render):
    r = render({"otel": {"endpoint": "http://otel-collector:4318",
                         "resourceAttributes": {"deployment.environment.name": "staging"}}})
    assert r.env_value("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector:4318"
    assert r.env_value("OTEL_SERVICE_NAME") == FULLNAME
    attrs = r.env_value("OTEL_RESOURCE_ATTRIBUTES").split(",")
    for expected in ["k8s.pod.name=$(POD_NAME)", "k8s.namespace.name=$(POD_NAMESPACE)",
                     "k8s.node.name=$(NODE_NAME)", "deployment.environment.name=staging"]:
        assert expected in attrs
    # $(VAR) only expands variables defined earlier in the list.
    names = r.env_names()
    for var, path in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"),
                      ("NODE_NAME", "spec.nodeName")]:
        assert names.index(var) < names.index("OTEL_RESOURCE_ATTRIBUTES")
        assert r.env_var(var)["valueFrom"] == {"fieldRef": {"fieldPath": path}}


def test_otel_service_name_can_be_set(render):
    r = render({"otel": {"endpoint": "http://c:4318", "serviceName": "checkout"}})
    assert r.env_value("OTEL_SERVICE_NAME") == "checkout"


@pytest.mark.parametrize("bad", [{"endpoint": "otel-collector:4318"}, {"resourceAttributes": {"a": "b,c=d"}}])
def test_schema_refuses_bad_otel_settings(chart, bad):
    refuse(chart, {"otel": bad}, match="otel")


def test_existing_service_account(render):
    r = render({"serviceAccount": {"create": False, "name": "runner"}})
    assert "ServiceAccount" not in r.kinds()
    assert r.pod_spec()["serviceAccountName"] == "runner"


# --- the ci/ variants and the examples' values --------------------------------------------------


def test_there_are_ci_variants():
    assert len(CI_VALUES) >= 15, CI_VALUES
    assert EXAMPLE_VALUES, "examples/*/chart-values.yaml"


@pytest.mark.parametrize("path", CI_VALUES + EXAMPLE_VALUES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_values_file_renders_validates_and_lints_clean(chart, render, path):
    # Each file stands alone, as chart-testing (ct) uses ci/*-values.yaml: it names its image.
    values = ci_values(path)
    chart.validate_schema(values)
    r = render(values, image=False)  # validates every object for each Kubernetes version
    assert "Deployment" in r.kinds()
    assert lint_problems(values) == []
    assert lint_problems(values, kube_version="v1.30.0") == []


# --- the binary accepts what the chart renders ------------------------------------------------

# What the Downward API would put in variables that come from valueFrom.
DOWNWARD = {"requests.cpu": "1500", "limits.cpu": "2000", "metadata.name": "pod-0",
            "metadata.namespace": "default", "spec.nodeName": "node-0"}


def container_env(r: Rendered) -> dict[str, str]:
    env = {}
    for e in r.env():
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "valueFrom" in e:
            ref = e["valueFrom"].get("resourceFieldRef") or e["valueFrom"].get("fieldRef")
            # A Secret's or ConfigMap's value is the user's: a placeholder will do.
            env[e["name"]] = DOWNWARD[ref.get("resource") or ref.get("fieldPath")] if ref else "from-a-secret"
    return env


@pytest.mark.parametrize("path", [None] + CI_VALUES + EXAMPLE_VALUES,
                         ids=lambda p: f"{p.parent.name}/{p.name}" if p else "defaults")
def test_the_binary_accepts_the_rendered_configuration(render, path):
    """cluster-init --dry-run with exactly the pod's environment: every CLUSTER_INIT_* and OTEL_*
    value the chart writes parses, so no rendered pod exits 2 at start."""
    r = render(ci_values(path), image=False) if path else render()
    env = container_env(r)
    # $(VAR) references are expanded by the kubelet.
    env = {k: re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), ""), v) for k, v in env.items()}
    plan = dry_run(env)
    assert plan["workers_spec"] == env.get("CLUSTER_INIT_WORKERS")
    if "CLUSTER_INIT_LISTEN" in env:
        assert plan["listen"] == env["CLUSTER_INIT_LISTEN"].split(",")
    if "CLUSTER_INIT_CPU_MILLIS" in env:
        assert plan["cpu"]["explicit"] == 1.5
    if "CLUSTER_INIT_CPU_ROUND" in env:
        assert plan["cpu"]["rounding"] == env["CLUSTER_INIT_CPU_ROUND"]


def test_every_optional_variable_is_exercised_by_some_ci_variant(render):
    # So that the dry-run test above sees each of them at least once.
    seen = set()
    for path in CI_VALUES:
        seen |= set(render(ci_values(path), image=False).env_names())
    assert set(OPTIONAL_ENV) - seen == set()


# --- documentation ------------------------------------------------------------------------------


def test_the_readme_values_table_is_generated_from_values_yaml():
    current = values_table.with_table(README, values_table.table(values_table.rows()))
    assert current == README, (
        f"charts/cluster-init/README.md's values table is out of date: run `{values_table.COMMAND}` "
        "from the repository root")


def test_every_value_is_documented_in_values_yaml():
    assert values_table.uncovered() == [], "values without a `# --` comment (on them or a parent)"


def test_the_table_generator_follows_helm_docs_conventions(tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text("# a note for readers\n# -- Replicas.\n# Continued.\nreplicas: 1\n"
                      "nested:\n  # -- A map.\n  # @default -- computed\n  map: {}\n  undocumented: x\n")
    assert values_table.rows(values) == [values_table.Row("replicas", "int", "`1`", "Replicas. Continued."),
                                         values_table.Row("nested.map", "object", "computed", "A map.")]
    assert values_table.uncovered(values) == ["nested.undocumented"]


def test_the_readme_maps_every_variable_the_chart_can_set(render):
    section = README.split("## How the chart drives cluster-init")[1].split("\n## ")[0]
    names = set()
    for path in CI_VALUES:
        names |= {n for n in render(ci_values(path), image=False).env_names()
                  if n.startswith(("CLUSTER_INIT_", "OTEL_", "POD_", "NODE_"))}
    extra = {e["name"] for p in CI_VALUES for e in ci_values(p).get("extraEnv", [])}
    for name in sorted(names - extra):
        assert f"`{name}`" in section, f"{name} is not in the README's table of variables"


def test_schema_knows_every_value(chart):
    schema = chart.schema

    def check(values: dict[str, Any], node: dict[str, Any], prefix: str) -> None:
        for key, value in values.items():
            props = node.get("properties", {})
            assert key in props, f"{prefix}{key} is not in values.schema.json"
            target = props[key]
            if isinstance(value, dict) and value and "properties" in target:
                check(value, target, f"{prefix}{key}.")

    check(chart.values, schema, "")
