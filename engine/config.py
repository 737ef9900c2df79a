"""EngineConfig: the one frozen configuration object. Only `engine.cli` builds it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ApiConfig", "EngineConfig", "KafkaConfig", "StateConfig"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaConfig(_Frozen):
    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")
    partitions: int | None = Field(default=None, ge=1, le=1024)  # None: the topology's default
    replication_factor: int = Field(default=1, ge=-1)
    fetch_max_wait_ms: int = Field(default=5, ge=0, le=5000)
    max_batch_records: int = Field(default=2000, ge=1, le=100_000)
    cycle_ms: float = Field(default=10.0, gt=0, le=10_000)  # pipeline work per poll, aimed at
    commit_interval_ms: int = Field(default=100, ge=0, le=60_000)  # input offsets, at most


class StateConfig(_Frozen):
    data_dir: Path = Path("data")


class ApiConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=6066, ge=0, le=65535)
    token: str | None = Field(default=None, repr=False)


class EngineConfig(_Frozen):
    kafka: KafkaConfig = KafkaConfig()
    state: StateConfig = StateConfig()
    api: ApiConfig = ApiConfig()
    log_level: str = "INFO"
