"""deploy/ checked offline: Kubernetes manifests, the Compose file, alert rules, the dashboard.

The tools come from scripts/deploy-tools.sh (scripts/test runs it): kustomize and kubeconform
(Go modules), compose-config (compose-go, the loader `docker compose config` uses),
dockerfile-check (BuildKit's Dockerfile parser and linter), promtool (Debian's prometheus
package) and Kubernetes JSON schemas (the kubernetes-validate wheel). A missing tool fails its
test with one line saying how to get it.
"""

from __future__ import annotations

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
    """Every STREAMWISE_* variable engine/cli.py reads (its settings catalogue)."""
    from engine.cli import _PASSWORD_FILE, SETTINGS
    names = {s.env for s in (*SETTINGS, _PASSWORD_FILE)}
    assert {"STREAMWISE_BROKER", "STREAMWISE_WEB_PORT", "STREAMWISE_SASL_PASSWORD"} <= names
    return names


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


def test_the_secured_overlay_mounts_the_kafka_secret_as_files(tmp_path):
    """deploy/k8s-overlays/sasl-ssl: valid Kubernetes; the settings name files that the mounted
    Secret provides; no secret value in the ConfigMap."""
    text = _run(_tool("kustomize"), "build", str(DEPLOY / "k8s-overlays" / "sasl-ssl"))
    docs = [d for d in yaml.safe_load_all(text) if d]
    built = tmp_path / "secured.yaml"
    built.write_text(text)
    out = _run(_tool("kubeconform"), "-strict", "-summary", "-kubernetes-version",
               K8S_VERSIONS[-1], "-schema-location",
               str(TOOLS / "k8s-schemas") + "/{{ .NormalizedKubernetesVersion }}-local"
               "{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json", str(built))
    assert f"Valid: {len(docs)}, Invalid: 0, Errors: 0, Skipped: 0" in out, out
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    data = config["data"]
    assert set(data) <= _cli_env_names(), set(data) - _cli_env_names()
    assert data["STREAMWISE_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert "STREAMWISE_SASL_PASSWORD" not in data  # a file, not a value
    volume = next(v for v in pod["volumes"] if "secret" in v)
    mount = next(m for m in worker["volumeMounts"] if m["name"] == volume["name"])
    assert mount["readOnly"] is True
    secret = secrets[volume["secret"]["secretName"]]
    for name in ("STREAMWISE_SSL_CAFILE", "STREAMWISE_SASL_PASSWORD_FILE"):
        path = Path(data[name])
        assert path.parent == Path(mount["mountPath"]) and path.name in secret["stringData"]
    # what the worker makes of these settings: a valid, consistent configuration
    from engine.cli import _parser, load_config
    password = tmp_path / "sasl-password"
    password.write_text("from-the-secret\n")
    cfg, _ = load_config(_parser().parse_args(["worker", "fraud"]),
                         {**data, "STREAMWISE_SASL_PASSWORD_FILE": str(password)})
    sec = cfg.kafka.security
    assert (sec.protocol, sec.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert sec.sasl_password.get_secret_value() == "from-the-secret"


def test_the_secured_compose_override_and_its_secrets(tmp_path):
    """deploy/compose/secured.yml over the base: the workers reach Kafka's SASL_SSL listener
    with the CA and the password as Compose secrets; make-secrets.sh makes what it needs."""
    env = {"KAFKA_KEYSTORE_PASSWORD": "k", "STREAMWISE_SASL_PASSWORD": "s", "PATH": "/usr/bin:/bin"}
    cmd = [_tool("compose-config"), "-f", str(DEPLOY / "compose" / "docker-compose.yml"),
           "-f", str(DEPLOY / "compose" / "secured.yml")]
    proc = subprocess.run(cmd, capture_output=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    project = json.loads(proc.stdout)
    kafka = project["services"]["kafka"]
    assert "SASL_SSL://kafka:9096" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    for name in ("worker-1", "worker-2"):
        service = project["services"][name]
        worker_env = service["environment"]
        assert {k for k in worker_env if k.startswith("STREAMWISE_")} <= _cli_env_names()
        assert worker_env["STREAMWISE_BROKER"] == "kafka:9096"
        assert "STREAMWISE_SASL_PASSWORD" not in worker_env
        targets = {s["target"] for s in service["secrets"]}
        assert {worker_env["STREAMWISE_SSL_CAFILE"],
                worker_env["STREAMWISE_SASL_PASSWORD_FILE"]} <= targets
    # without the env file it refuses with the hint, rather than running with no password
    proc = subprocess.run(cmd, capture_output=True, timeout=300, env={"PATH": "/usr/bin:/bin"},
                          check=False)
    assert proc.returncode != 0 and b"make-secrets.sh" in proc.stderr
    # make-secrets.sh: Kafka's certificate names `kafka` and chains to the CA it made
    out = tmp_path / "secrets"
    _run("bash", str(DEPLOY / "compose" / "make-secrets.sh"), str(out))
    files = {p.name for p in out.iterdir()}
    assert {Path(v["file"]).name for v in project["secrets"].values()} <= files
    assert "OK" in _run("openssl", "verify", "-CAfile", str(out / "ca.pem"), str(out / "kafka.pem"))
    assert "DNS:kafka" in _run("openssl", "x509", "-in", str(out / "kafka.pem"), "-noout", "-ext",
                               "subjectAltName")
    password = (out / "keystore-password").read_text()
    _run("openssl", "pkcs12", "-in", str(out / "kafka.p12"), "-nokeys", "-passin",
         f"pass:{password}")
    assert f"STREAMWISE_SASL_PASSWORD={(out / 'sasl-password').read_text()}" in \
        (out / "secrets.env").read_text()


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

    from engine.clock import SystemClock
    from engine.commands import build_decider
    from engine.config import EngineConfig, ModelConfig
    from engine.worker import Worker
    from topologies import get

    topology = get("fraud")
    decider, models = build_decider(topology, ModelConfig(), SystemClock())
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
