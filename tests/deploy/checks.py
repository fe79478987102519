"""Validators for the deployment files, each returning a list of problems (empty = fine).

No Docker engine, Kubernetes or AWS is reachable from CI, so the files are checked as data: Compose
against the Compose Specification, KubeRay manifests against KubeRay's CRD schemas, the cluster
launcher YAML against the installed Ray's own schema, plus the project's rules (pins agree with
pyproject.toml, ports on 127.0.0.1 only, no plaintext secrets). The tests also feed broken copies in,
to show that each check rejects what it should.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = Path(__file__).resolve().parent / "schemas"

COMPOSE = REPO / "docker" / "compose.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
MLFLOW_DOCKERFILE = REPO / "docker" / "mlflow.Dockerfile"
LAUNCHER = REPO / "cluster" / "aws.yaml"
RAYCLUSTER = REPO / "cluster" / "kuberay" / "raycluster.yaml"
RAYJOB = REPO / "cluster" / "kuberay" / "rayjob.yaml"
SHARED_PVC = REPO / "cluster" / "kuberay" / "shared-pvc.yaml"

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_Loader)


def _errors(validator: jsonschema.protocols.Validator, doc: Any) -> list[str]:
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(doc))


# --- Compose ---------------------------------------------------------------------------------------

@functools.cache
def _compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    return jsonschema.Draft7Validator(schema)


def compose_schema_errors(doc: dict) -> list[str]:
    return _errors(_compose_validator(), doc)


LOOPBACK = "127.0.0.1"


def _port_host_ip(port: Any) -> str | None:
    """The host address a `ports` entry binds, None when it binds every interface."""
    if isinstance(port, dict):
        return port.get("host_ip")
    text = str(port)
    if text.startswith("["):  # [::1]:8080:80
        return text[1:text.index("]")]
    parts = text.split("/")[0].split(":")
    return parts[0] if len(parts) == 3 else None


def unpublished_loopback_problems(doc: dict) -> list[str]:
    """Every published port binds to the host's 127.0.0.1 (else the LAN reaches Ray, MLflow, MinIO)."""
    problems = []
    for name, service in (doc.get("services") or {}).items():
        for port in service.get("ports") or []:
            host_ip = _port_host_ip(port)
            if host_ip != LOOPBACK:
                problems.append(f"{name}: port {port!r} binds {host_ip or 'every interface'}, not {LOOPBACK}")
        if service.get("network_mode") == "host":
            problems.append(f"{name}: network_mode host publishes every port on every interface")
    return problems


def healthcheck_problems(doc: dict) -> list[str]:
    """Long-running services have a health check; one-shots are awaited by a service that needs them."""
    services = doc.get("services") or {}
    awaited = {dep for s in services.values() for dep, cond in _depends_on(s).items()
               if cond == "service_completed_successfully"}
    problems = []
    for name, service in services.items():
        check = service.get("healthcheck") or {}
        if service.get("restart") == "no":
            if name not in awaited:
                problems.append(f"{name}: one-shot service nobody waits for (condition service_completed_successfully)")
        elif check.get("disable") or not check.get("test"):
            problems.append(f"{name}: no health check")
    return problems


def _depends_on(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


# --- Kubernetes / KubeRay --------------------------------------------------------------------------

_CRDS = {"RayCluster": "kuberay-ray.io_rayclusters.yaml", "RayJob": "kuberay-ray.io_rayjobs.yaml"}


def structural_to_jsonschema(node: Any) -> Any:
    """A CRD's OpenAPI v3 structural schema as JSON Schema with the API server's strictness.

    Kubernetes rejects unknown fields (`kubectl apply` validates strictly by default), while JSON
    Schema allows them, so objects with declared properties get ``additionalProperties: false``
    unless marked ``x-kubernetes-preserve-unknown-fields``. ``nullable`` admits null;
    ``x-kubernetes-int-or-string`` admits both types. Other ``x-kubernetes-*`` keys (list/map types,
    CEL rules) are ignored: CEL needs the API server.
    """
    if isinstance(node, list):
        return [structural_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: structural_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
    return out


@functools.cache
def _crd(kind: str) -> tuple[str, jsonschema.protocols.Validator]:
    crd = load_yaml(SCHEMAS / _CRDS[kind])
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema = structural_to_jsonschema(version["schema"]["openAPIV3Schema"])
    return f"{crd['spec']['group']}/{version['name']}", jsonschema.Draft7Validator(schema)


def manifest_errors(doc: dict) -> list[str]:
    """A KubeRay object against its CRD (the storage version's openAPIV3Schema)."""
    kind = doc.get("kind")
    if kind not in _CRDS:
        return [f"kind {kind!r} is not one of {sorted(_CRDS)}"]
    api_version, validator = _crd(kind)
    problems = [] if doc.get("apiVersion") == api_version else [f"apiVersion {doc.get('apiVersion')!r} != {api_version}"]
    name = (doc.get("metadata") or {}).get("name", "")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        problems.append(f"metadata.name {name!r} is not a DNS-1123 label")
    return problems + _errors(validator, doc)


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """Every pod spec in a RayCluster or RayJob, with where it is."""
    cluster = doc["spec"].get("rayClusterSpec", doc["spec"]) if doc["kind"] == "RayJob" else doc["spec"]
    specs = [("head", cluster["headGroupSpec"]["template"]["spec"])]
    specs += [(f"worker group {g['groupName']}", g["template"]["spec"]) for g in cluster.get("workerGroupSpecs", [])]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        specs.append(("submitter", doc["spec"]["submitterPodTemplate"]["spec"]))
    return specs


def kube_exposure_problems(doc: dict) -> list[str]:
    """Nothing reachable from outside the cluster: ClusterIP head service, no host ports or network."""
    cluster = doc["spec"].get("rayClusterSpec", doc["spec"]) if doc["kind"] == "RayJob" else doc["spec"]
    problems = []
    service_type = cluster["headGroupSpec"].get("serviceType", "ClusterIP")
    if service_type != "ClusterIP":
        problems.append(f"head service type {service_type} is reachable from outside the cluster")
    if cluster["headGroupSpec"].get("enableIngress"):
        problems.append("head ingress enabled")
    for where, spec in pod_specs(doc):
        if spec.get("hostNetwork"):
            problems.append(f"{where}: hostNetwork")
        for c in spec.get("containers", []):
            for port in c.get("ports", []):
                if "hostPort" in port:
                    problems.append(f"{where}/{c['name']}: hostPort {port['hostPort']}")
    return problems


def token_auth_problems(doc: dict) -> list[str]:
    """Every Ray container (head, workers, submitter, autoscaler) has token auth, the token from a Secret."""
    cluster = doc["spec"].get("rayClusterSpec", doc["spec"]) if doc["kind"] == "RayJob" else doc["spec"]
    envs = [(f"{where}/{c['name']}", c.get("env", [])) for where, spec in pod_specs(doc) for c in spec["containers"]]
    if cluster.get("enableInTreeAutoscaling"):
        envs.append(("autoscaler", (cluster.get("autoscalerOptions") or {}).get("env", [])))
    problems = []
    for where, env in envs:
        by_name = {e["name"]: e for e in env}
        if (by_name.get("RAY_AUTH_MODE") or {}).get("value") != "token":
            problems.append(f"{where}: RAY_AUTH_MODE is not token")
        token = by_name.get("RAY_AUTH_TOKEN") or {}
        if "secretKeyRef" not in (token.get("valueFrom") or {}) or "value" in token:
            problems.append(f"{where}: RAY_AUTH_TOKEN does not come from a Secret (valueFrom.secretKeyRef)")
    return problems


# --- Ray cluster launcher --------------------------------------------------------------------------

@functools.cache
def _launcher_validator() -> jsonschema.protocols.Validator:
    spec = importlib.util.find_spec("ray")
    schema_path = Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    return jsonschema.Draft7Validator(json.loads(schema_path.read_text()))


def launcher_errors(config: dict) -> list[str]:
    """The launcher YAML against ray-schema.json, then Ray's own checks after `ray up` fills defaults."""
    problems = _errors(_launcher_validator(), config)
    if problems:
        return problems
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except (ValueError, RuntimeError, jsonschema.ValidationError) as e:
        return [f"ray: {e}"]
    return []


def launcher_exposure_problems(config: dict) -> list[str]:
    """Dashboard/job API only on the head's 127.0.0.1, token auth on every node, no open ingress."""
    problems = []
    head = " ".join(config.get("head_start_ray_commands", []))
    if "--dashboard-host=127.0.0.1" not in head:
        problems.append("head_start_ray_commands: the dashboard does not bind to 127.0.0.1")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config.get(key, []) if "ray start" in c]
        if not starts or not all("RAY_AUTH_MODE=token" in c for c in starts):
            problems.append(f"{key}: ray start without RAY_AUTH_MODE=token")
    if not any(remote.endswith("/.ray/auth_token") for remote in config.get("file_mounts", {})):
        problems.append("file_mounts: no token file for the nodes (~/.ray/auth_token)")
    for rule in (config.get("provider", {}).get("security_group") or {}).get("IpPermissions", []):
        for ip_range in rule.get("IpRanges", []):
            if ip_range.get("CidrIp") == "0.0.0.0/0":
                problems.append(f"security group: port {rule.get('FromPort')} open to 0.0.0.0/0")
    return problems


# --- Secrets ---------------------------------------------------------------------------------------

_SECRET_KEY = re.compile(r"(?i)pass(word|wd)?|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential")
# Keys that name or locate a secret rather than hold it.
_REFERENCE_KEY = re.compile(r"(?i)(_file|_path|name|ref|mode)$")
# Secret-like names that are settings: EC2's IMDSv2 switch (HttpTokens: required).
_SETTING_KEYS = {"HttpTokens"}
_SECRET_VALUE = [
    (re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{32,}(?![0-9a-fA-F])"), "a long hex string (a token?)"),
    (re.compile(r"\bA[KS]IA[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"), "a URL with a password in it"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
]


def _is_reference(value: Any) -> bool:
    text = str(value).strip()
    return text.startswith(("/", "~", "./", "../")) or bool(re.fullmatch(r"\$\{[^}]+\}", text))


def plaintext_secret_problems(node: Any, path: str = "") -> list[str]:
    """Literal values under password/token/secret-like keys, and secret-looking strings anywhere."""
    problems = []
    if isinstance(node, dict):
        # Kubernetes env entry: {name: SOME_TOKEN, value: literal}
        name = node.get("name")
        if isinstance(name, str) and "value" in node and _SECRET_KEY.search(name) and not _REFERENCE_KEY.search(name):
            problems.append(f"{path}: {name} has a literal value (use valueFrom.secretKeyRef)")
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if (isinstance(value, str | int | float) and not isinstance(value, bool) and str(value).strip()
                    and _SECRET_KEY.search(str(key)) and not _REFERENCE_KEY.search(str(key))
                    and key not in _SETTING_KEYS and not _is_reference(value)):
                problems.append(f"{where}: literal value under a secret-like key")
            problems += plaintext_secret_problems(value, where)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            problems += plaintext_secret_problems(item, f"{path}[{i}]")
    elif isinstance(node, str):
        problems += [f"{path}: {why}" for pattern, why in _SECRET_VALUE if pattern.search(node)]
    return problems


# --- Dockerfile pins -------------------------------------------------------------------------------

# Dockerfile ARG -> distribution in pyproject.toml.
PINNED_ARGS = {"TORCH_VERSION": "torch", "TORCHVISION_VERSION": "torchvision", "RAY_VERSION": "ray",
               "MLFLOW_VERSION": "mlflow"}


def pyproject_pins(pyproject: Path = REPO / "pyproject.toml") -> dict[str, str]:
    """Distribution -> version for every exact (==) pin in the project's dependencies."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*==\s*([^\s,;]+)\s*", dep)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def dockerfile_args(text: str) -> dict[str, str]:
    """ARG NAME=default lines (the first default of each name)."""
    args: dict[str, str] = {}
    for match in re.finditer(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)=(\S+)", text, re.MULTILINE):
        args.setdefault(match.group(1), match.group(2).strip("\"'"))
    return args


def pin_problems(dockerfile_text: str, pins: dict[str, str], required: tuple[str, ...]) -> list[str]:
    """The Dockerfile states each required pin, equal to pyproject.toml's."""
    args = dockerfile_args(dockerfile_text)
    problems = []
    for arg in required:
        dist = PINNED_ARGS[arg]
        if arg not in args:
            problems.append(f"ARG {arg} missing (pyproject pins {dist}=={pins.get(dist)})")
        elif args[arg] != pins.get(dist):
            problems.append(f"ARG {arg}={args[arg]} but pyproject.toml pins {dist}=={pins.get(dist)}")
    return problems


def dockerfile_secret_problems(text: str) -> list[str]:
    """No ENV/ARG carrying a secret-like name with a value, no secret files copied in."""
    problems = []
    for match in re.finditer(r"^\s*(ENV|ARG)\s+(.+)$", text, re.MULTILINE):
        for name, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)", match.group(2)):
            if _SECRET_KEY.search(name) and not _REFERENCE_KEY.search(name) and value:
                problems.append(f"{match.group(1)} {name} bakes a value into the image")
    for match in re.finditer(r"^\s*(COPY|ADD)\s+(.+)$", text, re.MULTILINE):
        if "secrets" in match.group(2):
            problems.append(f"{match.group(1)} {match.group(2)} copies secrets into the image")
    users = re.findall(r"^\s*USER\s+(\S+)", text, re.MULTILINE)
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the image runs as root (no non-root USER at the end)")
    return problems


# --- Issue 16: what the deploy files must say for a job to run as described ---------------------

def _cluster(doc: dict) -> dict:
    return doc["spec"].get("rayClusterSpec", doc["spec"]) if doc["kind"] == "RayJob" else doc["spec"]


def auth_options_problems(doc: dict) -> list[str]:
    """KubeRay's own token mode: without it the operator polls the dashboard without the token and never
    reads a RayJob's status (env vars on the pods are not enough). Its Secret is the one the pods use."""
    auth = _cluster(doc).get("authOptions") or {}
    if auth.get("mode") != "token":
        return [f"authOptions.mode is {auth.get('mode')!r}, not 'token'"]
    used = {e["valueFrom"]["secretKeyRef"]["name"] for _, spec in pod_specs(doc) for c in spec["containers"]
            for e in c.get("env", []) if e["name"] == "RAY_AUTH_TOKEN" and "valueFrom" in e}
    if auth.get("secretName") not in used:
        return [f"authOptions.secretName {auth.get('secretName')!r} is not the Secret the pods use ({sorted(used)})"]
    return []


def shm_problems(doc: dict) -> list[str]:
    """Every Ray pod (head, worker groups) mounts a memory emptyDir at /dev/shm in its Ray container."""
    problems = []
    for where, spec in pod_specs(doc):
        if where == "submitter":  # runs `ray job submit`, not a Ray node
            continue
        memory = {v["name"] for v in spec.get("volumes", []) if (v.get("emptyDir") or {}).get("medium") == "Memory"}
        mounts = {m["name"] for m in spec["containers"][0].get("volumeMounts", []) if m["mountPath"] == "/dev/shm"}
        if not memory & mounts:
            problems.append(f"{where}: no memory emptyDir mounted at /dev/shm")
    return problems


def compose_shm_problems(doc: dict) -> list[str]:
    """Ray containers get a real /dev/shm (Docker's default is 64 MB)."""
    return [f"{name}: no shm_size" for name, s in (doc.get("services") or {}).items()
            if name.startswith("ray-") and not s.get("shm_size")]


CLIENT_PORT = re.compile(r"(?<!\d)10001(?!\d)|ray-client-server-port")


def client_port_problems(text: str, where: str) -> list[str]:
    """The Ray Client port (10001) is neither used nor published: jobs go through the job API."""
    return [f"{where}:{n}: Ray Client port" for n, line in enumerate(text.splitlines(), 1) if CLIENT_PORT.search(line)]


def git_sha_problems(dockerfile_text: str) -> list[str]:
    """The final image stage takes the commit as a build arg and exports it to raypipe (RAYPIPE_GIT_SHA)."""
    final = dockerfile_text[dockerfile_text.rfind("\nFROM "):]
    problems = []
    if not re.search(r"^ARG GIT_SHA(=\S*)?$", final, re.MULTILINE):
        problems.append("no ARG GIT_SHA in the final stage")
    if not re.search(r"^ENV RAYPIPE_GIT_SHA=\$\{?GIT_SHA\}?$", final, re.MULTILINE):
        problems.append("no ENV RAYPIPE_GIT_SHA=${GIT_SHA} in the final stage")
    return problems


_JOB = re.compile(r"python -m raypipe (tune|train|promote|pipeline run)\b")


def job_commands(text: str) -> list[str]:
    """Every `python -m raypipe <command>` in a text, continuation lines (trailing backslash) joined."""
    joined = re.sub(r"\\\n\s*(#\s*)?", " ", text)
    return [line[m.start():] for line in joined.splitlines() for m in [_JOB.search(line)] if m]


def job_data_problems(text: str, where: str) -> list[str]:
    """Every job command names its data set by an absolute path: a job runs in a temporary copy of the
    working directory, and data synthesised or resolved there vanishes with it (and changes the data hash)."""
    return [f"{where}: {cmd.strip()!r} has no absolute --data" for cmd in job_commands(text)
            if not re.search(r"--data[ =]/", cmd)]
