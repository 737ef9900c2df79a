"""deploy/ checked offline: Kubernetes manifests, the Compose file, alert rules, the dashboard.

The tools come from scripts/deploy-tools.sh (scripts/test runs it): kustomize and kubeconform
(Go modules), compose-config (compose-go, the loader `docker compose config` uses),
dockerfile-check (BuildKit's Dockerfile parser and linter), promtool (Debian's prometheus
package) and Kubernetes JSON schemas (the kubernetes-validate wheel). A missing tool fails its
test with one line saying how to get it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
TOOLS = REPO / ".tools"
K8S_VERSIONS = ("1.30.0", "1.37.0")  # scripts/deploy-tools.sh fetches these schemas
METRIC = re.compile(r"\b((?:streamwise|process|python)_[a-z_]+)")


def _tool(name: str) -> str:
    path = TOOLS / "bin" / name
    if path.is_file():
        return str(path)
    found = shutil.which(name) if name == "promtool" else None
    if not found:
        pytest.fail(f"{name} not found: run scripts/deploy-tools.sh (as root it also installs "
                    "Debian's prometheus package for promtool)", pytrace=False)
    return found


def _run(*cmd: str, stdin: bytes | None = None) -> str:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=300, check=False)
    assert proc.returncode == 0, (f"{' '.join(cmd)} exited {proc.returncode}:\n"
                                  f"{proc.stdout.decode()}\n{proc.stderr.decode()}")
    return proc.stdout.decode()


def _cli_env_names() -> set[str]:
    """Every STREAMWISE_* variable engine/cli.py reads."""
    source = (REPO / "engine" / "cli.py").read_text()
    return {f"STREAMWISE_{n}" for n in re.findall(r'_env\("([A-Z_]+)"', source)}


# -- Kubernetes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s_build() -> tuple[str, list[dict]]:
    text = _run(_tool("kustomize"), "build", str(DEPLOY / "k8s"))
    return text, [d for d in yaml.safe_load_all(text) if d]


def test_manifests_are_valid_kubernetes(k8s_build, tmp_path):
    text, docs = k8s_build
    built = tmp_path / "streamwise.yaml"
    built.write_text(text)
    kubeconform = _tool("kubeconform")
    for version in K8S_VERSIONS:
        schemas = TOOLS / "k8s-schemas" / f"v{version}-local-strict"
        if not schemas.is_dir():
            pytest.fail(f"no Kubernetes {version} schemas in {schemas}: run "
                        "scripts/deploy-tools.sh", pytrace=False)
        out = _run(kubeconform, "-strict", "-summary", "-kubernetes-version", version,
                   "-schema-location",
                   str(TOOLS / "k8s-schemas") + "/{{ .NormalizedKubernetesVersion }}-local"
                   "{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json",
                   str(built))
        assert f"Valid: {len(docs)}, Invalid: 0, Errors: 0, Skipped: 0" in out, out
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "PodDisruptionBudget", "Secret", "Service", "Service",
                     "StatefulSet"]


def test_statefulset_runs_the_worker_as_deployed(k8s_build):
    _, docs = k8s_build
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    (sts,) = by_kind["StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    headless = [s for s in by_kind["Service"] if s["spec"].get("clusterIP") == "None"]
    assert [s["metadata"]["name"] for s in headless] == [sts["spec"]["serviceName"]]
    # Stable identity: the advertised URL is the pod's name under the headless Service.
    args = worker["args"]
    url = args[args.index("--advertise-url") + 1]
    assert url == f"http://$(POD_NAME).{sts['spec']['serviceName']}:6066"
    pod_name = next(e for e in worker["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # Probes on the worker's endpoints, one volume per worker mounted at the data dir.
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (config,) = by_kind["ConfigMap"]
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == config["data"]["STREAMWISE_DATA_DIR"]
    # Non-root, read-only root filesystem, nothing extra.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    assert worker["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["enableServiceLinks"] is False  # Service env vars share the STREAMWISE_ prefix
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert worker["resources"]["requests"]["memory"] and worker["resources"]["limits"]["memory"]
    # Settings are the CLI's own variables; the token comes from the Secret.
    known = _cli_env_names()
    assert set(config["data"]) <= known, set(config["data"]) - known
    (secret,) = by_kind["Secret"]
    token = next(e for e in worker["env"] if e["name"] == "STREAMWISE_API_TOKEN")
    ref = token["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]
    (pdb,) = by_kind["PodDisruptionBudget"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in by_kind["Service"]:
        assert service["spec"]["selector"].items() <= labels.items()


# -- Image --------------------------------------------------------------------------------------


def test_dockerfile_builds_a_wheel_and_runs_it_as_non_root():
    stages = json.loads(_run(_tool("dockerfile-check"), str(REPO / "Dockerfile")))
    assert [s["name"] for s in stages] == ["builder", "runtime"]
    builder, runtime = (_by_verb(s) for s in stages)
    assert any("build-essential" in i for i in builder["RUN"])
    assert any("pip wheel --no-deps" in i for i in builder["RUN"])
    assert runtime["COPY"] == ["COPY --from=builder /wheels /tmp/wheels"]
    install = [i for i in runtime["RUN"] if "pip install" in i]
    assert install == ["RUN pip install /tmp/wheels/*.whl && rm -rf /tmp/wheels"]  # no extras
    assert stages[1]["base"].endswith("-slim")
    (user,) = runtime["USER"]
    uid = user.split()[1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: Kubernetes' runAsNonRoot can check it
    (health,) = runtime["HEALTHCHECK"]
    assert "/healthz" in health
    assert runtime["ENTRYPOINT"] == ['ENTRYPOINT ["streamwise"]']
    # The build context is an allow-list: the wheel needs these, and nothing else gets in.
    allowed = [line[1:].rstrip("/") for line in
               (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    assert sorted(allowed) == ["README.md", "engine", "pyproject.toml", "topologies"]


def _by_verb(stage: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for instruction in stage["instructions"]:
        out.setdefault(instruction.split()[0], []).append(instruction)
    return out


# -- Compose ------------------------------------------------------------------------------------


def test_compose_file_is_valid():
    out = _run(_tool("compose-config"), "-f", str(DEPLOY / "compose" / "docker-compose.yml"))
    project = json.loads(out)
    services = project["services"]
    assert set(services) == {"kafka", "worker-1", "worker-2", "prometheus", "grafana"}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    known = _cli_env_names()
    for name in ("worker-1", "worker-2"):
        build = services[name]["build"]
        assert Path(build["context"]) == REPO
        assert (REPO / build["dockerfile"]).is_file()
        env = {k for k in services[name]["environment"] if k.startswith("STREAMWISE_")}
        assert env <= known, env - known
    for service in services.values():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), volume
                assert volume.get("read_only"), volume
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", port


# -- Prometheus and Grafana ----------------------------------------------------------------------


def test_alert_rules_check_and_pass_their_unit_tests():
    promtool = _tool("promtool")
    _run(promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))
    _run(promtool, "test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml"))
    _run(promtool, "check", "config", "--syntax-only",
         str(DEPLOY / "prometheus" / "prometheus.yml"))


def _dashboard_exprs() -> list[str]:
    doc = json.loads((DEPLOY / "grafana" / "dashboards" / "streamwise.json").read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def test_dashboard_queries_are_valid_promql(tmp_path):
    values = {"$__rate_interval": "1m", "$topology": "fraud", "$stage": "total",
              "$job": "streamwise"}
    rules = []
    for i, expr in enumerate(_dashboard_exprs()):
        for var, value in values.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unknown dashboard variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _run(_tool("promtool"), "check", "rules", str(path))


def _exposed_metric_names() -> set[str]:
    """Every family a worker exposes, from a Worker built in-process (nothing started)."""
    from prometheus_client.parser import text_string_to_metric_families

    from engine.cli import _build_decider
    from engine.clock import SystemClock
    from engine.config import EngineConfig
    from engine.worker import Worker
    from topologies import get

    topology = get("fraud")
    args = argparse.Namespace(models_dir=None, model=[], inject_faults="")
    decider, models = _build_decider(topology, args, SystemClock())
    worker = Worker(EngineConfig(), topology, decider, models=models)
    from prometheus_client import generate_latest

    text = generate_latest(worker.registry).decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples} | {family.name}
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def test_dashboard_and_alerts_use_metrics_the_worker_exposes():
    exposed = _exposed_metric_names()
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    used = {m for e in _dashboard_exprs() for m in METRIC.findall(e)}
    used |= set(METRIC.findall(alerts))
    assert used, "no metric found in the dashboard and alerts"
    assert used <= exposed, sorted(used - exposed)
