from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from pipelines.settings import BlazeSettings, load_settings


def test_defaults_point_at_the_embedded_stack() -> None:
    s = load_settings()
    assert s.kafka_bootstrap == f"127.0.0.1:{s.stack.kafka_port}"
    assert s.redis_url.startswith("redis://127.0.0.1:")
    assert s.result_key("abc") == "blaze/jobs/abc/result.json"
    assert s.queue("llm", "cuda:1") == "blaze.llm.cuda1"


def test_environment_overrides_nested_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLAZE_KAFKA__BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092")
    monkeypatch.setenv("BLAZE_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("BLAZE_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("BLAZE_KAFKA__SASL_USERNAME", "u")
    monkeypatch.setenv("BLAZE_KAFKA__SASL_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("BLAZE_S3__ENDPOINT", "minio:9000")
    monkeypatch.setenv("BLAZE_S3__SECURE", "true")
    monkeypatch.setenv("BLAZE_REDIS__URL", "redis://cache:6379/2")
    s = load_settings()
    assert s.kafka_bootstrap == "broker-1:9092,broker-2:9092"
    cfg = s.kafka.client_config()
    assert cfg["security_protocol"] == "SASL_SSL" and cfg["sasl_plain_password"] == "hunter2-secret"
    assert s.s3_endpoint == "minio:9000" and s.s3.secure
    assert s.redis_url == "redis://cache:6379/2"
    assert "hunter2" not in repr(s.kafka)  # secrets never print


@pytest.mark.parametrize(
    "var, value, named",
    [
        ("BLAZE_NAMESPACE", "Has Spaces", "BLAZE_NAMESPACE"),
        ("BLAZE_KAFKA__PARTITIONS", "0", "BLAZE_KAFKA__PARTITIONS"),
        ("BLAZE_STACK__KAFKA_PORT", "80", "BLAZE_STACK__KAFKA_PORT"),
        ("BLAZE_BATCH__MAX_WAIT_S", "-1", "BLAZE_BATCH__MAX_WAIT_S"),
        ("BLAZE_KAFKA__SECURITY_PROTOCOL", "CARRIER_PIGEON", "BLAZE_KAFKA__SECURITY_PROTOCOL"),
    ],
)
def test_bad_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, named: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert named in str(info.value)


def test_colliding_ports_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLAZE_STACK__REDIS_PORT", "18400")
    with pytest.raises(ConfigError, match="collides"):
        load_settings()


def test_settings_round_trip_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    original = load_settings(
        namespace="abc",
        kafka={"bootstrap_servers": "k:1", "sasl_password": "pw"},
        s3={"secure": True},
        batch={"max_size": 7},
    )
    for key, value in original.to_env().items():
        monkeypatch.setenv(key, value)
    assert load_settings() == original


def test_importing_pipelines_and_engines_contracts_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pipelines, pipelines.jobs, pipelines.settings, engines.base;"
        "print(sorted(m for m in ('torch', 'kafka', 'redis', 'minio', 'celery', 'airflow')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unset_credentials_come_from_the_stack_secrets_file(tmp_path: Path) -> None:
    import json

    state = tmp_path / "stack"
    bare = BlazeSettings(stack={"state_dir": state})
    assert bare.s3.access_key == "" and bare.redis.password is None  # nothing fixed ships
    state.mkdir()
    (state / "secrets.json").write_text(
        json.dumps({"s3_access_key": "ak", "s3_secret_key": "sk/+", "redis_password": "p@ss"})
    )
    s = BlazeSettings(stack={"state_dir": state})
    assert s.s3.access_key == "ak" and s.s3.secret_key.get_secret_value() == "sk/+"
    assert s.redis.password is not None and s.redis.password.get_secret_value() == "p@ss"
    assert "sk/+" not in repr(s) and "p@ss" not in repr(s)
    assert s.redis_url_with_password().startswith("redis://:p%40ss@127.0.0.1:")
    # explicit settings win, and external services never take the stack's secrets
    mine = BlazeSettings(stack={"state_dir": state}, s3={"access_key": "x", "secret_key": "y"})
    assert mine.s3.access_key == "x" and mine.s3.secret_key.get_secret_value() == "y"
    ext = BlazeSettings(
        stack={"state_dir": state}, s3={"endpoint": "s3.example:443"}, redis={"url": "redis://r/0"}
    )
    assert ext.s3.access_key == "" and ext.redis.password is None


def test_s3_without_credentials_is_a_clear_error(tmp_path: Path) -> None:
    from pipelines.stores.results_s3 import S3ResultStore

    with pytest.raises(ConfigError, match="BLAZE_S3__ACCESS_KEY"):
        S3ResultStore(BlazeSettings(stack={"state_dir": tmp_path}))


def test_s3_encryption_and_retry_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.stores.results_s3 import encryption, retry_policy

    monkeypatch.setenv("BLAZE_S3__SSE", "kms")
    with pytest.raises(ConfigError, match="sse_kms_key_id"):
        load_settings()
    monkeypatch.setenv("BLAZE_S3__SSE_KMS_KEY_ID", "arn:aws:kms:eu-west-1:1:key/k")
    sse = encryption(load_settings())
    assert sse is not None and sse.headers()["X-Amz-Server-Side-Encryption"] == "aws:kms"
    monkeypatch.setenv("BLAZE_S3__SSE", "aes")
    with pytest.raises(ConfigError, match="BLAZE_S3__SSE: Input should be 'none', 's3' or 'kms'"):
        load_settings()
    monkeypatch.setenv("BLAZE_S3__SSE", "none")
    monkeypatch.setenv("BLAZE_S3__RETRIES", "4")
    monkeypatch.setenv("BLAZE_S3__RETRY_BACKOFF_S", "0.5")
    policy = retry_policy(load_settings())
    assert policy.total == 4 and 503 in (policy.status_forcelist or ())
    from urllib3.util.retry import RequestHistory

    assert policy.get_backoff_time() == 0  # nothing failed yet
    for tries, cap in ((1, 0.5), (3, 2.0), (10, 20.0)):  # doubling, capped at 20 s
        failed = policy.new(history=(RequestHistory("PUT", "/k", None, 503, None),) * tries)
        waits = [failed.get_backoff_time() for _ in range(300)]
        # full jitter: anywhere from 0 to the cap, so throttled writers spread out
        assert 0 <= min(waits) < 0.2 * cap and 0.8 * cap < max(waits) <= cap


def test_rediss_urls_verify_the_server_in_every_client() -> None:
    import ssl

    from pipelines.stores.redis_client import redis_client, redis_tls
    from pipelines.tasks import celery_app

    plain = BlazeSettings(redis={"url": "redis://cache:6379/0"})
    assert redis_tls(plain) == {} and not celery_app(plain).conf.broker_use_ssl
    tls = BlazeSettings(
        redis={"url": "rediss://cache:6380/0", "ssl_ca_file": "/etc/ca.pem"},
        s3={"endpoint": "s3.example.com", "secure": True, "ca_file": "/etc/ca.pem"},
    )
    assert redis_tls(tls) == {"ssl_cert_reqs": "required", "ssl_ca_certs": "/etc/ca.pem"}
    kwargs = redis_client(tls).connection_pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == "/etc/ca.pem" and kwargs["ssl_cert_reqs"] == "required"
    assert celery_app(tls).conf.broker_use_ssl == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": "/etc/ca.pem",
    }
    from pipelines.stores.results_s3 import s3_tls

    assert s3_tls(tls) == {"cert_reqs": "CERT_REQUIRED", "ca_certs": "/etc/ca.pem"}
    assert s3_tls(plain) == {}


def test_the_status_store_can_live_on_its_own_redis_or_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import redis

    from pipelines.stores.redis_client import status_redis_client

    monkeypatch.setenv("BLAZE_REDIS__STATUS_CLUSTER", "true")
    with pytest.raises(ConfigError, match="status_url"):
        load_settings()
    monkeypatch.setenv("BLAZE_REDIS__URL", "redis://broker:6379/0")
    monkeypatch.setenv("BLAZE_REDIS__STATUS_URL", "rediss://status-0:6380")
    monkeypatch.setenv("BLAZE_REDIS__SSL_CA_FILE", "/etc/ca.pem")
    monkeypatch.setenv("BLAZE_REDIS__STATUS_CLUSTER", "false")
    kwargs = status_redis_client(load_settings()).connection_pool.connection_kwargs
    # the status store's own TLS URL verifies its server, though the broker's is plain
    assert kwargs["host"] == "status-0" and kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    monkeypatch.delenv("BLAZE_REDIS__STATUS_URL")
    monkeypatch.delenv("BLAZE_REDIS__STATUS_CLUSTER")
    plain = status_redis_client(load_settings())
    assert isinstance(plain, redis.Redis)
    assert plain.connection_pool.connection_kwargs["host"] == "broker"
