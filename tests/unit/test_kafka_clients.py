"""Every Kafka client of the engine comes from one factory (kafka_io.client_options): plaintext
exactly as before, TLS and SASL from the one typed security section; mistakes in files and
hooks are one line."""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
from pathlib import Path

import pytest
from aiokafka.abc import AbstractTokenProvider
from pydantic import SecretStr

from engine.config import KafkaConfig, KafkaSecurity
from engine.errors import ConfigError
from engine.kafka_io import client_options, new_admin, new_consumer, new_producer

ROOT = Path(__file__).resolve().parents[2]
_CONSTRUCTOR = re.compile(r"\bAIOKafka(Consumer|Producer|AdminClient|Client)\(")


def test_no_module_of_the_engine_builds_a_kafka_client_itself() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "engine").rglob("*.py")
                 if p.name != "kafka_io.py" and _CONSTRUCTOR.search(p.read_text())]
    assert offenders == []


async def test_plaintext_is_the_bootstrap_alone_as_before() -> None:
    assert client_options("127.0.0.1:9092") == {"bootstrap_servers": "127.0.0.1:9092"}
    assert client_options(KafkaConfig(bootstrap="b:1")) == {"bootstrap_servers": "b:1"}
    consumer = new_consumer("b:1", "t", group_id="g")
    assert consumer._client._security_protocol == "PLAINTEXT"  # noqa: SLF001
    await consumer.stop()


def _ca(tmp_path: Path) -> Path:
    key, cert = tmp_path / "ca-key.pem", tmp_path / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=test-ca"],
                   check=True, capture_output=True, timeout=60)
    return cert


async def test_tls_and_sasl_options_reach_every_client(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    sec = KafkaSecurity(protocol="SASL_SSL", ssl_cafile=ca, ssl_check_hostname=False,
                        sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
                        sasl_password=SecretStr("p"))
    opts = client_options(KafkaConfig(bootstrap="b:1", security=sec))
    ctx = opts.pop("ssl_context")
    assert isinstance(ctx, ssl.SSLContext) and ctx.check_hostname is False
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.get_ca_certs()[0]["subject"] == (
        (("commonName", "test-ca"),),)
    assert opts == {"bootstrap_servers": "b:1", "security_protocol": "SASL_SSL",
                    "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "u",
                    "sasl_plain_password": "p"}
    cfg = KafkaConfig(bootstrap="b:1", security=sec)
    consumer, producer, admin = new_consumer(cfg), new_producer(cfg), new_admin(cfg)
    try:
        for inner in (consumer._client, producer.client, admin._client):  # noqa: SLF001
            assert inner._security_protocol == "SASL_SSL"  # noqa: SLF001
            assert inner._ssl_context is ctx  # noqa: SLF001
            assert inner._sasl_mechanism == "SCRAM-SHA-512"  # noqa: SLF001
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.close()


class _Provider(AbstractTokenProvider):
    async def token(self) -> str:
        return "from-a-class"


def sync_token() -> str:
    return "from-a-function"


async def async_token() -> str:
    return "from-a-coroutine"


@pytest.mark.parametrize("name, token", [
    ("_Provider", "from-a-class"), ("sync_token", "from-a-function"),
    ("async_token", "from-a-coroutine"),
])
def test_the_oauthbearer_hook_takes_providers_and_plain_callables(name, token) -> None:
    sec = KafkaSecurity(protocol="SASL_PLAINTEXT", sasl_mechanism="OAUTHBEARER",
                        sasl_oauth_token_provider=f"{__name__}:{name}")
    provider = client_options(KafkaConfig(security=sec))["sasl_oauth_token_provider"]
    assert isinstance(provider, AbstractTokenProvider)
    assert asyncio.run(provider.token()) == token


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_x:token", "cannot load --sasl-oauth-token-provider "
                               "no_such_module_x:token: No module named 'no_such_module_x'"),
    (f"{__name__}:missing", f"cannot load --sasl-oauth-token-provider {__name__}:missing"),
    (f"{__name__}:ROOT", f"--sasl-oauth-token-provider {__name__}:ROOT is not callable"),
])
def test_a_bad_token_provider_is_one_line(spec, message) -> None:
    sec = KafkaSecurity(protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
                        sasl_oauth_token_provider=spec)
    with pytest.raises(ConfigError) as caught:
        client_options(KafkaConfig(security=sec))
    assert str(caught.value).startswith(message)


def test_certificate_files_that_cannot_serve_are_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cases = [
        (KafkaSecurity(protocol="SSL", ssl_cafile=tmp_path / "nope.pem"),
         f"cannot read --ssl-cafile {tmp_path / 'nope.pem'}: No such file or directory"),
        (KafkaSecurity(protocol="SSL", ssl_cafile=tmp_path),
         f"cannot read --ssl-cafile {tmp_path}: Is a directory"),
        (KafkaSecurity(protocol="SSL", ssl_cafile=junk),
         f"--ssl-cafile {junk} holds no usable PEM certificate"),
        (KafkaSecurity(protocol="SSL", ssl_certfile=junk),
         f"--ssl-certfile {junk}: not a PEM certificate and its private key"),
    ]
    for sec, message in cases:
        with pytest.raises(ConfigError) as caught:
            client_options(KafkaConfig(security=sec))
        assert str(caught.value).startswith(message), str(caught.value)
