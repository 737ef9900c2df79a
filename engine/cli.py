"""`streamwise`: the one entry point, and the only reader of argv and the environment.

Every setting is a flag, else a `STREAMWISE_*` environment variable, else the default that
`engine.config` declares; the three are merged here and validated once, by `EngineConfig`. A
mistake (a bad flag, variable, file, topic, model or broker) ends with one line on stderr and a
non-zero exit, never a traceback: 2 for what the user must fix, 1 for a run that found
nothing to do (an empty replay range).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pydantic import AliasChoices, Field, SecretStr, ValidationError, create_model
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from . import __version__
from .config import EngineConfig
from .errors import ConfigError, EngineError
from .supervisor import SHARED_PORT_FLAG

__all__ = ["child_env", "main"]

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "STREAMWISE_"

W, P, R, D, RO = "worker", "produce", "replay", "demo", "rollout"
_KAFKA = frozenset({W, P, R, D, RO})


@dataclass(frozen=True)
class _Setting:
    """One setting: its flag (None: environment only, for secrets), where it lands in
    EngineConfig, and the commands that take it. Its environment variable is
    STREAMWISE_<NAME> (plus `also_env`); type, default, bounds and help come from config."""

    name: str
    path: str
    flag: str | None
    commands: frozenset[str]
    also_env: tuple[str, ...] = ()
    repeat: bool = False
    hidden: bool = False
    secret: bool = False
    metavar: str | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


def _s(name: str, path: str, flag: str | None, commands, **kw: Any) -> _Setting:
    return _Setting(name, path, flag, frozenset(commands), **kw)


SETTINGS: tuple[_Setting, ...] = (
    _s("broker", "kafka.bootstrap", "--broker", _KAFKA, metavar="HOST:PORT,...",  also_env=("KAFKA_BOOTSTRAP_SERVERS",)),
    _s("topic_prefix", "kafka.topic_prefix", "--topic-prefix", {W, P, R, RO}, metavar="PREFIX"),
    _s("partitions", "kafka.partitions", "--partitions", {W, P, R}, metavar="N"),
    _s("replication_factor", "kafka.replication_factor", "--replication-factor", {W, P, R}, metavar="N"),
    _s("create_input_topic", "kafka.create_input_topic", "--create-input-topic", {W}),
    _s("security_protocol", "kafka.security.protocol", "--security-protocol", _KAFKA),
    _s("ssl_cafile", "kafka.security.ssl_cafile", "--ssl-cafile", _KAFKA, metavar="PEM"),
    _s("ssl_certfile", "kafka.security.ssl_certfile", "--ssl-certfile", _KAFKA, metavar="PEM"),
    _s("ssl_keyfile", "kafka.security.ssl_keyfile", "--ssl-keyfile", _KAFKA, metavar="PEM"),
    _s("ssl_check_hostname", "kafka.security.ssl_check_hostname", "--ssl-check-hostname",
       _KAFKA),
    _s("sasl_mechanism", "kafka.security.sasl_mechanism", "--sasl-mechanism", _KAFKA),
    _s("sasl_username", "kafka.security.sasl_username", "--sasl-username", _KAFKA, metavar="USER"),
    _s("sasl_password", "kafka.security.sasl_password", None, _KAFKA, secret=True),
    _s("sasl_oauth_token_provider", "kafka.security.sasl_oauth_token_provider",
       "--sasl-oauth-token-provider", _KAFKA, metavar="MODULE:CALLABLE"),
    _s("fetch_max_wait_ms", "kafka.fetch_max_wait_ms", "--fetch-max-wait-ms", {W}, metavar="MS"),
    _s("max_batch", "kafka.max_batch_records", "--max-batch", {W}, metavar="N"),
    _s("cycle_ms", "kafka.cycle_ms", "--cycle-ms", {W}, metavar="MS"),
    _s("commit_interval_ms", "kafka.commit_interval_ms", "--commit-interval-ms", {W}, metavar="MS"),
    _s("data_dir", "state.data_dir", "--data-dir", {W}, metavar="DIR"),
    _s("standby_replicas", "state.standby_replicas", "--standby-replicas", {W}, metavar="N"),
    _s("standby_max_lag_ms", "state.standby_max_lag_ms", "--standby-max-lag-ms", {W},
       metavar="MS"),
    _s("web_host", "api.host", "--web-host", {W}, metavar="HOST"),
    _s("web_port", "api.port", "--web-port", {W, D}, metavar="PORT"),
    _s("api_token", "api.token", "--api-token", {W}, secret=True, metavar="TOKEN"),
    _s("advertise_url", "api.advertise_url", "--advertise-url", {W}, metavar="URL"),
    _s("models_dir", "models.models_dir", "--models-dir", {W, R, RO}, metavar="DIR"),
    _s("model", "models.pins", "--model", {W, R}, repeat=True),
    _s("inject_faults", "models.faults", "--inject-faults", {W}, hidden=True),
    _s("log_level", "log.level", "--log-level", frozenset()),
    _s("log_format", "log.format", "--log-format", frozenset()),
)
_GLOBAL = ("log_level", "log_format")
_BY_PATH = {s.path: s for s in SETTINGS}
# Not a setting of EngineConfig: where the SASL password is read from (a Kubernetes Secret
# mounted as a file, say). The password itself is never a flag: flags show in `ps`.
_PASSWORD_FILE = _s("sasl_password_file", "", "--sasl-password-file", _KAFKA, metavar="FILE")


class _EnvSettings(BaseSettings):
    """The STREAMWISE_* environment, as pydantic-settings reads it (empty means unset)."""

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True, frozen=True)


class _MappingEnv(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (main passes os.environ)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {(k if self.case_sensitive else k.lower()): v for k, v in self._environ.items()
                if not (self.env_ignore_empty and v == "")}


def _read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Each setting's raw value from its STREAMWISE_* variable (or an alias), None if unset."""
    fields: dict[str, Any] = {
        s.name: (Any, Field(default=None, validation_alias=AliasChoices(s.env, *s.also_env)))
        for s in (*SETTINGS, _PASSWORD_FILE)}
    base = create_model("StreamwiseEnvironment", __base__=_EnvSettings, **fields)

    class _Env(base):  # type: ignore[valid-type, misc]
        @classmethod
        def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                       *sources: PydanticBaseSettingsSource,
                                       **named: PydanticBaseSettingsSource
                                       ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (_MappingEnv(settings_cls, environ),)

    return _Env().model_dump()


def _field(path: str):
    """The pydantic field of EngineConfig at a dotted path ("kafka.security.protocol")."""
    model: Any = EngineConfig
    *sections, name = path.split(".")
    for section in sections:
        model = model.model_fields[section].annotation
    return model.model_fields[name]


def _choices(annotation: Any) -> list[str]:
    from typing import Literal, get_args, get_origin
    out: list[str] = []
    for arg in get_args(annotation) or ():
        if get_origin(arg) is Literal:
            out += [str(a) for a in get_args(arg)]
        else:
            out += _choices(arg)
    if get_origin(annotation) is Literal:
        out = [str(a) for a in get_args(annotation)]
    return out


# -- the parser ------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line: ``streamwise: <what> (see --help)``."""

    def error(self, message: str) -> NoReturn:
        print(f"streamwise: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _help(setting: _Setting) -> str:
    field = _field(setting.path) if setting.path else None
    text = field.description if field is not None and field.description else ""
    if setting is _PASSWORD_FILE:
        text = "file holding the SASL password (a mounted secret), instead of " \
               "STREAMWISE_SASL_PASSWORD"
    default = None if field is None else field.get_default(call_default_factory=True)
    if isinstance(default, bool):
        shown = "on" if default else "off"
    elif default in (None, "", {}):
        shown = "none"
    else:
        shown = str(default)
    envs = " or ".join((setting.env, *setting.also_env))
    if "(default:" in text:  # the description says it better than the value can
        return f"{text} [env {envs}]".replace("%", "%%")
    return f"{text} [default: {shown}; env {envs}]".replace("%", "%%")


def _add_settings(p: argparse.ArgumentParser, command: str) -> None:
    group = p.add_argument_group(
        "settings", "each is a flag, else its environment variable, else its default; the "
                    "SASL password only from STREAMWISE_SASL_PASSWORD or --sasl-password-file")
    for s in (*SETTINGS, _PASSWORD_FILE):
        if command not in s.commands or s.flag is None:
            continue
        kw: dict[str, Any] = {"dest": s.name, "default": argparse.SUPPRESS}
        field = _field(s.path) if s.path else None
        if s.hidden:
            kw["help"] = argparse.SUPPRESS
        else:
            kw["help"] = _help(s)
        if field is not None and field.annotation is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            choices = _choices(field.annotation) if field is not None else []
            kw["metavar"] = "{" + ",".join(choices) + "}" if choices else \
                s.metavar or ("NAME=VERSION" if s.repeat else s.name.upper())
            if s.repeat:
                kw["action"] = "append"
        group.add_argument(s.flag, **kw)
    if command in _KAFKA:  # a password flag would show in the process list: say so, once
        group.add_argument("--sasl-password", dest="_sasl_password_flag",
                           default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _add_global(p: argparse.ArgumentParser, top: bool) -> None:
    for name in _GLOBAL:
        s = next(x for x in SETTINGS if x.name == name)
        field = _field(s.path)
        p.add_argument(s.flag, dest=s.name, default=argparse.SUPPRESS,
                       metavar="{" + ",".join(_choices(field.annotation)) + "}",
                       help=_help(s) if top else argparse.SUPPRESS)


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, not {value}")
        return value
    return parse


def _number(lo: float, hi: float | None = None):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (value >= lo and (hi is None or value <= hi)):
            bound = f"between {lo:g} and {hi:g}" if hi is not None else f">= {lo:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, not {text}")
        return value
    return parse


def _topology_arg(p: argparse.ArgumentParser) -> None:
    from .topology_loader import available_topologies
    names = ", ".join(available_topologies()) or "none registered"
    p.add_argument("topology", help=f"the topology: a registered name ({names}), "
                   f"package.module:ATTR, or package.module (its TOPOLOGY)")


def _parser() -> _Parser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    ap = _Parser(prog="streamwise", formatter_class=fmt, description=(
        "Streamwise: stateful ML inference on Kafka streams. Every setting is a flag, else a "
        "STREAMWISE_* environment variable, else its default (`streamwise COMMAND --help` "
        "lists them)."))
    ap.add_argument("--version", action="version", version=f"streamwise {__version__}")
    _add_global(ap, top=True)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=fmt)
        _add_global(p, top=False)
        return p

    k = command("kafka", "the local single-node Apache Kafka for development")
    k.add_argument("action", choices=["up", "down", "status", "logs"])
    k.add_argument("--secure", action="store_true",
                   help="up: also an SSL listener (mutual TLS) and a SASL_SSL listener (SCRAM "
                        "users), with a throwaway CA; `streamwise kafka status` shows them")

    w = command("worker", "run a stream worker of a topology")
    _topology_arg(w)
    _add_settings(w, W)
    w.add_argument("--processes", default=os.environ.get(ENV_PREFIX + "PROCESSES", "1"),
                   metavar="N|auto",
                   help="members of the consumer group to run here under one supervisor, "
                        "each a process with its own state directory (<data-dir>/m<i>), all "
                        "answering on --web-port; auto: one per core [default: 1; env "
                        "STREAMWISE_PROCESSES]")
    w.add_argument(SHARED_PORT_FLAG, action="store_true", help=argparse.SUPPRESS)

    pr = command("produce", "produce the reference workload (or a file) to a topology; "
                            "creates the topology's topics when missing")
    _topology_arg(pr)
    pr.add_argument("--events", type=_count(1), default=10_000, help="records to generate")
    pr.add_argument("--rate", type=_number(0), default=0.0,
                    help="events/s (0: as fast as possible)")
    pr.add_argument("--seed", type=_count(0), default=7, help="generator seed")
    for share, default in (("duplicates", 0.02), ("disorder", 0.05), ("late", 0.005)):
        pr.add_argument(f"--{share}", type=_number(0, 1), default=default,
                        help=f"share of {share} records, 0..1")
    pr.add_argument("--file", type=Path, help="JSONL or Parquet file of events to produce "
                                              "instead of the generator")
    pr.add_argument("--no-profiles", action="store_true", help="do not (re)load profiles")
    pr.add_argument("--side", action="append", default=[], metavar="TOPIC",
                    help="also produce the generator's records of an agent's topic (relative "
                         "to the topology, e.g. outcomes); repeatable")
    pr.add_argument("--outcomes", action="append_const", const="outcomes", dest="side",
                    help="the same as --side outcomes (fraud: confirmed frauds, chargebacks)")
    _add_settings(pr, P)

    r = command("replay", "re-run the pipeline over offsets, a time range or a file")
    _topology_arg(r)
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-beginning", action="store_true")
    src.add_argument("--from-time", help="ISO-8601 or epoch ms (Kafka record time)")
    src.add_argument("--from-offsets", help="P:O,P:O,...")
    src.add_argument("--input", type=Path, help="events.jsonl or events.parquet: no Kafka")
    end = r.add_mutually_exclusive_group()
    end.add_argument("--to-time", help="ISO-8601 or epoch ms (default: the end at start)")
    end.add_argument("--to-offsets", help="P:O,P:O,... (exclusive)")
    r.add_argument("--profiles", type=Path, help="JSON file {key: profile} for --input")
    r.add_argument("--output", required=True, help="out.parquet, out.jsonl or topic:NAME")
    r.add_argument("--labels", type=Path,
                   help="labels to join by event id, point in time (JSONL, CSV or Parquet "
                        "with event_id, label, label_time; see README 'Replay')")
    r.add_argument("--allow-empty", action="store_true",
                   help="an empty range writes an empty output and exits 0 (default: exit 1)")
    _add_settings(r, R)

    ro = command("rollout", "safe rollout of a model version through the topology's control "
                            "topic: validate, shadow, canary, ramp, promote, rollback, status")
    _topology_arg(ro)
    ro.add_argument("action", choices=["status", "validate", "shadow", "canary", "ramp",
                                       "promote", "rollback"])
    ro.add_argument("target", nargs="?", metavar="SLOT=VERSION",
                    help="the model slot and version (e.g. primary=2); promote and rollback "
                         "take SLOT or nothing (the slot with a candidate)")
    ro.add_argument("--percent", type=_number(0, 100), help="canary: percent of entities")
    ro.add_argument("--sample", type=_number(0, 1), default=1.0,
                    help="shadow: share of entities the candidate shadows")
    ro.add_argument("--steps", default="1,5,25,50,100",
                    help="ramp: percents of entities, in order; reaching 100 releases")
    ro.add_argument("--dwell-s", type=_number(0), default=60.0,
                    help="ramp: minimum seconds per step")
    ro.add_argument("--min-events", type=_count(0), default=1000,
                    help="ramp: minimum candidate decisions per step")
    ro.add_argument("--reason", default="", help="why (kept on the control topic)")
    ro.add_argument("--holdout", type=Path,
                    help="validate (and staging): labelled held-out set, a `streamwise replay "
                         "... --labels L --output F.parquet` output (default: the topology's, "
                         "replayed now)")
    ro.add_argument("--against", metavar="VERSION",
                    help="validate: the version to compare with (default: the serving one)")
    ro.add_argument("--force", action="store_true",
                    help="stage a version that fails the topology's minima (never one that "
                         "fails the contract)")
    ro.add_argument("--json", action="store_true", help="status, validate: JSON output")
    _add_settings(ro, RO)

    d = command("demo", "the README's main job: Kafka, a worker, events, a report")
    d.add_argument("--events", type=_count(1), default=10_000)
    d.add_argument("--keep", action="store_true", help="leave Kafka and the worker running")
    _add_settings(d, D)

    from .bench import add_arguments as _bench_arguments
    _bench_arguments(command("bench", "throughput and latency next to the Kafka ceiling and "
                                      "idiomatic Faust baselines"))
    return ap


# -- settings: flag > environment > default, validated once -----------------------------------


def load_config(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[
        EngineConfig, set[str]]:
    """EngineConfig from the flags given in `args`, else `environ`, else the defaults, and the
    names of the settings that were set explicitly (flag or environment)."""
    if hasattr(args, "_sasl_password_flag"):
        raise ConfigError("the SASL password is never taken from a flag (it would show in the "
                          "process list): set STREAMWISE_SASL_PASSWORD or --sasl-password-file")
    env = _read_environment(environ)
    values: dict[str, Any] = {}
    given: set[str] = set()
    for s in (*SETTINGS, _PASSWORD_FILE):
        if s.name in vars(args):
            values[s.name] = getattr(args, s.name)
        elif env[s.name] is not None:
            values[s.name] = env[s.name]
        else:
            continue
        given.add(s.name)
    password_file = values.pop(_PASSWORD_FILE.name, None)
    if password_file is not None:
        if "sasl_password" in values:
            raise ConfigError("give the SASL password one way: STREAMWISE_SASL_PASSWORD or "
                              "--sasl-password-file, not both")
        values["sasl_password"] = _read_secret(Path(password_file))
    nested: dict[str, Any] = {}
    for s in SETTINGS:
        if s.name in values:
            node = nested
            *sections, leaf = s.path.split(".")
            for section in sections:
                node = node.setdefault(section, {})
            node[leaf] = values[s.name]
    try:
        return EngineConfig.model_validate(nested), given
    except ValidationError as exc:
        raise ConfigError(_explain(exc, args, environ, values)) from None


def _read_secret(path: Path) -> SecretStr:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read --sasl-password-file {path}: "
                          f"{exc.strerror or exc}") from None
    return SecretStr(text.rstrip("\r\n"))


def _explain(exc: ValidationError, args: argparse.Namespace, environ: Mapping[str, str],
             values: Mapping[str, Any]) -> str:
    """One line about the first error: which flag or variable, what value, what is wrong."""
    err = exc.errors()[0]
    msg = str(err["msg"]).removeprefix("Value error, ")
    setting = _BY_PATH.get(".".join(map(str, err["loc"][:3]))) or \
        _BY_PATH.get(".".join(map(str, err["loc"][:2])))
    if setting is None:  # a rule across settings (security): the message names the flags
        return msg
    if setting.name in vars(args):
        source = setting.flag or setting.env
    else:
        upper = {k.upper(): k for k in environ}
        source = next((upper[e] for e in (setting.env, *setting.also_env) if e in upper),
                      setting.env)
    value = values.get(setting.name)
    if msg.startswith("takes "):  # the message shows the value itself
        return f"{source} {msg}"
    if setting.secret or value is None:
        return f"invalid {source}: {msg}"
    if isinstance(value, list):
        value = ",".join(map(str, value))
    return f"invalid {source} {str(value)!r}: {msg}"


def child_env(cfg: EngineConfig) -> dict[str, str]:
    """The STREAMWISE_* variables that give a child process (the demo's worker) the same
    Kafka connection as `cfg`: secrets travel in the environment, never on a command line."""
    sec = cfg.kafka.security
    out = {"STREAMWISE_BROKER": cfg.kafka.bootstrap,
           "STREAMWISE_SECURITY_PROTOCOL": sec.protocol,
           "STREAMWISE_SSL_CHECK_HOSTNAME": str(sec.ssl_check_hostname).lower()}
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_mechanism",
                 "sasl_username", "sasl_oauth_token_provider"):
        value = getattr(sec, name)
        if value is not None:
            out[ENV_PREFIX + name.upper()] = str(value)
    if sec.sasl_password is not None:
        out["STREAMWISE_SASL_PASSWORD"] = sec.sasl_password.get_secret_value()
    return out


# -- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.worker_argv = argv  # a supervisor (--processes) starts its members with them
    try:
        cfg, given = load_config(args, os.environ)
    except EngineError as exc:
        print(f"streamwise: {exc}", file=sys.stderr)
        return 2
    from .logs import discard_held_logs, release_held_logs, setup_logging
    # worker, produce and replay release the logs once their start-up checks pass
    setup_logging(cfg.log, hold=args.command in (W, P, R))
    try:
        return _run(args, cfg, given)
    except EngineError as exc:
        discard_held_logs()
        print(f"streamwise: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug or an outage: one line here, the trace in the log
        logging.getLogger("streamwise").debug("unexpected error", exc_info=True)
        print(f"streamwise: unexpected {type(exc).__name__}: {exc} (--log-level DEBUG shows "
              "the trace)", file=sys.stderr)
        return 1
    finally:
        release_held_logs()


def _processes(value: str) -> int:
    from .supervisor import resolve_processes
    try:
        return resolve_processes(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _run(args: argparse.Namespace, cfg: EngineConfig, given: set[str]) -> int:
    if args.command == "kafka":
        return _kafka(args.action, args.secure)
    if args.command == "demo":
        from .demo import run_demo
        return run_demo(cfg, events=args.events, keep=args.keep,
                        broker_given="broker" in given,
                        child_env={**os.environ, **child_env(cfg)})
    if args.command == "bench":
        from .bench import run_command
        return run_command(args)
    from .topology_loader import load_topology
    topology = load_topology(args.topology)
    if args.command in (W, R):
        _tune_gc()
    if args.command == W:
        processes = _processes(args.processes)
        if processes > 1:
            from .logs import release_held_logs
            from .supervisor import supervise
            release_held_logs()
            return supervise(args.worker_argv, processes, cfg.state.data_dir, cfg.api.host,
                             cfg.api.port)
        from .commands import run_worker
        return asyncio.run(run_worker(cfg, topology, shared_port=args.shared_web_port))
    if args.command == RO:
        from .rollout.command import RolloutRequest, run_rollout
        req = RolloutRequest(action=args.action, target=args.target, percent=args.percent,
                             sample=args.sample, steps=args.steps, dwell_s=args.dwell_s,
                             min_events=args.min_events, reason=args.reason,
                             holdout=args.holdout, against=args.against, force=args.force,
                             as_json=args.json)
        return asyncio.run(run_rollout(cfg, topology, req))
    if args.command == P:
        from .produce import ProduceRequest, produce
        req = ProduceRequest(events=args.events, rate=args.rate, seed=args.seed,
                             duplicates=args.duplicates, disorder=args.disorder,
                             late=args.late, file=args.file, profiles=not args.no_profiles,
                             side=tuple(dict.fromkeys(args.side)))
        return asyncio.run(produce(cfg, topology, req))
    from .commands import ReplayRequest, run_replay
    req = ReplayRequest(from_beginning=args.from_beginning, from_time=args.from_time,
                        from_offsets=args.from_offsets, input=args.input, to_time=args.to_time,
                        to_offsets=args.to_offsets, profiles=args.profiles, output=args.output,
                        labels=args.labels, allow_empty=args.allow_empty)
    return asyncio.run(run_replay(cfg, topology, req))


def _tune_gc() -> None:
    """Fewer, larger young collections. The pipeline allocates a few hundred container
    objects per event; with CPython's default thresholds (700, 10, 10) the collector took
    ~16 us of every event and paused up to ~130 ms in a full collection over the entity
    cache. (50000, 20, 100) measured ~6 us per event and ~65 ms at most (60,000 reference
    events through the pipeline alone). Cyclic garbage is still collected."""
    gc.set_threshold(50_000, 20, 100)


def _kafka(action: str, secure: bool) -> int:
    script = REPO_ROOT / "scripts" / "kafka-local.sh"
    if not script.exists():
        print("streamwise: the local Kafka needs a source checkout (scripts/kafka-local.sh)",
              file=sys.stderr)
        return 2
    verb = {"up": "start", "down": "stop", "status": "status", "logs": "logs"}[action]
    env = {**os.environ, **({"KAFKA_SECURE": "1"} if secure else {})}
    return subprocess.call(["bash", str(script), verb], env=env)
