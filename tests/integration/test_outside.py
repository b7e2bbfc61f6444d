"""Blaze on services it did not start: Debian's redis-server with a password over TLS, a
SeaweedFS with its own credentials and bucket over HTTPS (certificates made here, signed by a
CA of the test's own), and the Kafka-protocol broker started by hand with topics of its own,
all bound to this side of a veth pair whose other side is a network namespace made by the
test: the consumer and the worker run there, a second "host" whose 127.0.0.1 has none of
the services, so every address Blaze uses comes from settings (where no namespace can be
made, e.g. not as root, the services bind to 127.0.0.2 instead). The consumer and the worker
are configured only through ``BLAZE_*`` variables, with a stack state folder that does not
exist and must stay so."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic
from minio import Minio

from infra.stack import tansu_binary, weed_binary
from pipelines.client import Client
from pipelines.jobs import LLMJob
from pipelines.openai.service import BatchService
from pipelines.results import LLMResult
from pipelines.settings import BlazeSettings
from pipelines.stores.status import JobState
from tests.processes import stop

REDIS = "/usr/bin/redis-server"
ALIAS = "127.0.0.2"  # where no network namespace can be made


@contextmanager
def two_hosts() -> Iterator[tuple[str, list[str]]]:
    """A second "host": a network namespace joined to this one by a veth pair. Yields the
    services' address (this side of the pair) and the command prefix that runs a process on
    the other side; where namespaces cannot be made (not root), another loopback address and
    no prefix."""
    name, net = f"blz{os.getpid() % 100000}", 64 + os.getpid() % 150
    here, there = f"10.{net}.77.1", f"10.{net}.77.2"
    ns = ["ip", "netns", "exec", name]
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", f"{name}h", "type", "veth", "peer", "name", f"{name}n"],
        ["ip", "link", "set", f"{name}n", "netns", name],
        ["ip", "addr", "add", f"{here}/30", "dev", f"{name}h"],
        ["ip", "link", "set", f"{name}h", "up"],
        [*ns, "ip", "addr", "add", f"{there}/30", "dev", f"{name}n"],
        [*ns, "ip", "link", "set", f"{name}n", "up"],
        [*ns, "ip", "link", "set", "lo", "up"],
    ]
    made = shutil.which("ip") is not None and os.geteuid() == 0
    try:
        for step in steps if made else []:
            if subprocess.run(step, capture_output=True, timeout=10).returncode != 0:
                made = False
                break
        yield (here, ns) if made else (ALIAS, [])
    finally:
        subprocess.run(["ip", "link", "del", f"{name}h"], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def certificates(home: Path, host: str) -> tuple[Path, Path, Path]:
    """A CA of the test's own and a server certificate for ``host`` it signed."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "blaze test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (home / "ca.pem", home / "server.pem", home / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def wait_for(check: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:  # not up yet
            pass
        assert time.monotonic() < deadline, f"{what} did not come up"
        time.sleep(0.2)


@contextmanager
def services(home: Path, host: str) -> Iterator[BlazeSettings]:
    """The three services, started here by hand; the settings that reach them."""
    procs: list[subprocess.Popen[bytes]] = []
    logs = home / "logs"
    logs.mkdir()

    def start(name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        with (logs / f"{name}.log").open("wb") as fh:
            procs.append(
                subprocess.Popen(
                    argv, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
                )
            )

    password = secrets.token_urlsafe(24)
    access, secret = "outside-" + secrets.token_hex(4), secrets.token_urlsafe(24)
    rport, s3port, s3tls, kport = free_port(host), free_port(host), free_port(host), free_port(host)
    ca, cert, key = certificates(home, host)
    try:
        conf = home / "redis.conf"  # the password stays off the command line; TLS only
        conf.write_text(
            f"bind {host}\nport 0\ntls-port {rport}\ntls-cert-file {cert}\n"
            f"tls-key-file {key}\ntls-ca-cert-file {ca}\ntls-auth-clients no\n"
            f"requirepass {password}\ndir {home}\n"
            'appendonly yes\nsave ""\nprotected-mode yes\n'
        )
        start("redis", [REDIS, str(conf)])
        (home / "s3.json").write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "outside",
                            "credentials": [{"accessKey": access, "secretKey": secret}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        weed_ports = [free_port(host) for _ in range(4)]
        start(
            "s3",
            [
                str(weed_binary()),
                "mini",
                f"-dir={home / 'weed'}",
                f"-ip={host}",
                f"-ip.bind={host}",
                f"-s3.port={s3port}",  # plain HTTP: for the broker's own storage only
                f"-s3.port.https={s3tls}",  # what Blaze uses
                f"-s3.cert.file={cert}",
                f"-s3.key.file={key}",
                f"-s3.config={home / 's3.json'}",
                f"-master.port={weed_ports[0]}",
                f"-filer.port={weed_ports[1]}",
                f"-volume.port={weed_ports[2]}",
                f"-admin.port={weed_ports[3]}",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
                "-bucket=outside-results,outside-kafka",
            ],
        )
        s3 = Minio(f"{host}:{s3port}", access_key=access, secret_key=secret, secure=False)
        wait_for(lambda: s3.bucket_exists("outside-kafka"), "SeaweedFS")
        kafka = f"{host}:{kport}"
        start(
            "kafka",
            [
                str(tansu_binary()),
                "broker",
                f"--listener-url=tcp://{kafka}",
                f"--advertised-listener-url=tcp://{kafka}",
                "--storage-engine=s3://outside-kafka/",
            ],
            {
                "AWS_ACCESS_KEY_ID": access,
                "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_ENDPOINT": f"http://{host}:{s3port}",
                "AWS_ALLOW_HTTP": "true",
                "AWS_DEFAULT_REGION": "us-east-1",
            },
        )
        tls = {"ssl": True, "ssl_ca_certs": str(ca), "ssl_cert_reqs": "required"}
        r = redis.Redis(host=host, port=rport, password=password, **tls)  # type: ignore[arg-type]
        wait_for(r.ping, "redis-server")
        with pytest.raises(redis.AuthenticationError):  # it does ask for the password
            redis.Redis(host=host, port=rport, **tls).ping()  # type: ignore[arg-type]
        with pytest.raises(redis.ConnectionError):  # and speaks TLS only
            redis.Redis(host=host, port=rport, password=password).ping()
        admin: list[KafkaAdminClient] = []
        wait_for(lambda: admin.append(KafkaAdminClient(bootstrap_servers=kafka)) or True, "kafka")
        # topics of its own: 3 partitions, where Blaze would have made 4
        admin[0].create_topics(
            [NewTopic(f"outside.{t}", 3, 1) for t in ("jobs.llm", "status", "dead-letter")]
        )
        admin[0].close()
        yield BlazeSettings(
            namespace="outside",
            kafka={"bootstrap_servers": kafka},
            redis={
                "url": f"rediss://{host}:{rport}/0",
                "password": password,
                "ssl_ca_file": str(ca),
            },
            s3={
                "endpoint": f"{host}:{s3tls}",
                "secure": True,
                "ca_file": str(ca),
                "access_key": access,
                "secret_key": secret,
                "bucket": "outside-results",
            },
            stack={"state_dir": home / "no-stack-here"},
            batch={"max_size": 8, "max_wait_s": 0.2},
        )
    finally:
        stop(procs)


@pytest.mark.skipif(not Path(REDIS).exists(), reason="infra/dev.sh setup installs redis-server")
def test_the_whole_pipeline_runs_on_services_blaze_did_not_start(tiny_models: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="blaze-outside-"))
    try:
        with two_hosts() as (host, elsewhere), services(home, host) as base:
            settings = base.model_copy(
                update={"models_dir": tiny_models, "registry_file": home / "models.yaml"}
            )
            settings.registry_file.write_text(
                f"models:\n  tiny:\n    source: {tiny_models / 'tiny'}\n    dtype: float32\n"
            )
            run_pipeline(settings, home, elsewhere)
            assert not settings.stack.state_dir.exists()  # nothing looked for the stack
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run_pipeline(settings: BlazeSettings, home: Path, elsewhere: list[str]) -> None:
    """The consumer and the worker on the other "host" (``elsewhere``: the command prefix
    that runs there), the SDK here."""
    # only BLAZE_* variables reach the processes: none of the embedded stack's
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLAZE_")}
    env.update(settings.to_env())
    procs: list[subprocess.Popen[bytes]] = []
    logs = {name: home / f"{name}.log" for name in ("worker", "consumer")}
    try:
        for name, args in (("worker", ["worker", "--device", "cpu"]), ("consumer", ["consume"])):
            with logs[name].open("wb") as fh:
                procs.append(
                    subprocess.Popen(
                        [*elsewhere, sys.executable, "-m", "blaze", *args],
                        env=env,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                    )
                )
        for name, text in (("worker", " ready."), ("consumer", "intake joined group")):
            wait_for(lambda n=name, t=text: t in logs[n].read_text(errors="replace"), name, 120)
        if elsewhere:  # they do run on the other side of the veth pair
            ours = os.readlink("/proc/self/ns/net")
            assert all(os.readlink(f"/proc/{p.pid}/ns/net") != ours for p in procs)
        with Client(settings) as client:
            jobs = [LLMJob(model="tiny", prompt=f"outside {i}", max_new_tokens=4) for i in range(6)]
            client.submit_many(jobs)
            final = client.wait([j.job_id for j in jobs], timeout=120)
            assert {s.state for s in final.values()} == {JobState.SUCCEEDED}
            docs = [client.result(j.job_id) for j in jobs]
            assert all(isinstance(d, LLMResult) and d.text is not None for d in docs)
            assert all(s.times.get("running") for s in final.values())
            # an OpenAI-style batch: input file in, output file out, through the same services
            service = BatchService.of(client)
            lines = [
                (
                    n,
                    json.dumps(
                        {
                            "custom_id": f"q{n}",
                            "method": "POST",
                            "url": "/v1/chat/completions",
                            "body": {
                                "model": "tiny",
                                "messages": [{"role": "user", "content": f"q{n}"}],
                                "max_tokens": 3,
                            },
                        }
                    ),
                )
                for n in range(1, 4)
            ]
            batch = service.submit_lines(lines, source="outside.jsonl")
            assert service.wait(batch.id, timeout=120).status == "completed"
            out = client.result_store.get(settings.openai_batch_prefix(batch.id) + "output.jsonl")
            rows = [json.loads(x) for x in (out or b"").splitlines()]
            assert sorted(r["custom_id"] for r in rows) == ["q1", "q2", "q3"]
            assert all(r["response"]["status_code"] == 200 for r in rows)
        # Blaze used the topics it found (3 partitions) instead of making its own
        reader = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
        try:
            assert reader.partitions_for_topic(settings.jobs_topic("llm")) == {0, 1, 2}
        finally:
            reader.close()
    finally:
        stop(procs)
