"""Scenarios for the Helm chart (charts/cluster-init), rendered offline with Helm's own engine.

Each test renders the chart with some values through helm-python-sdk (Helm 4's Go SDK, no helm
binary, no cluster), parses every manifest as YAML, validates every object against the
Kubernetes schemas (strict: unknown fields fail) for 1.30 and the newest version
kubernetes-validate carries, and checks the mapping from values to what cluster-init reads.

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
from typing import Any

import helm_python
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

CHART_DIR = pathlib.Path(__file__).resolve().parents[2] / "charts" / "cluster-init"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RELEASE = "web"
NAMESPACE = "prod"
FULLNAME = "web-cluster-init"

# The oldest Kubernetes the chart supports (preStop sleep actions) and the newest we can check.
KUBE_VERSIONS = ["1.30", kubernetes_validate.utils.latest_version()]

# Lint severities (helm_python.lint): 1 info, 2 warning, 3 error.
WARNING = 2


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

    def pod_spec(self) -> dict[str, Any]:
        return self.one("Deployment")["spec"]["template"]["spec"]

    def container(self) -> dict[str, Any]:
        containers = self.pod_spec()["containers"]
        assert len(containers) == 1
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
    def do(values: dict[str, Any] | None = None) -> Rendered:
        rendered = Rendered(chart.render(values or {}, name=RELEASE, namespace=NAMESPACE))
        for obj in rendered.objects:
            validate(obj)
        return rendered

    return do


_VALIDATED: set[str] = set()


def validate(obj: dict[str, Any]) -> None:
    # Many renders give identical objects, and each validation loads the schemas anew.
    key = json.dumps(obj, sort_keys=True)
    if key in _VALIDATED:
        return
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


# --- defaults -----------------------------------------------------------------------------------


def test_defaults_render_a_deployment_a_service_and_a_service_account(render):
    assert render().kinds() == ["Deployment", "Service", "ServiceAccount"]


def test_defaults_lint_clean_for_the_oldest_and_the_default_kubernetes():
    assert lint_problems({}) == []
    assert lint_problems({}, kube_version="v1.30.0") == []


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
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert service["spec"]["selector"] == r.one("Deployment")["spec"]["selector"]["matchLabels"]


def test_listen_follows_the_container_port(render):
    r = render({"containerPort": 3000, "admin": {"port": 3001}})
    assert r.env_value("CLUSTER_INIT_LISTEN") == "http=:3000"
    assert r.env_value("CLUSTER_INIT_ADMIN_LISTEN") == ":3001"
    ports = {p["name"]: p["containerPort"] for p in r.container()["ports"]}
    assert ports == {"http": 3000, "admin": 3001}


def test_stop_timeout_is_shorter_than_the_grace_period(render):
    r = render()
    stop = r.env_value("CLUSTER_INIT_STOP_TIMEOUT")
    assert re.fullmatch(r"\d+s", stop), stop
    assert int(stop[:-1]) < r.pod_spec()["terminationGracePeriodSeconds"]


def test_probes_are_http_on_the_admin_endpoint(render):
    r = render()
    container = r.container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert r.env_value("CLUSTER_INIT_ADMIN_LISTEN") == f":{ports['admin']}"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "admin"}
    assert "startupProbe" not in container


def test_no_tcp_socket_probe_anywhere(render):
    for values in [{}, {"probes": {"startup": {"enabled": True}}}] + [ci_values(p) for p in CI_VALUES]:
        for obj in render(values).objects:
            assert "tcpSocket" not in [k for k, _ in walk(obj)], values


def test_startup_probe_when_enabled(render):
    r = render({"probes": {"startup": {"enabled": True, "failureThreshold": 60}}})
    startup = r.container()["startupProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert startup["failureThreshold"] == 60
    assert "enabled" not in startup


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


def test_every_object_carries_the_recommended_labels(render):
    r = render()
    expected = {
        "app.kubernetes.io/name": "cluster-init",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/version": "0.1.0",
        "app.kubernetes.io/component": "server",
        "app.kubernetes.io/managed-by": "Helm",
    }
    for obj in r.objects + [r.one("Deployment")["spec"]["template"]]:
        labels = obj["metadata"]["labels"]
        assert expected.items() <= labels.items(), (obj.get("kind"), labels)
    assert r.one("Deployment")["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "cluster-init",
        "app.kubernetes.io/instance": RELEASE,
    }


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


def test_optional_settings_are_left_to_cluster_init_by_default(render):
    names = render().env_names()
    for name in ["CLUSTER_INIT_READY", "CLUSTER_INIT_MIN_READY", "CLUSTER_INIT_CPUS", "CLUSTER_INIT_CPU_MILLIS"]:
        assert name not in names


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
    with pytest.raises(helm_python.HelmValuesError, match="workers"):
        chart.validate_schema({"workers": bad})
    # Rendering (helm install/template) checks the schema too.
    with pytest.raises(helm_python.HelmValuesError):
        chart.render({"workers": bad}, name=RELEASE)


def test_templates_refuse_bad_workers_even_without_the_schema(tmp_path):
    # `helm install --skip-schema-validation`: here, a copy of the chart without its schema.
    # (lint is no use: in lint mode Helm logs `fail` instead of failing.)
    copy_dir = tmp_path / "cluster-init"
    shutil.copytree(CHART_DIR, copy_dir)
    (copy_dir / "values.schema.json").unlink()
    message = 'workers must be max, a whole number N >= 1, or max-K with K >= 1; got "max-0"'
    with helm_python.Chart.load(copy_dir) as unchecked:
        with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
            unchecked.render({"workers": "max-0"}, name=RELEASE)
        unchecked.render({"workers": "max-2"}, name=RELEASE)


def test_schema_refuses_unknown_keys(chart):
    with pytest.raises(helm_python.HelmValuesError, match="worker"):
        chart.validate_schema({"worker": 4})


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
    with pytest.raises(helm_python.HelmValuesError, match="cpus"):
        chart.validate_schema({"cpus": bad})


def test_cpus_and_cpu_from_requests_are_exclusive(chart):
    with pytest.raises(helm_python.HelmRenderError, match="set cpuFromRequests or cpus, not both"):
        chart.render({"cpus": 2, "cpuFromRequests": True}, name=RELEASE)


def test_cpu_from_requests_needs_a_cpu_request(chart):
    values = {"cpuFromRequests": True, "resources": {"requests": {"cpu": None}, "limits": {"cpu": None}}}
    with pytest.raises(helm_python.HelmRenderError, match="cpuFromRequests needs resources.requests.cpu"):
        chart.render(values, name=RELEASE)


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


# --- graceful stop ------------------------------------------------------------------------------


def test_stop_timeout_reaches_cluster_init_in_seconds(render):
    r = render({"stopTimeoutSeconds": 50, "terminationGracePeriodSeconds": 60})
    assert r.env_value("CLUSTER_INIT_STOP_TIMEOUT") == "50s"
    assert r.pod_spec()["terminationGracePeriodSeconds"] == 60


@pytest.mark.parametrize(
    "stop, sleep, grace",
    [(25, 0, 25), (25, 0, 10), (25, 10, 35), (30, 5, 30)],
)
def test_grace_period_not_larger_than_stop_timeout_and_pre_stop_fails_rendering(chart, stop, sleep, grace):
    values = {"stopTimeoutSeconds": stop, "preStopSleepSeconds": sleep, "terminationGracePeriodSeconds": grace}
    message = (
        f"terminationGracePeriodSeconds ({grace}) must be larger than stopTimeoutSeconds ({stop}) "
        f"+ preStopSleepSeconds ({sleep}) = {stop + sleep}"
    )
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        chart.render(values, name=RELEASE)


def test_grace_period_one_second_longer_is_enough(render):
    render({"stopTimeoutSeconds": 25, "preStopSleepSeconds": 10, "terminationGracePeriodSeconds": 36})


def test_pre_stop_is_a_sleep_action_not_an_exec(render):
    r = render({"preStopSleepSeconds": 10, "terminationGracePeriodSeconds": 40})
    assert r.container()["lifecycle"] == {"preStop": {"sleep": {"seconds": 10}}}


def test_no_pre_stop_hook_by_default(render):
    assert "lifecycle" not in render().container()


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
    with pytest.raises(helm_python.HelmValuesError, match="otel"):
        chart.validate_schema({"otel": bad})


# --- pass-through and options -------------------------------------------------------------------


def test_extra_env_is_passed_through_after_the_charts_own(render):
    r = render({"env": [{"name": "NODE_ENV", "value": "production"}]})
    assert r.env_value("NODE_ENV") == "production"
    assert r.env_names()[-1] == "NODE_ENV"


@pytest.mark.parametrize("bad", [{"ready": "soon"}, {"ready": "2"}, {"minReady": 0}, {"log": {"level": "loud"}},
                                 {"log": {"format": "xml"}}])
def test_schema_refuses_what_cluster_init_would_refuse(chart, bad):
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(bad)


@pytest.mark.parametrize("ready", ["started", "notify", "2s", "1.5s", "500ms", "1m30s"])
def test_ready_modes(render, ready):
    assert render({"ready": ready}).env_value("CLUSTER_INIT_READY") == ready


def test_ready_and_min_ready(render):
    r = render({"ready": "2s", "minReady": 2})
    assert r.env_value("CLUSTER_INIT_READY") == "2s"
    assert r.env_value("CLUSTER_INIT_MIN_READY") == "2"


def test_hpa_and_pdb_only_when_enabled(render):
    assert "HorizontalPodAutoscaler" not in render().kinds()
    assert "PodDisruptionBudget" not in render().kinds()
    r = render({"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
                "podDisruptionBudget": {"enabled": True}})
    hpa = r.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    # The HPA owns the replica count.
    assert "replicas" not in r.one("Deployment")["spec"]
    pdb = r.one("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == r.one("Deployment")["spec"]["selector"]["matchLabels"]


def test_pdb_takes_one_of_min_available_and_max_unavailable(chart, render):
    pdb = render({"podDisruptionBudget": {"enabled": True, "minAvailable": "", "maxUnavailable": "50%"}})
    assert pdb.one("PodDisruptionBudget")["spec"] == {
        "maxUnavailable": "50%",
        "selector": {"matchLabels": {"app.kubernetes.io/name": "cluster-init", "app.kubernetes.io/instance": RELEASE}},
    }
    with pytest.raises(helm_python.HelmRenderError, match="exactly one of minAvailable and maxUnavailable"):
        chart.render({"podDisruptionBudget": {"enabled": True, "maxUnavailable": 1}}, name=RELEASE)


def test_image_and_pull_secrets(render):
    r = render({"image": {"repository": "example/api", "tag": "1.2.3"}, "imagePullSecrets": [{"name": "regcred"}]})
    assert r.container()["image"] == "example/api:1.2.3"
    assert r.pod_spec()["imagePullSecrets"] == [{"name": "regcred"}]


def test_existing_service_account(render):
    r = render({"serviceAccount": {"create": False, "name": "runner"}})
    assert "ServiceAccount" not in r.kinds()
    assert r.pod_spec()["serviceAccountName"] == "runner"


# --- the ci/ variants ---------------------------------------------------------------------------


def test_there_are_ci_variants():
    assert len(CI_VALUES) >= 7, CI_VALUES


@pytest.mark.parametrize("path", CI_VALUES, ids=lambda p: p.name)
def test_ci_variant_renders_validates_and_lints_clean(chart, render, path):
    values = ci_values(path)
    chart.validate_schema(values)
    r = render(values)  # validates every object for each Kubernetes version
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
            ref = e["valueFrom"].get("resourceFieldRef") or e["valueFrom"].get("fieldRef") or {}
            env[e["name"]] = DOWNWARD[ref.get("resource") or ref.get("fieldPath")]
    return env


@pytest.mark.parametrize("path", [None] + CI_VALUES, ids=lambda p: p.name if p else "defaults")
def test_the_binary_accepts_the_rendered_configuration(render, path):
    """cluster-init --dry-run with exactly the pod's environment: every CLUSTER_INIT_* and OTEL_*
    value the chart writes parses, so no rendered pod exits 2 at start."""
    binary = os.environ.get("CLUSTER_INIT_BIN")
    if not binary:
        pytest.skip("CLUSTER_INIT_BIN is set by tests/chart.rs")
    r = render(ci_values(path) if path else {})
    env = container_env(r)
    # $(VAR) references are expanded by the kubelet.
    env = {k: re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), ""), v) for k, v in env.items()}
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    out = subprocess.run([binary, "--dry-run", "--", "true"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"{out.stderr}\nenv: {env}"
    plan = json.loads(out.stdout)
    workers = env.get("CLUSTER_INIT_WORKERS")
    assert plan["workers_spec"] == workers
    if "CLUSTER_INIT_LISTEN" in env:
        assert plan["listen"] == env["CLUSTER_INIT_LISTEN"].split(",")
    if "CLUSTER_INIT_CPU_MILLIS" in env:
        assert plan["cpu"]["explicit"] == 1.5


# --- documentation ------------------------------------------------------------------------------

# Values whose contents are free-form maps: documented as a whole.
FREE_FORM = {"resources", "podSecurityContext", "securityContext", "otel.resourceAttributes",
             "service.annotations", "serviceAccount.annotations", "podAnnotations", "podLabels",
             "nodeSelector", "affinity", "probes.readiness", "probes.liveness", "probes.startup"}


def value_keys(values: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for k, v in values.items():
        key = prefix + k
        if isinstance(v, dict) and key not in FREE_FORM:
            keys |= value_keys(v, key + ".")
        else:
            keys.add(key)
    return keys


def readme_keys() -> set[str]:
    keys = set()
    for line in (CHART_DIR / "README.md").read_text().splitlines():
        m = re.match(r"^\| `([A-Za-z0-9.]+)`", line)
        if m and not m.group(1).startswith(("CLUSTER_INIT", "OTEL_", "POD_")):
            keys.add(m.group(1))
    return keys


def test_readme_documents_every_value_and_no_other(chart):
    keys = value_keys(chart.values)
    documented = readme_keys()
    assert keys - documented == set(), "values missing from README.md's table"
    # A row may detail a free-form value (probes.startup.enabled).
    stale = {d for d in documented - keys if not any(d.startswith(k + ".") for k in keys)}
    assert stale == set(), "README.md documents values that do not exist"


def test_schema_knows_every_value(chart):
    schema = chart.schema
    for key in value_keys(chart.values):
        node = schema
        for part in key.split("."):
            assert part in node.get("properties", {}), f"{key} is not in values.schema.json"
            node = node["properties"][part]
