"""Deployment material under infra/: every file parses, the work-pool templates are valid Prefect
base job templates that render the intended Kubernetes Job / Docker container, the compose file
holds no secret, the accelerate configs load, the Kubernetes manifests fit together.

Fast and offline, except the one ``integration`` test that creates the pools on a real Prefect server.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
POOLS = {"cpu": "process", "gpu-k8s": "kubernetes", "gpu-docker": "docker"}  # pool name -> worker type
SUBSTITUTION = re.compile(r"^\$\{[A-Z][A-Z0-9_]*(:?[-?][^}]*)?\}$")  # exactly one ${VAR}, ${VAR:-x}, ${VAR:?msg}


def pool_template(name: str) -> dict:
    return json.loads((INFRA / "pools" / f"{name}.json").read_text())


def rendered(name: str, **values) -> dict:
    """The pool's job configuration with its variable defaults (and ``values``) filled in, as a
    worker renders it before adding its own environment (unset variables drop their keys)."""
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    template = pool_template(name)
    variables = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    return apply_values(template["job_configuration"], {**variables, **values})


def yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# ---------------------------------------------------------------------------------------- files


def test_every_json_and_yaml_file_parses():
    files = sorted(p for p in INFRA.rglob("*") if p.suffix in {".json", ".yaml", ".yml"})
    assert len(files) >= 12, files
    for path in files:
        if path.suffix == ".json":
            assert isinstance(json.loads(path.read_text()), dict), path
        else:
            assert yaml_docs(path), path


# ---------------------------------------------------------------------------------- work pools


@pytest.mark.parametrize("name", POOLS)
def test_pool_template_is_valid_for_the_server(name):
    """The server's own validation (placeholders declared as variables), plus every default
    conforming to its variable's schema (what the server checks when the pool is created)."""
    import jsonschema
    from prefect.server.schemas.actions import WorkPoolCreate
    from prefect.utilities.templating import find_placeholders

    template = pool_template(name)
    WorkPoolCreate(name=name, type=POOLS[name], base_job_template=template)
    placeholders = {p.name for p in find_placeholders(json.dumps(template["job_configuration"]))}
    assert placeholders <= set(template["variables"]["properties"])
    defaults = {k: p["default"] for k, p in template["variables"]["properties"].items()
                if p.get("default") is not None}
    jsonschema.validate(defaults, template["variables"])
    assert defaults["env"] == {**defaults["env"], "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}


def test_pool_templates_extend_the_worker_defaults():
    """Each template keeps every variable of the worker's default template (prefect 3.7.7's process
    worker; the collection registry's kubernetes and docker entries bundled with the server), so
    deployments can set any job variable they could set on a default pool."""
    import prefect
    from prefect.workers.process import ProcessWorker

    views = Path(prefect.__file__).parent / "server" / "api" / "collections_data" / "views"
    registry = json.loads((views / "aggregate-worker-metadata.json").read_text())
    defaults = {"cpu": ProcessWorker.get_default_base_job_template(),
                "gpu-k8s": registry["prefect-kubernetes"]["kubernetes"]["default_base_job_configuration"],
                "gpu-docker": registry["prefect-docker"]["docker"]["default_base_job_configuration"]}
    for name, default in defaults.items():
        ours = pool_template(name)
        assert set(default["variables"]["properties"]) <= set(ours["variables"]["properties"]), name
        assert set(default["job_configuration"]) <= set(ours["job_configuration"]), name


def test_gpu_k8s_job_requests_gpus_shm_and_env_from_secret():
    job = rendered("gpu-k8s")["job_manifest"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    pod = job["spec"]["template"]["spec"]
    # what prefect-kubernetes requires of a job manifest
    assert (pod["parallelism"], pod["completions"], pod["restartPolicy"]) == (1, 1, "Never")
    (container,) = pod["containers"]
    assert container["name"] == "prefect-job"
    assert container["image"] == "posttrain-gpu-worker:latest"
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "cpu" not in resources["limits"]  # unset variables drop their keys
    assert {"configMapRef": {"name": "posttrain-config"}} in container["envFrom"]
    assert {"secretRef": {"name": "posttrain-secrets"}} in container["envFrom"]
    (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert pod["serviceAccountName"] == "posttrain-job"
    assert job["metadata"]["namespace"] == "posttrain"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0 and job["spec"]["backoffLimit"] == 0
    assert "nodeSelector" not in pod and "securityContext" not in pod

    eight = rendered("gpu-k8s", gpus=8, node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
    pod = eight["job_manifest"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_gpu_docker_container_requests_nvidia_gpus():
    config = rendered("gpu-docker")
    kwargs = config["container_create_kwargs"]
    (request,) = kwargs["device_requests"]
    assert request["driver"] == "nvidia" and request["capabilities"] == [["gpu"]] and request["count"] == -1
    assert kwargs["shm_size"] and "security_opt" not in kwargs
    assert config["image"] == "posttrain-gpu-worker:latest"
    # docker-py (what prefect-docker hands these to) accepts them as they are
    from docker.types import HostConfig

    host = HostConfig(version="1.41", **rendered("gpu-docker", gpus=2)["container_create_kwargs"])
    assert host["DeviceRequests"][0]["Count"] == 2 and host["DeviceRequests"][0]["Driver"] == "nvidia"
    assert host["ShmSize"] == 16 << 30


def test_cpu_pool_is_a_process_pool_with_quiet_threads():
    config = rendered("cpu", env={"POSTTRAIN_ARTIFACTS": "s3://b"})
    assert config["env"] == {"POSTTRAIN_ARTIFACTS": "s3://b"}  # a deployment's env; the worker merges defaults
    assert "working_dir" in pool_template("cpu")["variables"]["properties"]


# ------------------------------------------------------------------------------------- compose


def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def test_compose_has_the_stack():
    services = compose()["services"]
    assert {"postgres", "prefect-server", "mlflow", "minio", "minio-init", "cpu-worker"} <= set(services)
    server = services["prefect-server"]
    assert "0.0.0.0" in server["command"] and "/api/health" in " ".join(server["healthcheck"]["test"])
    assert "postgresql+asyncpg://" in server["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert "--artifacts-destination=s3://mlflow" in services["mlflow"]["command"]
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "posttrain-artifacts" in services["minio-init"]["command"][0]
    worker = services["cpu-worker"]
    assert worker["command"][:5] == ["prefect", "worker", "start", "--pool", "cpu"]
    env = worker["environment"]
    assert env["POSTTRAIN_ARTIFACTS"] == "s3://posttrain-artifacts" and env["PREFECT_API_URL"].endswith("/api")
    assert {"AWS_ENDPOINT_URL_S3", "MLFLOW_TRACKING_URI"} <= set(env)
    assert (REPO / worker["build"]["dockerfile"]).is_file()
    assert (INFRA / "docker" / "postgres-init.sql").is_file()


def test_compose_holds_no_secret_values():
    """Every password, secret key or token is an environment substitution, and so is the password
    inside each connection URL; every required variable is listed in .env.example."""
    text = (INFRA / "docker-compose.yml").read_text()
    secretive = re.compile(r"PASSWORD|SECRET|(^|_)TOKEN($|_)|API_KEY|AUTH_STRING")
    checked = 0
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secretive.search(key):
                assert SUBSTITUTION.match(str(value)), f"{name}: {key}={value!r} is not a ${{...}} substitution"
                checked += 1
    assert checked >= 5
    for user_info in re.findall(r"://([^/@\s]+)@", text):  # scheme://user:password@host
        user, password = user_info.split(":", 1)
        assert SUBSTITUTION.match(password) and SUBSTITUTION.match(user), user_info
    required = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", text))
    example = {line.split("=", 1)[0] for line in (INFRA / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert required and required <= example


# ---------------------------------------------------------------------------------- accelerate


@pytest.mark.parametrize("name, distributed_type, section", [("zero3", "DEEPSPEED", "deepspeed_config"),
                                                            ("fsdp", "FSDP", "fsdp_config")])
def test_accelerate_config_loads(name, distributed_type, section):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(INFRA / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == distributed_type
    assert (config.mixed_precision, config.num_processes, config.num_machines) == ("bf16", 8, 1)
    # accelerate copies these onto its launch arguments and silently ignores unknown ones
    known = {action.dest for action in launch_command_parser()._actions}
    options = getattr(config, section)
    assert options and set(options) <= known
    if name == "zero3":
        assert options["zero_stage"] == 3
    else:
        assert (options["fsdp_version"], options["fsdp_reshard_after_forward"]) == (2, True)
        assert options["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


# ---------------------------------------------------------------------------------- kubernetes


def test_kubernetes_manifests_fit_together():
    k8s = INFRA / "k8s"
    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization["resources"]
    objects = [doc for resource in kustomization["resources"] for doc in yaml_docs(k8s / resource)]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {("Namespace", "posttrain"), ("ServiceAccount", "prefect-worker"), ("Role", "prefect-worker"),
            ("RoleBinding", "prefect-worker"), ("ConfigMap", "posttrain-config"),
            ("Deployment", "prefect-worker-gpu-k8s"), ("ServiceAccount", "posttrain-job")} <= kinds
    assert kustomization["namespace"] == "posttrain"
    by_kind = {o["kind"]: o for o in objects}

    granted = {r for rule in by_kind["Role"]["rules"] for r in rule["resources"]}
    assert {"jobs", "pods", "pods/log", "events"} <= granted
    assert by_kind["RoleBinding"]["roleRef"]["name"] == by_kind["Role"]["metadata"]["name"]
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == by_kind["RoleBinding"]["subjects"][0]["name"]
    args = pod["containers"][0]["args"]
    assert args[:3] == ["prefect", "worker", "start"] and "gpu-k8s" in args and "kubernetes" in args
    assert {"PREFECT_API_URL", "MLFLOW_TRACKING_URI", "POSTTRAIN_ARTIFACTS", "AWS_ENDPOINT_URL_S3"} <= set(
        by_kind["ConfigMap"]["data"])

    # the pool template points at these objects
    variables = pool_template("gpu-k8s")["variables"]["properties"]
    assert variables["namespace"]["default"] == "posttrain"
    assert variables["config_map_name"]["default"] == by_kind["ConfigMap"]["metadata"]["name"]
    assert ("ServiceAccount", variables["service_account_name"]["default"]) in kinds
    (secret,) = yaml_docs(k8s / "secret.example.yaml")
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == variables["secret_name"]["default"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_TOKEN"} <= set(secret["stringData"])
    assert set(secret["stringData"].values()) == {"REPLACE_ME"}


def test_gpu_worker_dockerfile():
    text = (INFRA / "docker" / "gpu-worker.Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:12\.8\.\d+-runtime-ubuntu", text, re.M)
    assert 'pip install -e ".[${EXTRA}]"' in text and "ARG EXTRA=gpu" in text
    assert "download.pytorch.org/whl/cu128" in text and "prefect-kubernetes==" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in {"root", "0"}
    assert re.search(r"^CMD \[\"prefect\", \"worker\", \"start\"", text, re.M)
    ignore = (INFRA / "docker" / "gpu-worker.Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" not in ignore  # stage keys hash the git tree of posttrain/


# --------------------------------------------------------------------------------- integration


@pytest.mark.integration
def test_pools_are_created_on_a_prefect_server(prefect_harness):
    """The server accepts the three templates as they are (its placeholder and default checks) and
    stores them unchanged. Worker types are not checked by the server: kubernetes and docker pools
    need no integration package where they are created, only where their worker runs."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    async def create_read_delete():
        suffix = uuid.uuid4().hex[:6]
        async with get_client() as client:
            for name, worker_type in POOLS.items():
                pool_name = f"{name}-{suffix}"
                template = pool_template(name)
                created = await client.create_work_pool(
                    WorkPoolCreate(name=pool_name, type=worker_type, base_job_template=template))
                try:
                    assert created.type == worker_type
                    stored = await client.read_work_pool(pool_name)
                    assert stored.base_job_template == template
                finally:
                    await client.delete_work_pool(pool_name)

    asyncio.run(create_read_delete())
