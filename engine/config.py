"""EngineConfig: the one frozen configuration object, in sections. Only `engine.cli` builds it
(flag, else `STREAMWISE_*` environment variable, else the default given here); each piece of
the engine receives just its own section.

Types, defaults, bounds and choices live here and nowhere else: the CLI reads them to build its
flags and their `--help`, and validates every value once, through this model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

__all__ = ["ApiConfig", "EngineConfig", "KafkaConfig", "KafkaSecurity", "LogConfig",
           "ModelConfig", "StateConfig"]


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


SecurityProtocol = Annotated[Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
                             BeforeValidator(_upper)]
SaslMechanism = Annotated[Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"],
                          BeforeValidator(_upper)]
LogLevel = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                     BeforeValidator(_upper)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSecurity(_Frozen):
    """How every Kafka client of the engine connects: TLS (optionally mutual) and SASL.

    The password is a secret: it never shows in a repr, a log line or an error. It comes from
    the environment or a file, never from a flag (flags show in the process list).
    """

    protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="how clients talk to the brokers")
    ssl_cafile: Path | None = Field(
        default=None, description="PEM file of the CA(s) that signed the brokers' certificates "
                                  "(default: the system's trust store)")
    ssl_certfile: Path | None = Field(
        default=None, description="PEM client certificate (mutual TLS); may hold the key too")
    ssl_keyfile: Path | None = Field(
        default=None, description="PEM private key of --ssl-certfile (mutual TLS)")
    ssl_check_hostname: bool = Field(
        default=True, description="check that the broker's certificate names the host")
    sasl_mechanism: SaslMechanism | None = Field(
        default=None, description="SASL mechanism (needed with SASL_SSL and SASL_PLAINTEXT)")
    sasl_username: str | None = Field(default=None, description="SASL user (PLAIN, SCRAM)")
    sasl_password: SecretStr | None = Field(
        default=None, description="SASL password (PLAIN, SCRAM): environment or file only")
    sasl_oauth_token_provider: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="OAUTHBEARER token provider, MODULE:CALLABLE: a callable returning a token "
                    "(str, maybe awaitable), or an aiokafka AbstractTokenProvider")

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        ssl_files = [n for n in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
                     if getattr(self, n) is not None]
        if ssl_files and not self.uses_ssl:
            raise ValueError(f"{_flags(ssl_files)} need{'s' * (len(ssl_files) == 1)} "
                             f"--security-protocol SSL or SASL_SSL, not {self.protocol}")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("--ssl-keyfile needs --ssl-certfile (the client certificate)")
        sasl = [n for n in ("sasl_mechanism", "sasl_username", "sasl_password",
                            "sasl_oauth_token_provider") if getattr(self, n) is not None]
        if not self.uses_sasl:
            if sasl:
                raise ValueError(f"{_flags(sasl)} need{'s' * (len(sasl) == 1)} "
                                 "--security-protocol SASL_SSL or SASL_PLAINTEXT, not "
                                 f"{self.protocol}")
            return self
        if self.sasl_mechanism is None:
            raise ValueError(f"--security-protocol {self.protocol} needs --sasl-mechanism "
                             "(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)")
        if self.sasl_mechanism == "OAUTHBEARER":
            if self.sasl_oauth_token_provider is None:
                raise ValueError("--sasl-mechanism OAUTHBEARER needs "
                                 "--sasl-oauth-token-provider MODULE:CALLABLE")
        elif self.sasl_username is None or self.sasl_password is None:
            raise ValueError(f"--sasl-mechanism {self.sasl_mechanism} needs --sasl-username and "
                             "a password (STREAMWISE_SASL_PASSWORD or --sasl-password-file)")
        return self


def _flags(names: list[str]) -> str:
    return ", ".join("--" + n.replace("_", "-") for n in names)


class KafkaConfig(_Frozen):
    bootstrap: str = Field(default="127.0.0.1:9092", min_length=1,
                           description="bootstrap servers, HOST:PORT[,HOST:PORT...]")
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$",
                              description="prefix of every topic and group name (isolation)")
    partitions: int | None = Field(default=None, ge=1, le=1024,  # None: the topology's default
                                   description="partitions of the topology's topics "
                                               "(default: the topology's, 8 for fraud)")
    replication_factor: int = Field(default=1, ge=-1, le=32,
                                    description="replication factor of topics the engine "
                                                "creates (-1: the broker's default)")
    create_input_topic: bool = Field(
        default=False, description="create the input topic when it is missing (development; "
                                   "without it a worker refuses to start on a missing input)")
    fetch_max_wait_ms: int = Field(default=5, ge=0, le=5000,
                                   description="how long a fetch may wait for data")
    max_batch_records: int = Field(default=2000, ge=1, le=100_000,
                                   description="max records per pipeline batch")
    cycle_ms: float = Field(default=10.0, gt=0, le=10_000,
                            description="pipeline work per poll to aim at: a poll's record "
                                        "limit adapts to it")
    commit_interval_ms: int = Field(default=100, ge=0, le=60_000,
                                    description="input offsets are committed at most this "
                                                "often (and when idle)")
    security: KafkaSecurity = KafkaSecurity()


class StateConfig(_Frozen):
    data_dir: Path = Field(default=Path("data"),
                           description="RocksDB state directory (one per worker)")
    standby_replicas: int = Field(
        default=1, ge=0, le=8,
        description="standby replicas of each partition kept by the other workers of the "
                    "group (tails of its changelog; 0: none)")
    standby_max_lag_ms: int = Field(
        default=1000, ge=0, le=3_600_000,
        description="a lookup answered from a standby replica says stale: true past this lag")


class ApiConfig(_Frozen):
    host: str = Field(default="127.0.0.1", min_length=1, description="HTTP API address")
    port: int = Field(default=6066, ge=0, le=65535, description="HTTP API port (0: any free)")
    token: SecretStr | None = Field(default=None, description="bearer token required on /v1/* "
                                                              "(prefer the environment)")
    advertise_url: str | None = Field(
        default=None, pattern=r"^https?://\S+$",
        description="URL other workers forward lookups to (default http://HOST:PORT as bound; "
                    "set it when binding 0.0.0.0 in a container)")


def _pins(value: object) -> object:
    """``"a=1,b=2"`` (the environment) or ``["a=1", "b=2"]`` (repeated flags) -> a mapping."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        out = {}
        for item in value:
            name, sep, version = str(item).strip().partition("=")
            if not sep or not name or not version:
                raise ValueError(f"takes NAME=VERSION (e.g. primary=1), not {item!r}")
            out[name] = version
        return out
    return value


class ModelConfig(_Frozen):
    models_dir: Path | None = Field(default=None,
                                    description="model registry folder (default: the "
                                                "topology's models/)")
    pins: Annotated[dict[str, str], BeforeValidator(_pins)] = Field(
        default_factory=dict, description="pin a model version, NAME=VERSION (default: the "
                                          "newest valid one)")
    faults: str = ""  # chaos tests only; see engine/scoring/faults.py


class LogConfig(_Frozen):
    level: LogLevel = Field(default="INFO", description="log level")
    format: Literal["text", "json"] = Field(default="text",
                                            description="text, or one JSON object per line")

    @field_validator("format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class EngineConfig(_Frozen):
    kafka: KafkaConfig = KafkaConfig()
    state: StateConfig = StateConfig()
    api: ApiConfig = ApiConfig()
    models: ModelConfig = ModelConfig()
    log: LogConfig = LogConfig()
