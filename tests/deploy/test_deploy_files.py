"""The deployment files (docker/, cluster/) checked as data, offline: no Docker engine, Kubernetes or AWS.

Each check runs on the real file and on a broken copy, so a check that accepts everything fails here.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.deploy import checks
from tests.deploy.checks import REPO, load_yaml


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(checks.COMPOSE)


@pytest.fixture(scope="module")
def launcher() -> dict:
    return load_yaml(checks.LAUNCHER)


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    return {"raycluster": load_yaml(checks.RAYCLUSTER), "rayjob": load_yaml(checks.RAYJOB)}


def _set(doc: dict, path: str, value) -> dict:
    """A deep copy of doc with the dotted path (list indices as numbers) set to value."""
    broken = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = broken
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return broken


def _delete(doc: dict, path: str) -> dict:
    broken = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = broken
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    del node[last]
    return broken


# --- Compose ---------------------------------------------------------------------------------------

def test_compose_matches_the_compose_spec(compose):
    assert checks.compose_schema_errors(compose) == []


@pytest.mark.parametrize("path, value", [
    ("servicess", {}),                                          # unknown top-level key
    ("services.ray-head.gpu_count", 1),                         # unknown service key
    ("services.ray-head.healthcheck.retries", [5]),             # wrong type
    ("services.ray-worker.deploy.resources.reservations.devices.0.capabilities", "gpu"),  # not a list
    ("secrets.ray_token.path", "./secrets/ray_token"),          # unknown secret key
])
def test_compose_spec_rejects_a_broken_copy(compose, path, value):
    assert checks.compose_schema_errors(_set(compose, path, value))


def test_compose_publishes_ports_on_loopback_only(compose):
    assert checks.unpublished_loopback_problems(compose) == []
    published = {name for name, s in compose["services"].items() if s.get("ports")}
    assert {"ray-head", "mlflow"} <= published


@pytest.mark.parametrize("port", [
    {"target": 8265, "published": "8265", "host_ip": "0.0.0.0"},
    {"target": 8265, "published": "8265"},
    "8265:8265",
    "0.0.0.0:8265:8265",
])
def test_port_check_rejects_ports_beyond_loopback(compose, port):
    broken = _set(compose, "services.ray-head.ports.0", port)
    assert checks.unpublished_loopback_problems(broken)


def test_every_long_running_service_has_a_health_check(compose):
    assert checks.healthcheck_problems(compose) == []
    broken = _delete(compose, "services.postgres.healthcheck")
    assert checks.healthcheck_problems(broken) == ["postgres: no health check"]
    orphan = _delete(compose, "services.mlflow.depends_on.minio-init")
    assert checks.healthcheck_problems(orphan)


def test_ray_nodes_share_token_auth_mlflow_and_storage(compose):
    ray_services = {n: s for n, s in compose["services"].items() if n.startswith("ray-")}
    assert set(ray_services) == {"ray-head", "ray-worker", "ray-worker-cpu"}
    for name, service in ray_services.items():
        env = service["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_token", name
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        assert env["RAYPIPE_RUN_DIR"] == env["RAYPIPE_STORAGE"] == "/shared/runs", name
        assert "ray_token" in service["secrets"], name
        assert "shared-runs:/shared/runs" in service["volumes"], name
        assert service["build"]["dockerfile"] == "docker/Dockerfile", name
    assert compose["secrets"]["ray_token"] == {"file": "./secrets/ray_token"}
    assert "shared-runs" in compose["volumes"]


def test_gpu_workers_reserve_gpus_and_can_scale(compose):
    worker = compose["services"]["ray-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    # `--scale ray-worker=N`: no fixed container name, no host port to collide on
    assert "container_name" not in worker and not worker.get("ports")
    assert worker["command"][:2] == ["ray-node", "worker"]


def test_compose_credentials_come_from_generated_secret_files(compose, tmp_path):
    """Every secret is a file under docker/secrets/ that make-secrets.sh writes (mode 600, dir 700),
    git and the Docker build context ignore that folder, and a second run keeps existing values."""
    files = {name: spec["file"] for name, spec in compose["secrets"].items()}
    assert all(path == f"./secrets/{name}" for name, path in files.items())
    assert "secrets/" in (REPO / "docker" / ".gitignore").read_text().split()
    assert "docker/secrets/" in (REPO / ".dockerignore").read_text().split()

    script = REPO / "docker" / "make-secrets.sh"
    out = tmp_path / "secrets"
    subprocess.run(["sh", str(script), str(out)], check=True, capture_output=True)
    assert {p.name for p in out.iterdir()} == set(files)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    first = {}
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        first[p.name] = p.read_text()
        assert re.fullmatch(r"[0-9a-f]{20,}", first[p.name]), p
    subprocess.run(["sh", str(script), str(out)], check=True, capture_output=True)
    assert {p.name: p.read_text() for p in out.iterdir()} == first


def test_compose_config_if_docker_compose_is_here(tmp_path):
    """`docker compose config` (only where the Compose plugin is installed; not in CI)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose is not installed here")
    copy_dir = tmp_path / "docker"
    shutil.copytree(REPO / "docker", copy_dir, ignore=shutil.ignore_patterns("secrets", "data"))
    subprocess.run(["sh", str(copy_dir / "make-secrets.sh"), str(copy_dir / "secrets")], check=True)
    result = subprocess.run([docker, "compose", "-f", str(copy_dir / "compose.yaml"), "config", "--quiet"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- KubeRay ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["raycluster", "rayjob"])
def test_kuberay_manifests_match_the_crds(manifests, name):
    assert checks.manifest_errors(manifests[name]) == []


def _cluster_path(name: str) -> str:
    return "spec.rayClusterSpec" if name == "rayjob" else "spec"


@pytest.mark.parametrize("name", ["raycluster", "rayjob"])
@pytest.mark.parametrize("suffix, value", [
    ("workerGroupSpecs.0.maxReplicas", "four"),                                        # wrong type
    ("headGroupSpec.template.spec.containers.0.imagePullPolicyy", "Always"),           # unknown field
    ("autoscalerOptions.upscalingMode", "Fast"),                                       # not in the enum
    ("headGroupSpec.rayStartParams.num-gpus", 0),                                      # must be a string
    ("workerGroupSpecs.0.template.spec.containers.0.resources.limits.memory", "lots"),  # not a quantity
])
def test_crd_schema_rejects_a_broken_copy(manifests, name, suffix, value):
    broken = _set(manifests[name], f"{_cluster_path(name)}.{suffix}", value)
    assert checks.manifest_errors(broken)


def test_crd_schema_rejects_a_missing_required_field(manifests):
    assert checks.manifest_errors(_delete(manifests["raycluster"], "spec.workerGroupSpecs.0.groupName"))
    assert checks.manifest_errors(_delete(manifests["rayjob"], "spec.rayClusterSpec.headGroupSpec.template"))
    assert checks.manifest_errors(_set(manifests["rayjob"], "apiVersion", "ray.io/v1alpha1"))


@pytest.mark.parametrize("name", ["raycluster", "rayjob"])
def test_kuberay_token_auth_from_a_secret_everywhere(manifests, name):
    assert checks.token_auth_problems(manifests[name]) == []
    head_env = f"{_cluster_path(name)}.headGroupSpec.template.spec.containers.0.env"
    env = copy.deepcopy(checks.pod_specs(manifests[name])[0][1]["containers"][0]["env"])
    token = next(e for e in env if e["name"] == "RAY_AUTH_TOKEN")
    token.pop("valueFrom")
    token["value"] = "0123456789abcdef0123456789abcdef"
    broken = _set(manifests[name], head_env, env)
    assert checks.token_auth_problems(broken)
    assert checks.plaintext_secret_problems(broken)


@pytest.mark.parametrize("name", ["raycluster", "rayjob"])
def test_kuberay_cluster_is_internal_and_gpu_workers_get_gpus(manifests, name):
    doc = manifests[name]
    assert checks.kube_exposure_problems(doc) == []
    cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
    assert cluster["rayVersion"] == checks.pyproject_pins()["ray"]
    for group in cluster["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
    for where, spec in checks.pod_specs(doc):
        assert spec["securityContext"]["runAsNonRoot"] is True, where
    exposed = _set(doc, f"{_cluster_path(name)}.headGroupSpec.serviceType", "LoadBalancer")
    assert checks.kube_exposure_problems(exposed)
    host_port = copy.deepcopy(doc)
    checks.pod_specs(host_port)[0][1]["containers"][0]["ports"][1]["hostPort"] = 8265
    assert checks.kube_exposure_problems(host_port)


def test_rayjob_runs_a_raypipe_study_on_shared_storage(manifests):
    spec = manifests["rayjob"]["spec"]
    assert spec["entrypoint"].startswith("python -m raypipe tune ")
    assert "--storage /shared/runs" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    pvc = load_yaml(checks.SHARED_PVC)
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for doc in manifests.values():
        for where, pod in checks.pod_specs(doc):
            claims = [v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", [])
                      if "persistentVolumeClaim" in v]
            if where != "submitter":
                assert claims == [pvc["metadata"]["name"]], where


# --- Ray cluster launcher --------------------------------------------------------------------------

def test_launcher_matches_rays_schema_and_checks(launcher):
    assert checks.launcher_errors(launcher) == []


@pytest.mark.parametrize("path, value", [
    ("max_workers", "four"),                                             # wrong type
    ("head_node", {"InstanceType": "m6i.xlarge"}),                       # unknown top-level key (removed in Ray 2)
    ("available_node_types.ray.worker.gpu", {"min_workers": 0}),         # node type without resources/node_config
    ("auth.ssh_password", "x"),                                          # unknown auth key
    ("head_node_type", "ray.head.missing"),                              # Ray's own check: not a node type
    ("max_workers", 0),                                                  # Ray's own check: < sum of min_workers
])
def test_launcher_checks_reject_a_broken_copy(launcher, path, value):
    if path.startswith("available_node_types."):
        broken = copy.deepcopy(launcher)
        broken["available_node_types"]["ray.worker.gpu"] = value
    else:
        broken = _set(launcher, path, value)
    if path == "max_workers" and value == 0:
        broken["available_node_types"]["ray.worker.gpu"]["min_workers"] = 1
    assert checks.launcher_errors(broken)


def test_launcher_dashboard_on_loopback_token_auth_and_gpu_workers(launcher):
    assert checks.launcher_exposure_problems(launcher) == []
    worker = launcher["available_node_types"]["ray.worker.gpu"]
    assert worker["resources"]["GPU"] >= 1 and worker["node_config"]["InstanceType"].startswith("g5.")
    assert worker["max_workers"] >= worker["min_workers"]
    assert any("raypipe" in c and "pip install" in c for c in launcher["setup_commands"])

    exposed = copy.deepcopy(launcher)
    exposed["head_start_ray_commands"] = [c.replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0")
                                          for c in exposed["head_start_ray_commands"]]
    assert checks.launcher_exposure_problems(exposed)
    no_auth = copy.deepcopy(launcher)
    no_auth["worker_start_ray_commands"] = [c.replace("RAY_AUTH_MODE=token ", "")
                                            for c in no_auth["worker_start_ray_commands"]]
    assert checks.launcher_exposure_problems(no_auth)
    open_ssh = copy.deepcopy(launcher)
    open_ssh["provider"]["security_group"]["IpPermissions"][0]["IpRanges"][0]["CidrIp"] = "0.0.0.0/0"
    assert checks.launcher_exposure_problems(open_ssh)


# --- Secrets in any deployment file ----------------------------------------------------------------

@pytest.mark.parametrize("path", [checks.COMPOSE, checks.LAUNCHER, checks.RAYCLUSTER, checks.RAYJOB,
                                  checks.SHARED_PVC])
def test_no_plaintext_secrets(path):
    assert checks.plaintext_secret_problems(load_yaml(path)) == []


def test_secret_check_rejects_plaintext(compose, launcher):
    env = dict(compose["services"]["postgres"]["environment"], POSTGRES_PASSWORD="hunter2")
    assert checks.plaintext_secret_problems(_set(compose, "services.postgres.environment", env))
    uri = dict(compose["services"]["mlflow"]["environment"],
               MLFLOW_BACKEND_STORE_URI="postgresql://mlflow:s3cret@postgres:5432/mlflow")
    assert checks.plaintext_secret_problems(_set(compose, "services.mlflow.environment", uri))
    broken = copy.deepcopy(launcher)
    broken["worker_start_ray_commands"].append("RAY_AUTH_TOKEN=" + "ab12" * 16 + " ray status")
    assert checks.plaintext_secret_problems(broken)
    aws_key = _set(launcher, "provider.aws_access_key_id", "AKIAABCDEFGHIJKLMNOP")
    assert checks.plaintext_secret_problems(aws_key)


# --- Dockerfiles -----------------------------------------------------------------------------------

def test_dockerfile_pins_agree_with_pyproject():
    pins = checks.pyproject_pins()
    assert checks.pin_problems(checks.DOCKERFILE.read_text(), pins, tuple(checks.PINNED_ARGS)) == []
    assert checks.pin_problems(checks.MLFLOW_DOCKERFILE.read_text(), pins, ("MLFLOW_VERSION",)) == []
    compose = load_yaml(checks.COMPOSE)
    assert compose["services"]["mlflow"]["image"].endswith(":" + pins["mlflow"])


@pytest.mark.parametrize("old, new", [
    ("ARG TORCH_VERSION=2.14.1", "ARG TORCH_VERSION=2.14.0"),
    ("ARG RAY_VERSION=2.60.0", "ARG RAY_VERSION=2.61.0"),
    ("ARG MLFLOW_VERSION=3.17.2\n", "\n"),
])
def test_pin_check_rejects_a_drifted_dockerfile(old, new):
    text = checks.DOCKERFILE.read_text()
    assert old in text
    assert checks.pin_problems(text.replace(old, new), checks.pyproject_pins(), tuple(checks.PINNED_ARGS))


def test_pin_check_follows_pyproject(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text((REPO / "pyproject.toml").read_text().replace('"torch==2.14.1"', '"torch==2.15.0"'))
    pins = checks.pyproject_pins(pyproject)
    assert checks.pin_problems(checks.DOCKERFILE.read_text(), pins, ("TORCH_VERSION",))


def test_gpu_base_matches_the_cuda_build_of_the_pinned_torch():
    """The CUDA base image's version is the one the installed torch 2.14.1 wheel was built for."""
    base = checks.dockerfile_args(checks.DOCKERFILE.read_text())["CUDA_IMAGE"]
    cuda_tag = re.search(r"nvidia/cuda:(\d+\.\d+)\.\d+-", base).group(1)
    import importlib.util

    version_py = Path(importlib.util.find_spec("torch").submodule_search_locations[0]) / "version.py"
    match = re.search(r"^cuda\s*(?::\s*[^=]+)?=\s*'([\d.]+)'", version_py.read_text(), re.MULTILINE)
    if match is None:
        pytest.skip("the installed torch is a CPU build: nothing to compare the CUDA base with")
    assert cuda_tag == match.group(1)


@pytest.mark.parametrize("path", [checks.DOCKERFILE, checks.MLFLOW_DOCKERFILE])
def test_images_bake_in_no_secrets_and_run_as_non_root(path):
    text = path.read_text()
    assert checks.dockerfile_secret_problems(text) == []
    assert checks.dockerfile_secret_problems(text + "\nENV RAY_AUTH_TOKEN=abc\n")
    assert checks.dockerfile_secret_problems(text + "\nUSER root\n")
    assert checks.dockerfile_secret_problems(text + "\nCOPY docker/secrets /run/secrets\n")


def test_cpu_variant_and_dockerignore():
    text = checks.DOCKERFILE.read_text()
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\} AS base-cpu$", text, re.MULTILINE)
    assert checks.dockerfile_args(text)["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert "download.pytorch.org/whl/cpu" in text
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in ("runs/", ".venv/", ".git/", "docker/secrets/", ".pytest_cache/"):
        assert entry in ignored, entry


@pytest.mark.parametrize("script, shell", [("docker/ray-node.sh", "bash"), ("docker/make-secrets.sh", "sh"),
                                           ("docker/mlflow-server.sh", "sh"), ("docker/minio-init.sh", "sh"),
                                           ("cluster/export-ref.sh", "sh")])
def test_shell_scripts_parse_and_are_executable(script, shell):
    path = REPO / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    subprocess.run([shell, "-n", str(path)], check=True)


# --- The pieces fit together -----------------------------------------------------------------------

def test_files_the_images_and_compose_refer_to_exist(compose):
    for dockerfile in (checks.DOCKERFILE, checks.MLFLOW_DOCKERFILE):
        for source in re.findall(r"^COPY(?:\s+--\S+)*\s+(\S+)\s+\S+$", dockerfile.read_text(), re.MULTILINE):
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}"
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict) and volume["type"] == "bind" and "$" not in volume["source"]:
                assert (checks.COMPOSE.parent / volume["source"]).exists(), f"{name}: {volume['source']}"


@pytest.mark.parametrize("service, script", [("mlflow", "docker/mlflow-server.sh"),
                                             ("minio-init", "docker/minio-init.sh")])
def test_scripts_get_the_secrets_they_read(compose, service, script):
    wanted = set(re.findall(r"\bsecret (\w+)", (REPO / script).read_text()))
    assert wanted and wanted <= set(compose["services"][service]["secrets"])


def test_makefile_wraps_compose():
    makefile = (REPO / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.MULTILINE).group(1).split()
    assert {"cluster-up", "cluster-down"} <= set(phony)
    assert "docker compose -f docker/compose.yaml" in makefile
    assert re.search(r"^cluster-up:.*\n\t@?docker/make-secrets\.sh", makefile, re.MULTILINE)


def _fake_bin(tmp_path: Path) -> dict[str, str]:
    """`nvidia-smi` with two GPUs and a `ray` that records its arguments and holds on, like `--block`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nprintf '0, GPU-aaaa\\n1, GPU-bbbb\\n'\n")
    (bin_dir / "ray").write_text('#!/bin/sh\necho "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-} $*" > "$RAY_ARGS_FILE"\n'
                                 'exec sleep 20\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    token = tmp_path / "token"
    token.write_text("x" * 64)
    (tmp_path / "locks").mkdir()
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RAY_AUTH_MODE="token",
                RAY_AUTH_TOKEN_PATH=str(token), RAY_GPU_LOCK_DIR=str(tmp_path / "locks"))


def _start_worker(env: dict, args_file: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["bash", str(REPO / "docker" / "ray-node.sh"), "worker", "ray-head:6379"],
                            env=dict(env, RAY_ARGS_FILE=str(args_file)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        if args_file.exists() or proc.poll() is not None:
            break
        subprocess.run(["sleep", "0.05"])
    return proc


def test_scaled_workers_claim_distinct_gpus(tmp_path):
    """Compose gives every replica all GPUs: ray-node gives each worker its own, and refuses when none is left."""
    env = _fake_bin(tmp_path)
    procs = []
    try:
        for i in range(2):
            procs.append(_start_worker(env, tmp_path / f"args{i}"))
        claimed = [(tmp_path / f"args{i}").read_text().split()[0] for i in range(2)]
        assert sorted(claimed) == ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"]
        assert "--num-gpus=1" in (tmp_path / "args0").read_text()
        third = _start_worker(env, tmp_path / "args2")
        assert third.wait(timeout=10) != 0 and "found 0" in third.stderr.read()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_ray_node_refuses_to_start_without_token_auth(tmp_path):
    env = _fake_bin(tmp_path)
    for broken in (dict(env, RAY_AUTH_MODE="disabled"), dict(env, RAY_AUTH_TOKEN_PATH=str(tmp_path / "none"))):
        result = subprocess.run(["bash", str(REPO / "docker" / "ray-node.sh"), "head"], env=broken,
                                capture_output=True, text=True, timeout=10)
        assert result.returncode != 0 and "ray-node:" in result.stderr


# --- Issue 16: token mode KubeRay knows about, /dev/shm, no Ray Client port, git sha, --data -----------

@pytest.mark.parametrize("name", ["raycluster", "rayjob"])
def test_kuberay_operator_gets_the_token_through_auth_options(manifests, name):
    doc = manifests[name]
    assert checks.auth_options_problems(doc) == []
    path = f"{_cluster_path(name)}.authOptions"
    assert checks.auth_options_problems(_delete(doc, path))
    assert checks.auth_options_problems(_set(doc, path, {"mode": "disabled"}))
    assert checks.auth_options_problems(_set(doc, path, {"mode": "token", "secretName": "elsewhere"}))
    assert checks.manifest_errors(_set(doc, path, {"mode": "tokens"}))  # the CRD's enum


@pytest.mark.parametrize("name", ["raycluster", "rayjob"])
def test_every_ray_pod_has_a_memory_dev_shm(manifests, name):
    doc = manifests[name]
    assert checks.shm_problems(doc) == []
    no_mount = copy.deepcopy(doc)
    worker = checks.pod_specs(no_mount)[1][1]
    worker["containers"][0]["volumeMounts"] = [m for m in worker["containers"][0]["volumeMounts"]
                                               if m["mountPath"] != "/dev/shm"]
    assert checks.shm_problems(no_mount) == ["worker group gpu: no memory emptyDir mounted at /dev/shm"]
    on_disk = copy.deepcopy(doc)
    for v in checks.pod_specs(on_disk)[0][1]["volumes"]:
        v.get("emptyDir", {}).pop("medium", None)
    assert checks.shm_problems(on_disk) == ["head: no memory emptyDir mounted at /dev/shm"]


def test_compose_ray_containers_have_shm(compose):
    assert checks.compose_shm_problems(compose) == []
    assert checks.compose_shm_problems(_delete(compose, "services.ray-head.shm_size")) == ["ray-head: no shm_size"]


DEPLOY_TEXTS = [checks.COMPOSE, checks.DOCKERFILE, checks.MLFLOW_DOCKERFILE, checks.LAUNCHER, checks.RAYCLUSTER,
                checks.RAYJOB, REPO / "docker" / "ray-node.sh", REPO / "Makefile", REPO / "cluster" / "README.md",
                REPO / "README.md"]


@pytest.mark.parametrize("path", DEPLOY_TEXTS, ids=lambda p: p.name)
def test_no_ray_client_port_anywhere(path):
    assert checks.client_port_problems(path.read_text(), path.name) == []


def test_client_port_check_rejects_a_broken_copy(compose):
    text = checks.RAYCLUSTER.read_text().replace("- {containerPort: 8265, name: dashboard}",
                                                 "- {containerPort: 8265, name: dashboard}\n"
                                                 "              - {containerPort: 10001, name: client}")
    assert checks.client_port_problems(text, "raycluster.yaml")
    assert checks.client_port_problems("ray start --head --ray-client-server-port=10002", "ray-node.sh")
    assert not checks.client_port_problems("port 100010, 210001", "x")


def test_image_carries_the_git_sha_that_git_sha_reads(compose, tmp_path, monkeypatch):
    text = checks.DOCKERFILE.read_text()
    assert checks.git_sha_problems(text) == []
    assert checks.git_sha_problems(text.replace("ENV RAYPIPE_GIT_SHA=${GIT_SHA}", ""))
    first_stage = text.replace("ARG GIT_SHA=unknown\n", "").replace("ARG VARIANT=gpu", "ARG VARIANT=gpu\nARG GIT_SHA")
    assert checks.git_sha_problems(first_stage) == ["no ARG GIT_SHA in the final stage"]  # out of scope there
    assert compose["x-raypipe-image"]["build"]["args"]["GIT_SHA"] == "${RAYPIPE_GIT_SHA:-unknown}"
    cluster_up = re.search(r"^cluster-up:.*?(?=^\S)", (REPO / "Makefile").read_text(), re.MULTILINE | re.DOTALL)
    assert "RAYPIPE_GIT_SHA=$$(git rev-parse HEAD" in cluster_up.group(0)

    # An installed copy (no .git, as in the image): git_sha() answers with the variable the image sets.
    from raypipe.tracking import runs

    installed = tmp_path / "site-packages" / "raypipe" / "tracking" / "runs.py"
    monkeypatch.setattr(runs, "__file__", str(installed))
    monkeypatch.delenv("RAYPIPE_GIT_SHA", raising=False)
    assert runs.git_sha() == "unknown"
    monkeypatch.setenv("RAYPIPE_GIT_SHA", "0123abc")
    assert runs.git_sha() == "0123abc"
    # A tree exported by cluster/export-ref.sh: its REVISION file.
    installed.parents[2].mkdir(parents=True, exist_ok=True)
    (installed.parents[2] / "REVISION").write_text("feedbeef\n")
    assert runs.git_sha() == "feedbeef"


def test_aws_nodes_export_the_revision(launcher):
    rc = " ".join(launcher["setup_commands"])
    assert "export RAYPIPE_GIT_SHA=$(cat ~/raypipe/REVISION)" in rc
    assert "REVISION" in (REPO / "cluster" / "export-ref.sh").read_text()


WALKTHROUGHS = [REPO / "README.md", REPO / "cluster" / "README.md", REPO / "Makefile", checks.RAYJOB,
                checks.RAYCLUSTER, checks.COMPOSE, checks.LAUNCHER]


@pytest.mark.parametrize("path", WALKTHROUGHS, ids=lambda p: p.name)
def test_every_job_command_gives_absolute_data(path):
    assert checks.job_data_problems(path.read_text(), path.name) == []


def test_job_commands_are_found_and_the_data_check_fails_without_data(manifests):
    cluster_readme = (REPO / "cluster" / "README.md").read_text()
    assert len(checks.job_commands(cluster_readme)) >= 5  # compose demo + real, pipeline, AWS, KubeRay
    entry = manifests["rayjob"]["spec"]["entrypoint"]
    assert checks.job_data_problems(entry, "entrypoint") == []
    assert checks.job_data_problems(entry.replace("--data /shared/demo-data ", ""), "entrypoint")
    broken = cluster_readme.replace("--preset demo --data /shared/runs/demo-data --storage",
                                    "--preset demo --storage")
    assert len(checks.job_data_problems(broken, "README.md")) == 1
    relative = "ray job submit -- \\\n    python -m raypipe tune --data runs/demo-data --all"
    assert checks.job_data_problems(relative, "x")
