"""Start, stop and inspect the local development stack (run through `infra/stack.sh`).

Services, every one bound to HIP_STACK_HOST (default 127.0.0.1), each started detached in
its own session with its log, pid file and data under HIP_STACK_DIR (default `.stack`):

  s3       SeaweedFS `weed mini` (S3 API on HIP_S3_PORT, default 8333) with enforced
           credentials and a bucket HIP_S3_BUCKET (default `hip`)
  mlflow   MLflow tracking server (HIP_MLFLOW_PORT, default 5000), SQLite backend,
           artifacts proxied to $STATE/mlflow/artifacts or HIP_MLFLOW_ARTIFACTS=s3://...
  prefect  Prefect server (HIP_PREFECT_PORT, default 4200) + work pools `cpu` and `gpu`
           (both `process`; `gpu` has a concurrency limit of 1)
  worker   a Prefect process worker on pool `cpu`, and
  gpu-worker one on pool `gpu` (training deployments; on a host without a GPU it trains
           on the CPU); both skipped when HIP_STACK_WORKER=0

Commands: start|stop|status [SERVICE...], env. Only the standard library is imported at
module level; boto3 is imported when the bucket is created. Secrets (the S3 keys) are kept
in $STATE/s3.env (mode 600) and printed by `env` only.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SERVICES = ("s3", "mlflow", "prefect", "worker", "gpu-worker")
# weed mini opens all of these (HTTP + gRPC for each component) even with -admin.ui=false;
# every one is assigned explicitly so that nothing binds a default port or another address.
WEED_EXTRA_PORTS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port",
)  # fmt: skip
REPO = Path(__file__).resolve().parents[1]
# One local process worker per work pool: on a laptop the `gpu` pool's worker trains on
# whatever the host has, so `prefect deployment run hip/pretrain` works everywhere.
WORKERS = {"worker": "cpu", "gpu-worker": "gpu"}
POOLS = {"cpu": None, "gpu": 1}  # name -> concurrency limit (None: unlimited)


class StackError(RuntimeError):
    """A service failed to start or the configuration is wrong (message is user-facing)."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise StackError(f"{name} must be an integer, got {raw!r}") from exc


@dataclass
class Config:
    """Everything the stack reads from the environment."""

    host: str
    state: Path
    prefect_port: int
    mlflow_port: int
    s3_port: int
    worker: bool
    bucket: str
    timeout: float
    grace: float
    mlflow_artifacts: str
    prefect_ui: bool
    bin_dir: Path
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Config:
        state = Path(os.environ.get("HIP_STACK_DIR") or REPO / ".stack")
        return cls(
            host=os.environ.get("HIP_STACK_HOST") or "127.0.0.1",
            state=state.resolve(),
            prefect_port=_env_int("HIP_PREFECT_PORT", 4200),
            mlflow_port=_env_int("HIP_MLFLOW_PORT", 5000),
            s3_port=_env_int("HIP_S3_PORT", 8333),
            worker=os.environ.get("HIP_STACK_WORKER", "1").strip() != "0",
            bucket=os.environ.get("HIP_S3_BUCKET") or "hip",
            timeout=float(_env_int("HIP_STACK_TIMEOUT", 120)),
            grace=float(_env_int("HIP_STACK_STOP_GRACE", 15)),
            mlflow_artifacts=os.environ.get("HIP_MLFLOW_ARTIFACTS", "").strip(),
            prefect_ui=os.environ.get("HIP_PREFECT_UI", "1").strip() != "0",
            bin_dir=Path(sys.executable).parent,
        )

    # -- addresses -------------------------------------------------------------------------
    @property
    def client_host(self) -> str:
        """The address clients use: a wildcard bind is reached through loopback."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host

    def url(self, port: int) -> str:
        return f"http://{self.client_host}:{port}"

    @property
    def prefect_api(self) -> str:
        return self.url(self.prefect_port) + "/api"

    @property
    def mlflow_url(self) -> str:
        return self.url(self.mlflow_port)

    @property
    def s3_url(self) -> str:
        return self.url(self.s3_port)

    @property
    def mlflow_uses_stack_s3(self) -> bool:
        return self.mlflow_artifacts.startswith("s3://") and not os.environ.get(
            "MLFLOW_S3_ENDPOINT_URL"
        )

    # -- files -----------------------------------------------------------------------------
    def pid_file(self, name: str) -> Path:
        return self.state / "run" / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.log"

    @property
    def s3_env_file(self) -> Path:
        return self.state / "s3.env"

    @property
    def ports_file(self) -> Path:
        return self.state / "ports.json"

    def binary(self, name: str) -> str:
        local = self.bin_dir / name
        if local.exists():
            return str(local)
        found = shutil.which(name)
        if not found:
            raise StackError(f"`{name}` not found beside {sys.executable} nor on PATH")
        return found


# -- processes ------------------------------------------------------------------------------
def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], pgrp [2], start [19])."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid` (each service is its own group)."""
    if not Path("/proc/self/stat").exists():  # not Linux: only the leader is known
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except OSError:
            return []
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                pids.append(int(entry.name))
    return pids


def _start_time(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields else None


def read_pid(cfg: Config, name: str) -> dict | None:
    """The pid record of a running service; a stale record (process gone) is removed."""
    path = cfg.pid_file(name)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = int(info["pid"])
    leader_same = _start_time(pid) in (None, info.get("start"))  # None: leader gone, group left
    if leader_same and group_pids(pid):
        return info
    path.unlink(missing_ok=True)
    return None


def launch(cfg: Config, name: str, cmd: list[str], env: dict, cwd: Path) -> int:
    """Start `cmd` detached (own session and process group), output appended to its log."""
    log_path = cfg.log_file(name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n==> {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_path = cfg.pid_file(name)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.write_text(json.dumps({"pid": proc.pid, "start": _start_time(proc.pid)}) + "\n")
    proc.returncode = 0  # detached: never reaped or waited on by this short-lived process
    return proc.pid


def stop_group(pgid: int, grace: float, double_term: bool = False) -> bool:
    """SIGTERM the group (twice for a Prefect worker), SIGKILL after `grace` s; True if killed."""

    def signal_group(sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass

    signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    second_term = time.monotonic() + 1.0 if double_term else None
    while time.monotonic() < deadline:
        if not group_pids(pgid):
            return False
        if second_term is not None and time.monotonic() >= second_term:
            signal_group(signal.SIGTERM)
            second_term = None
        time.sleep(0.2)
    signal_group(signal.SIGKILL)
    end = time.monotonic() + 10
    while group_pids(pgid) and time.monotonic() < end:
        time.sleep(0.1)
    return True


def log_tail(cfg: Config, name: str, secret_values: list[str], lines: int = 15) -> str:
    try:
        text = cfg.log_file(name).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return redact("\n".join("    " + line for line in text), secret_values)


def redact(text: str, secret_values: list[str]) -> str:
    for value in secret_values:
        if value:
            text = text.replace(value, "***")
    return text


# -- ports ------------------------------------------------------------------------------------
def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(host: str, n: int, avoid: set[int]) -> list[int]:
    """n distinct free ports on `host` (sockets held open together so the picks differ)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks, ports = [], []
    try:
        while len(ports) < n:
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
            port = sock.getsockname()[1]
            if port not in avoid:
                ports.append(port)
        return ports
    finally:
        for sock in socks:
            sock.close()


def weed_ports(cfg: Config) -> dict[str, int]:
    """The extra weed ports: HIP_S3_PORT_BASE+i if set, else recorded ones if still free,
    else a fresh free-port search; the choice is recorded in $STATE/ports.json."""
    main = {cfg.prefect_port, cfg.mlflow_port, cfg.s3_port}
    base = os.environ.get("HIP_S3_PORT_BASE", "").strip()
    if base:
        ports = {name: int(base) + i for i, name in enumerate(WEED_EXTRA_PORTS)}
    else:
        try:
            ports = json.loads(cfg.ports_file.read_text())["weed"]
        except (OSError, ValueError, KeyError):
            ports = {}
        usable = set(ports) == set(WEED_EXTRA_PORTS) and len(set(ports.values())) == len(ports)
        if not usable or any(p in main or not port_free(cfg.host, p) for p in ports.values()):
            picks = free_ports(cfg.host, len(WEED_EXTRA_PORTS), main)
            ports = dict(zip(WEED_EXTRA_PORTS, picks))
    busy = [f"{n}={p}" for n, p in ports.items() if p in main or not port_free(cfg.host, p)]
    if busy:
        raise StackError(f"s3: ports in use: {', '.join(busy)} (change HIP_S3_PORT_BASE)")
    cfg.ports_file.write_text(json.dumps({"weed": ports}, indent=1) + "\n")
    return ports


def recorded_weed_ports(cfg: Config) -> dict[str, int]:
    try:
        return json.loads(cfg.ports_file.read_text())["weed"]
    except (OSError, ValueError, KeyError):
        return {}


# -- credentials --------------------------------------------------------------------------------
def _read_env_file(path: Path) -> dict[str, str]:
    values = {}
    try:
        for line in path.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, value = line.split("=", 1)
                values[key.strip()] = value.strip()
    except OSError:
        pass
    return values


def s3_credentials(cfg: Config, create: bool) -> tuple[str, str] | None:
    """The S3 keys: the running server's ($STATE/s3.env) if it runs, else the environment's
    AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, else $STATE/s3.env, else fresh random ones.
    Whatever is chosen is recorded in $STATE/s3.env (mode 600)."""
    stored = _read_env_file(cfg.s3_env_file)
    stored_pair = (stored.get("AWS_ACCESS_KEY_ID"), stored.get("AWS_SECRET_ACCESS_KEY"))
    if read_pid(cfg, "s3") and all(stored_pair):
        return stored_pair  # type: ignore[return-value]
    env_pair = (os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY"))
    if all(env_pair):
        pair = env_pair
    elif all(stored_pair):
        pair = stored_pair
    elif create:
        pair = ("hip" + secrets.token_hex(8), secrets.token_hex(24))
    else:
        return None
    if create and pair != stored_pair:
        fd = os.open(cfg.s3_env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"AWS_ACCESS_KEY_ID={pair[0]}\nAWS_SECRET_ACCESS_KEY={pair[1]}\n")
    if cfg.s3_env_file.exists():
        os.chmod(cfg.s3_env_file, 0o600)
    return pair  # type: ignore[return-value]


# -- health -------------------------------------------------------------------------------------
def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False


def http_json(url: str, body: dict | None = None, timeout: float = 5.0) -> object:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def s3_client(cfg: Config, creds: tuple[str, str]):  # noqa: ANN201 - boto3 client
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client(
        "s3",
        endpoint_url=cfg.s3_url,
        aws_access_key_id=creds[0],
        aws_secret_access_key=creds[1],
        region_name="us-east-1",
        config=BotoConfig(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
    )


def healthy(cfg: Config, name: str, creds: tuple[str, str] | None = None) -> bool:
    if name == "prefect":
        return http_ok(cfg.prefect_api + "/health")
    if name == "mlflow":
        return http_ok(cfg.mlflow_url + "/health")
    if name == "s3":
        if not http_ok(cfg.s3_url + "/healthz"):
            return False
        if creds is None:
            return True
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            s3_client(cfg, creds).list_buckets()
            return True
        except (BotoCoreError, ClientError):
            return False
    if name in WORKERS:
        pool = WORKERS[name]
        try:
            workers = http_json(f"{cfg.prefect_api}/work_pools/{pool}/workers/filter", {})
        except (OSError, ValueError):
            return False
        return any(
            w.get("name") == worker_name(pool) and w.get("status") == "ONLINE"
            for w in workers or []  # type: ignore[union-attr]
        )
    raise ValueError(name)


def worker_name(pool: str = "cpu") -> str:
    return f"hip-local-{pool}"


# -- service definitions -----------------------------------------------------------------------
def base_env() -> dict[str, str]:
    drop = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_HOME")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in drop}
    env["PYTHONUNBUFFERED"] = "1"
    return env


LEASE_STORAGE_ENV = "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"


def prefect_env(cfg: Config) -> dict[str, str]:
    env = base_env()
    env.update(
        PREFECT_HOME=str(cfg.state / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_URL=cfg.prefect_api,
    )
    return env


def client_env(cfg: Config, creds: tuple[str, str] | None) -> dict[str, str]:
    """What `env` prints and what the worker's flow runs get."""
    env = {
        "PREFECT_API_URL": cfg.prefect_api,
        "MLFLOW_TRACKING_URI": cfg.mlflow_url,
        "AWS_ENDPOINT_URL": cfg.s3_url,
        "AWS_REGION": "us-east-1",
        "HIP_S3_BUCKET": cfg.bucket,
    }
    if creds:
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = creds
    return env


def service_command(cfg: Config, name: str, creds: tuple[str, str] | None) -> tuple:
    """(argv, env, cwd) for one service."""
    host = cfg.host
    if name == "s3":
        ports = weed_ports(cfg)
        root = cfg.state / "s3"
        (root / "data").mkdir(parents=True, exist_ok=True)
        cmd = [
            cfg.binary("weed"), "mini", f"-dir={root / 'data'}", f"-ip={cfg.client_host}",
            f"-ip.bind={host}", f"-s3.port={cfg.s3_port}", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            f"-filer.localSocket={root / 'filer.sock'}", f"-s3.localSocket={root / 's3.sock'}",
        ] + [f"-{port_name}={port}" for port_name, port in ports.items()]  # fmt: skip
        env = base_env()
        assert creds is not None
        env.update(AWS_ACCESS_KEY_ID=creds[0], AWS_SECRET_ACCESS_KEY=creds[1])
        return cmd, env, root
    if name == "mlflow":
        root = cfg.state / "mlflow"
        (root / "artifacts").mkdir(parents=True, exist_ok=True)
        env = base_env()
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        dest = str(root / "artifacts")
        if cfg.mlflow_artifacts:
            dest = cfg.mlflow_artifacts
            if cfg.mlflow_uses_stack_s3:
                assert creds is not None
                env.update(
                    MLFLOW_S3_ENDPOINT_URL=cfg.s3_url,
                    AWS_ACCESS_KEY_ID=creds[0],
                    AWS_SECRET_ACCESS_KEY=creds[1],
                    AWS_REGION="us-east-1",
                )
            else:  # external store: pass the caller's AWS settings through
                env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
        cmd = [
            cfg.binary("mlflow"), "server", "--host", host, "--port", str(cfg.mlflow_port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", dest, "--serve-artifacts",
            "--workers", os.environ.get("HIP_MLFLOW_WORKERS", "1"),
        ]  # fmt: skip
        return cmd, env, root
    if name == "prefect":
        (cfg.state / "prefect").mkdir(parents=True, exist_ok=True)
        cmd = [
            cfg.binary("prefect"), "server", "start", "--host", host,
            "--port", str(cfg.prefect_port), "--analytics-off",
            "--ui" if cfg.prefect_ui else "--no-ui",
        ]  # fmt: skip
        env = prefect_env(cfg)
        env.pop("PREFECT_API_URL")
        # Deployment concurrency leases on disk (in PREFECT_HOME), not in the server's memory:
        # with the in-memory default a server restart forgets them, and every running flow run
        # of a deployment with a concurrency limit then terminates itself ("lease renewal
        # failed") a minute later.
        env[LEASE_STORAGE_ENV] = LEASE_STORAGE
        return cmd, env, cfg.state / "prefect"
    if name in WORKERS:
        cmd = [
            cfg.binary("prefect"), "worker", "start", "--pool", WORKERS[name],
            "--name", worker_name(WORKERS[name]), "--type", "process",
        ]  # fmt: skip
        env = prefect_env(cfg)
        env.update({k: v for k, v in client_env(cfg, creds).items() if k != "PREFECT_API_URL"})
        env.setdefault("HIP_PROJECT_DIR", str(REPO))  # prefect.yaml's pull step: run from here
        return cmd, env, REPO
    raise ValueError(name)


def service_port(cfg: Config, name: str) -> int | None:
    return {"s3": cfg.s3_port, "mlflow": cfg.mlflow_port, "prefect": cfg.prefect_port}.get(name)


def service_url(cfg: Config, name: str) -> str:
    if name in WORKERS:
        return f"pool {WORKERS[name]} @ {cfg.prefect_api}"
    return {"s3": cfg.s3_url, "mlflow": cfg.mlflow_url, "prefect": cfg.url(cfg.prefect_port)}[name]


# -- prefect setup ------------------------------------------------------------------------------
def ensure_pools(cfg: Config) -> None:
    """Create the work pools that are missing and set the gpu pool's concurrency limit."""
    env = prefect_env(cfg)
    prefect = cfg.binary("prefect")

    def pool(name: str) -> dict | None:
        try:
            return http_json(f"{cfg.prefect_api}/work_pools/{name}")  # type: ignore[return-value]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def run_all(cmds: list[list[str]]) -> None:
        procs = [
            (cmd, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
            for cmd in cmds
        ]
        for cmd, proc in procs:
            out = proc.communicate()[0].decode(errors="replace")
            if proc.returncode != 0:
                raise StackError(f"prefect: `{shlex.join(cmd[1:])}` failed:\n{out[-2000:]}")

    current = {name: pool(name) for name in POOLS}
    run_all(
        [
            [prefect, "work-pool", "create", name, "--type", "process"]
            for name, info in current.items()
            if info is None
        ]
    )
    limits = []
    for name, limit in POOLS.items():
        if limit is not None and (current[name] or {}).get("concurrency_limit") != limit:
            limits.append([prefect, "work-pool", "set-concurrency-limit", name, str(limit)])
    run_all(limits)
    created = [n for n, info in current.items() if info is None]
    if created or limits:
        print(f"prefect: work pools ready ({', '.join(POOLS)}; gpu concurrency limit 1)")


def ensure_buckets(cfg: Config, creds: tuple[str, str]) -> None:
    from botocore.exceptions import ClientError

    client = s3_client(cfg, creds)
    names = [cfg.bucket]
    if cfg.mlflow_uses_stack_s3:
        names.append(cfg.mlflow_artifacts[len("s3://") :].split("/", 1)[0])
    for bucket in dict.fromkeys(names):
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError:
            client.create_bucket(Bucket=bucket)
            print(f"s3: created bucket {bucket}")


# -- commands -------------------------------------------------------------------------------------
def select(cfg: Config, names: list[str], for_start: bool) -> list[str]:
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise StackError(f"unknown service(s) {unknown}; choose from {list(SERVICES)}")
    chosen = set(names or SERVICES)
    if for_start:
        for worker in WORKERS:
            if "prefect" in chosen and cfg.worker and (not names or "prefect" in names):
                chosen.add(worker)
            if not cfg.worker and worker in chosen and worker not in names:
                chosen.discard(worker)
            if worker in chosen:
                chosen.add("prefect")
        if "mlflow" in chosen and cfg.mlflow_uses_stack_s3:
            chosen.add("s3")
    return [s for s in SERVICES if s in chosen]


def cmd_start(cfg: Config, names: list[str]) -> int:
    chosen = select(cfg, names, for_start=True)
    cfg.state.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.state, 0o700)
    need_creds = "s3" in chosen or any(w in chosen for w in WORKERS)
    creds = s3_credentials(cfg, create=True) if need_creds else None
    hidden = list(creds or ())
    launched: dict[str, int] = {}
    t0 = time.monotonic()

    def start(name: str) -> None:
        info = read_pid(cfg, name)
        if info:
            print(f"{name}: already running (pid {info['pid']}) at {service_url(cfg, name)}")
            return
        port = service_port(cfg, name)
        if port is not None and not port_free(cfg.host, port):
            raise StackError(
                f"{name}: port {port} on {cfg.host} is in use by another process "
                f"(set HIP_{name.upper()}_PORT)"
            )
        cmd, env, cwd = service_command(cfg, name, creds)
        launched[name] = launch(cfg, name, cmd, env, cwd)
        print(f"{name}: starting (pid {launched[name]}), log {cfg.log_file(name)}")

    def wait(names_: list[str]) -> None:
        pending = list(names_)
        deadline = time.monotonic() + cfg.timeout
        while pending:
            for name in list(pending):
                info = read_pid(cfg, name)
                if info is None:
                    raise StackError(
                        f"{name}: exited during start-up; see {cfg.log_file(name)}:\n"
                        + log_tail(cfg, name, hidden)
                    )
                if healthy(cfg, name, creds if name == "s3" else None):
                    pending.remove(name)
                    print(
                        f"{name}: healthy at {service_url(cfg, name)} "
                        f"({time.monotonic() - t0:.1f} s)"
                    )
            if pending and time.monotonic() > deadline:
                name = pending[0]
                raise StackError(
                    f"{name}: not healthy after {cfg.timeout:.0f} s (HIP_STACK_TIMEOUT); "
                    f"see {cfg.log_file(name)}:\n" + log_tail(cfg, name, hidden)
                )
            if pending:
                time.sleep(0.4)

    try:
        servers = [s for s in chosen if s not in WORKERS]
        for name in servers:
            start(name)
        wait(servers)
        if "s3" in chosen:
            assert creds is not None
            ensure_buckets(cfg, creds)
        if "prefect" in chosen:
            ensure_pools(cfg)
        workers = [w for w in WORKERS if w in chosen]
        for name in workers:
            start(name)
        wait(workers)
    except StackError as exc:
        for name in reversed(list(launched)):
            info = read_pid(cfg, name)
            if info:
                stop_group(int(info["pid"]), cfg.grace, double_term=name in WORKERS)
            cfg.pid_file(name).unlink(missing_ok=True)
        if launched:
            print(f"stopped what this call started: {', '.join(launched)}", file=sys.stderr)
        raise exc
    print(f'stack ready: eval "$({Path(sys.argv[0]).with_suffix(".sh")} env)"')
    return 0


def cmd_stop(cfg: Config, names: list[str]) -> int:
    chosen = select(cfg, names, for_start=False)
    running = {}
    for name in chosen:
        info = read_pid(cfg, name)
        if info is None:
            print(f"{name}: not running")
            cfg.pid_file(name).unlink(missing_ok=True)
        else:
            running[name] = int(info["pid"])
    for worker in [w for w in WORKERS if w in running]:  # first, while their server is up
        killed = stop_group(running.pop(worker), cfg.grace, double_term=True)
        cfg.pid_file(worker).unlink(missing_ok=True)
        print(f"{worker}: stopped{' (killed)' if killed else ''}")
    for pid in running.values():
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for name, pid in running.items():
        killed = stop_group(pid, cfg.grace)
        cfg.pid_file(name).unlink(missing_ok=True)
        print(f"{name}: stopped{' (killed)' if killed else ''}")
    if "s3" in chosen:  # gRPC unix sockets weed leaves in /tmp, named by port
        for port in [cfg.s3_port, *recorded_weed_ports(cfg).values()]:
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
    return 0


def cmd_status(cfg: Config, names: list[str]) -> int:
    chosen = select(cfg, names, for_start=False)
    creds = s3_credentials(cfg, create=False)
    all_ok = True
    for name in chosen:
        info = read_pid(cfg, name)
        if info is None:
            state, pid = "stopped", "-"
            all_ok = all_ok and (name in WORKERS and not cfg.worker)
        else:
            ok = healthy(cfg, name, creds if name == "s3" else None)
            state, pid = ("healthy" if ok else "UNHEALTHY"), str(info["pid"])
            all_ok = all_ok and ok
        print(f"{name:<10} {service_url(cfg, name):<40} pid {pid:<8} {state}")
    print(f"state: {cfg.state}  logs: {cfg.state / 'logs'}")
    return 0 if all_ok else 3


def cmd_env(cfg: Config) -> int:
    creds = s3_credentials(cfg, create=False)
    for key, value in client_env(cfg, creds).items():
        print(f"export {key}={shlex.quote(value)}")
    if creds is None:
        print("# no S3 credentials yet: run `infra/stack.sh start s3`", file=sys.stderr)
    return 0


COMPOSE_SECRETS = (
    "HIP_POSTGRES_PASSWORD", "HIP_S3_ACCESS_KEY", "HIP_S3_SECRET_KEY",
    "HIP_MLFLOW_ADMIN_PASSWORD", "HIP_MLFLOW_SECRET_KEY",
)  # fmt: skip


def cmd_compose_env(target: Path) -> int:
    """Write random secrets for infra/compose.yaml to `target` (mode 600); never overwrite."""
    if target.exists():
        raise StackError(f"{target} exists; not overwriting (delete it to generate new secrets)")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# secrets of infra/compose.yaml, generated by infra/stack.sh compose-env\n")
        for name in COMPOSE_SECRETS:
            value = ("hip" + secrets.token_hex(8)) if name == "HIP_S3_ACCESS_KEY" else None
            fh.write(f"{name}={value or secrets.token_hex(24)}\n")
    print(f"wrote {', '.join(COMPOSE_SECRETS)} to {target} (mode 600)")
    return 0


USAGE = """usage: infra/stack.sh start|stop|status [s3|mlflow|prefect|worker ...]
       infra/stack.sh env        # eval "$(infra/stack.sh env)"
       infra/stack.sh compose-env [FILE]   # secrets for infra/compose.yaml (infra/.env)
environment: HIP_STACK_DIR (.stack) HIP_STACK_HOST (127.0.0.1) HIP_PREFECT_PORT (4200)
  HIP_MLFLOW_PORT (5000) HIP_S3_PORT (8333) HIP_S3_PORT_BASE (free ports) HIP_STACK_WORKER (1)
  HIP_S3_BUCKET (hip) HIP_MLFLOW_ARTIFACTS ($STATE/mlflow/artifacts) HIP_STACK_TIMEOUT (120)
  HIP_STACK_STOP_GRACE (15) HIP_PREFECT_UI (1) HIP_MLFLOW_WORKERS (1)"""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, names = argv[0], argv[1:]
    try:
        cfg = Config.from_env()
        if command == "start":
            return cmd_start(cfg, names)
        if command == "stop":
            return cmd_stop(cfg, names)
        if command == "status":
            return cmd_status(cfg, names)
        if command == "env" and not names:
            return cmd_env(cfg)
        if command == "compose-env" and len(names) <= 1:
            return cmd_compose_env(Path(names[0]) if names else REPO / "infra" / ".env")
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
