"""deploy/kubernetes/: schema-valid manifests (kubernetes-validate, strict), a kustomize
build (kubectl, when installed), and manifests that agree with the config they carry."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.config import Config, load_config, parse_listen
from gateway.ops import shutdown_grace

from .deploy_support import DEPLOY, cli, dockerfile_stage, only, tool, yaml_documents

K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
KUSTOMIZATION = K8S / "kustomization.yaml"


def _resource_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p != KUSTOMIZATION)


@functools.cache
def _resources() -> dict[tuple[str, str], dict[str, Any]]:
    """Every manifest by (kind, metadata.name) (parsed once: tests only read it)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in _resource_files():
        for doc in yaml_documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


def _config_files(tmp_path: Path) -> Path:
    """The ConfigMap's files written out as the pod sees them; the config's path."""
    configmap = _resources()[("ConfigMap", "cm-gateway")]
    for name, text in configmap["data"].items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path / "cm-gateway.toml"


def _config(tmp_path: Path) -> Config:
    return load_config(_config_files(tmp_path), env={})


def _gateway_container(resources: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    containers = resources[("Deployment", "cm-gateway")]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _validate(*paths: Path, stdin: str | None = None) -> list[str]:
    validator = tool("kubernetes-validate")
    if validator is None:
        pytest.skip("kubernetes-validate not installed (pip, in the dev extra)")
    result = subprocess.run(
        [validator, "--strict", "--quiet", *(str(p) for p in paths), *(["-"] if stdin else [])],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # --quiet prints only problems; an unknown kind is a WARN with exit status 0.
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def test_manifests_pass_strict_kubernetes_schemas_which_reject_a_misspelled_field(
    tmp_path: Path,
) -> None:
    """Every manifest validates against the Kubernetes OpenAPI schemas with unknown fields
    refused; a copy of the Deployment with a misspelled field is the only one reported."""
    broken = tmp_path / "broken-deployment.yaml"
    broken.write_text(
        (K8S / "deployment.yaml")
        .read_text()
        .replace("readOnlyRootFilesystem", "readOnlyRootFileSystem")
    )
    problems = _validate(*_resource_files(), broken)
    assert len(problems) == 1, problems
    assert str(broken) in problems[0] and "readOnlyRootFileSystem" in problems[0]


def test_kustomize_builds_every_manifest_listed_in_the_kustomization() -> None:
    """kustomization.yaml lists every manifest file, and `kubectl kustomize` renders all
    of their resources with the part-of label (skipped without kubectl)."""
    listed = yaml.safe_load(KUSTOMIZATION.read_text())["resources"]
    assert sorted(listed) == [p.name for p in _resource_files()]
    kubectl = tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    built = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=300, check=False
    )
    assert built.returncode == 0, built.stderr
    rendered = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    assert {(d["kind"], d["metadata"]["name"]) for d in rendered} == set(_resources())
    assert all(
        d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "cm-gateway" for d in rendered
    )


def test_configmap_config_and_rules_pass_cli_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cm-gateway config check` and `rules check` accept the ConfigMap's config and rules."""
    config = _config_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REINFER_TOKEN", "placeholder")
    code, out, err = cli("config", "check", "--config", str(config))
    assert (code, out, err) == (0, f"{config}: ok\n", "")
    code, out, err = cli("rules", "check", "--config", str(config))
    assert code == 0, err
    assert out.startswith(f"{tmp_path}/rules.yaml: ok ("), out


def test_probes_and_ports_match_the_configs_listen_addresses(tmp_path: Path) -> None:
    """Liveness/startup probe /healthz and readiness probe /readyz on the container port
    of [metrics] listen; the SMTP port is [smtp] listen's; the Service targets both."""
    resources = _resources()
    config = _config(tmp_path)
    container = _gateway_container(resources)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "smtp": parse_listen(config.smtp.listen)[1],
        "metrics": parse_listen(config.metrics.listen)[1],
    }
    probes = {
        kind: (container[kind]["httpGet"]["path"], container[kind]["httpGet"]["port"])
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes == {
        "startupProbe": ("/healthz", "metrics"),
        "livenessProbe": ("/healthz", "metrics"),
        "readinessProbe": ("/readyz", "metrics"),
    }
    service = resources[("Service", "cm-gateway")]["spec"]
    assert {(p["port"], p["targetPort"]) for p in service["ports"]} == {
        (25, "smtp"),
        (9109, "metrics"),
    }
    pod_labels = resources[("Deployment", "cm-gateway")]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config_path = container["args"][container["args"].index("--config") + 1]
    assert config_path == f"{mounts['config']}/cm-gateway.toml"


def test_secret_key_is_the_env_var_named_by_token_env(tmp_path: Path) -> None:
    """The Secret's key, the pod's env var and classifier.token_env are the same name."""
    resources = _resources()
    token_env = _config(tmp_path).classifier.token_env
    secret = resources[("Secret", "cm-gateway-token")]
    assert list(secret["stringData"]) == [token_env]
    env = {e["name"]: e for e in _gateway_container(resources)["env"]}
    ref = env[token_env]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("cm-gateway-token", token_env)


def test_deployment_env_overrides_are_config_keys_the_gateway_accepts(tmp_path: Path) -> None:
    """Every CM_GATEWAY_* variable the pods get names a real config key, and the config
    still loads with them set (the pod name as smtp.hostname)."""
    container = _gateway_container(_resources())
    overrides = {
        e["name"]: "cm-gateway-7d9c8b6f5-x2kq9"
        for e in container["env"]
        if e["name"].startswith("CM_GATEWAY_")
    }
    assert overrides, "expected the pod name as CM_GATEWAY_SMTP_HOSTNAME"
    config = load_config(_config_files(tmp_path), env=overrides)
    assert config.smtp.hostname == "cm-gateway-7d9c8b6f5-x2kq9"


def test_replicas_share_the_redis_dedup_cache_and_scale_from_two(tmp_path: Path) -> None:
    """Two or more replicas (HPA, PDB consistent), all pointed at the Redis Service that
    selects the Redis pods, which only the gateway pods may reach."""
    resources = _resources()
    config = _config(tmp_path)
    deployment = resources[("Deployment", "cm-gateway")]
    assert deployment["spec"]["replicas"] >= 2
    hpa = resources[("HorizontalPodAutoscaler", "cm-gateway")]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "cm-gateway",
    }
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert _gateway_container(resources)["resources"]["requests"]["cpu"]
    pdb = resources[("PodDisruptionBudget", "cm-gateway")]["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["minAvailable"] < hpa["minReplicas"]

    cache = urlsplit(config.cache.url)
    assert cache.scheme == "redis"
    redis_service = resources[("Service", str(cache.hostname))]["spec"]
    assert [p["port"] for p in redis_service["ports"]] == [cache.port]
    redis_pods = resources[("Deployment", str(cache.hostname))]["spec"]["template"]
    assert redis_service["selector"].items() <= redis_pods["metadata"]["labels"].items()
    policy = resources[("NetworkPolicy", str(cache.hostname))]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= redis_pods["metadata"]["labels"].items()
    allowed = policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert allowed.items() <= pod_labels.items()


def test_pods_are_non_root_read_only_and_drain_within_the_grace_period(tmp_path: Path) -> None:
    """The gateway runs as the image's non-root uid with a read-only root file system and
    no capabilities, and preStop plus the SMTP drain fit in terminationGracePeriodSeconds."""
    resources = _resources()
    pod = resources[("Deployment", "cm-gateway")]["spec"]["template"]["spec"]
    image_uid = int(only(dockerfile_stage(DOCKERFILE), "USER").split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid
    container = _gateway_container(resources)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(pre_stop[1]) + shutdown_grace(_config(tmp_path))
    assert pod["terminationGracePeriodSeconds"] > drain
    for deployment in (d for (kind, _), d in resources.items() if kind == "Deployment"):
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            assert "memory" in c["resources"]["limits"]
