"""Client security for Kafka: the TLS context, the OAUTHBEARER token provider, and one-line
diagnoses of a failed first connection (wrong password, unknown CA, a plaintext client at a
TLS listener, a missing client certificate).

Secrets never leave this module in a message: errors name the user, the mechanism, the file
and the broker, never the password or a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import inspect
import ssl
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from aiokafka.abc import AbstractTokenProvider
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from .config import KafkaSecurity
from .errors import ConfigError

__all__ = ["diagnose", "security_options", "ssl_context", "token_provider"]


def security_options(security: KafkaSecurity) -> dict[str, Any]:
    """The aiokafka keyword arguments of `security` (empty for PLAINTEXT: the defaults)."""
    if security.protocol == "PLAINTEXT":
        return {}
    opts: dict[str, Any] = {"security_protocol": security.protocol}
    if security.uses_ssl:
        opts["ssl_context"] = ssl_context(security)
    if security.uses_sasl:
        opts["sasl_mechanism"] = security.sasl_mechanism
        if security.sasl_mechanism == "OAUTHBEARER":
            opts["sasl_oauth_token_provider"] = token_provider(security.sasl_oauth_token_provider)
        else:
            opts["sasl_plain_username"] = security.sasl_username
            opts["sasl_plain_password"] = (security.sasl_password.get_secret_value()
                                           if security.sasl_password else None)
    return opts


def _readable(path: Path, flag: str) -> str:
    """`path` as a string once it can be read; a one-line ConfigError naming the flag if not."""
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ConfigError(f"cannot read {flag} {path}: "
                          f"{exc.strerror or errno.errorcode.get(exc.errno, exc)}") from None
    return str(path)


@lru_cache(maxsize=8)
def ssl_context(security: KafkaSecurity) -> ssl.SSLContext:
    """One TLS client context per security setting: the CA file (else the system's trust
    store), the client certificate and key for mutual TLS, hostname checks as configured."""
    cafile = _readable(security.ssl_cafile, "--ssl-cafile") if security.ssl_cafile else None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except ssl.SSLError as exc:
        raise ConfigError(f"--ssl-cafile {cafile} holds no usable PEM certificate "
                          f"({exc.reason or exc})") from None
    ctx.check_hostname = security.ssl_check_hostname
    if security.ssl_certfile is not None:
        certfile = _readable(security.ssl_certfile, "--ssl-certfile")
        keyfile = (_readable(security.ssl_keyfile, "--ssl-keyfile")
                   if security.ssl_keyfile else None)
        try:
            ctx.load_cert_chain(certfile, keyfile)
        except ssl.SSLError as exc:
            raise ConfigError(f"--ssl-certfile {certfile}"
                              f"{f' / --ssl-keyfile {keyfile}' if keyfile else ''}: not a PEM "
                              f"certificate and its private key ({exc.reason or exc})") from None
    return ctx


class _CallableTokens(AbstractTokenProvider):
    """A token provider around a plain callable (sync or async) that returns the token."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn

    async def token(self) -> str:
        value = self._fn()
        if inspect.isawaitable(value):
            value = await value
        return str(value)


@lru_cache(maxsize=8)
def token_provider(spec: str | None) -> AbstractTokenProvider:
    """The OAUTHBEARER token provider named ``MODULE:CALLABLE``: an AbstractTokenProvider
    (class or instance), or a callable returning the token (sync or async)."""
    if not spec:
        raise ConfigError("--sasl-mechanism OAUTHBEARER needs --sasl-oauth-token-provider")
    module, _, attr = spec.partition(":")
    try:
        target = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load --sasl-oauth-token-provider {spec}: {exc}") from None
    if isinstance(target, type) and issubclass(target, AbstractTokenProvider):
        return target()
    if isinstance(target, AbstractTokenProvider):
        return target
    if callable(target):
        return _CallableTokens(target)
    raise ConfigError(f"--sasl-oauth-token-provider {spec} is not callable")


def _hosts(bootstrap: str) -> list[tuple[str, int]]:
    out = []
    for item in bootstrap.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--broker takes HOST:PORT[,HOST:PORT...], not {bootstrap!r}")
        out.append((host.strip("[]"), int(port)))
    return out


async def diagnose(bootstrap: str, security: KafkaSecurity, timeout_s: float = 10.0) -> None:
    """Open one real connection (TLS handshake, API versions, SASL authentication) to each
    bootstrap server until one succeeds; when none does, raise a one-line ConfigError that
    says what went wrong at the first one, in the user's terms."""
    opts = security_options(security)  # file and provider errors surface here, first
    first: tuple[str, int, BaseException] | None = None
    for host, port in _hosts(bootstrap):
        try:
            conn = await asyncio.wait_for(
                create_conn(host, port, request_timeout_ms=int(timeout_s * 1000), **opts),
                timeout_s)
        except (OSError, KafkaError, TimeoutError) as exc:
            first = first or (host, port, exc)
            continue
        try:  # one request: a broker may refuse a connection only once it is used
            answer = await asyncio.wait_for(conn.send(MetadataRequest([])), timeout_s)
            if not getattr(answer, "brokers", None):
                raise _Unusable("its metadata answer names no broker")
        except (OSError, KafkaError, TimeoutError, _Unusable) as exc:
            first = first or (host, port, _Unusable(str(exc) or type(exc).__name__))
            continue
        finally:
            conn.close()
        return
    assert first is not None
    host, port, exc = first
    raise ConfigError(await _explain(bootstrap, host, port, exc, security)) from None


class _Unusable(Exception):
    """The connection came up (handshake, authentication) but its first request failed."""


async def _explain(bootstrap: str, host: str, port: int, exc: BaseException,
                   security: KafkaSecurity) -> str:
    where = f"{host}:{port}"
    if isinstance(exc, KafkaConnectionError) and isinstance(exc.__cause__, ssl.SSLError):
        exc = exc.__cause__  # the broker's TLS alert, after the handshake (TLS 1.3)
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = ("pass the CA that signed it with --ssl-cafile" if security.ssl_cafile is None
                else f"--ssl-cafile {security.ssl_cafile} did not sign it")
        if "hostname" in (exc.verify_message or "").lower() or "IP address" in str(exc):
            hint = "the certificate does not name this host (or --no-ssl-check-hostname)"
        return (f"TLS: certificate verify failed for broker {where}: "
                f"{exc.verify_message or exc.reason}; {hint}")
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).lower().replace("_", " ")
        if "wrong version number" in reason or "record layer failure" in reason:
            return (f"TLS handshake with {where} failed: the listener does not speak TLS; "
                    f"use --security-protocol {'SASL_PLAINTEXT' if security.uses_sasl else 'PLAINTEXT'}")
        if "certificate required" in reason or "bad certificate" in reason \
                or "unknown ca" in reason:
            given = "no client certificate was given" if security.ssl_certfile is None else \
                f"it refused --ssl-certfile {security.ssl_certfile}"
            return (f"TLS: broker {where} requires mutual TLS and {given} ({reason}); pass "
                    "--ssl-certfile and --ssl-keyfile signed by a CA the broker trusts")
        return f"TLS handshake with {where} failed: {reason}"
    if isinstance(exc, SaslAuthenticationFailed | UnsupportedSaslMechanismError) or (
            isinstance(exc, KafkaError) and "authentic" in str(exc).lower()):
        who = (f"as {security.sasl_username!r} " if security.sasl_username
               and security.sasl_mechanism != "OAUTHBEARER" else "")
        detail = str(exc).strip() or type(exc).__name__
        return (f"authentication failed at broker {where} {who}with {security.sasl_mechanism}: "
                f"{detail}")
    if isinstance(exc, _Unusable):
        if security.uses_sasl:
            return (f"authentication failed at broker {where} with {security.sasl_mechanism}: "
                    f"the connection was not served after it ({exc}); was the token or the "
                    "password rejected?")
        return f"broker {where} dropped the connection at the first request ({exc})"
    refused = isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, OSError) and exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH,
                                                   errno.ENETUNREACH))
    if refused:
        return f"no Kafka broker answers at {bootstrap} (connection refused at {where})"
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
        return f"no Kafka broker answers at {bootstrap} ({exc.strerror or exc})"
    if not security.uses_ssl and await _speaks_tls(host, port):
        return (f"the listener at {where} expects TLS: use --security-protocol SSL or "
                "SASL_SSL (with --ssl-cafile)")
    if security.uses_ssl and isinstance(exc, ConnectionError) \
            and not await _speaks_tls(host, port):
        return (f"TLS handshake with {where} failed: the listener does not speak TLS; use "
                f"--security-protocol {'SASL_PLAINTEXT' if security.uses_sasl else 'PLAINTEXT'}")
    if isinstance(exc, TimeoutError):
        return f"no Kafka broker answers at {bootstrap} (no answer from {where})"
    if isinstance(exc, KafkaConnectionError | ConnectionError):
        return f"no Kafka broker answers at {bootstrap} ({where} closed the connection)"
    return f"no Kafka broker answers at {bootstrap} ({type(exc).__name__}: {exc})"


async def _speaks_tls(host: str, port: int, timeout_s: float = 5.0) -> bool:
    """Whether a TLS handshake (no verification: only asking) succeeds at host:port."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=host), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), timeout_s)
    return True
