"""The CLI without a broker: settings from flag > STREAMWISE_* environment > default, validated
once; every mistake that needs no Kafka ends with one line on stderr and exit 2 (never a
traceback); --help and --version work whatever the environment holds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from engine.cli import _parser, load_config, main
from engine.config import EngineConfig
from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STREAMWISE_") and k != "KAFKA_BOOTSTRAP_SERVERS"}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, timeout=timeout, env=env or _clean_env(),
                          cwd=cwd or ROOT, check=False)


def _one_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The process failed with `code` and said exactly one line, on stderr."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("streamwise: ") and "Traceback" not in proc.stderr
    return lines[0]


def _config(argv: list[str], environ: dict[str, str] | None = None) -> EngineConfig:
    return load_config(_parser().parse_args(argv), environ or {})[0]


# -- precedence -----------------------------------------------------------------------------


def test_a_flag_beats_the_environment_which_beats_the_default() -> None:
    assert _config(["worker", "fraud"]).api.port == 6066
    assert _config(["worker", "fraud"], {"STREAMWISE_WEB_PORT": "7000"}).api.port == 7000
    assert _config(["worker", "fraud", "--web-port", "7001"],
                   {"STREAMWISE_WEB_PORT": "7000"}).api.port == 7001
    # the broker: STREAMWISE_BROKER before KAFKA_BOOTSTRAP_SERVERS, the flag before both
    both = {"STREAMWISE_BROKER": "a:1", "KAFKA_BOOTSTRAP_SERVERS": "b:2"}
    assert _config(["produce", "fraud"], both).kafka.bootstrap == "a:1"
    assert _config(["produce", "fraud"], {"KAFKA_BOOTSTRAP_SERVERS": "b:2"}
                   ).kafka.bootstrap == "b:2"
    assert _config(["produce", "fraud", "--broker", "c:3"], both).kafka.bootstrap == "c:3"
    # an empty variable counts as unset (a Kubernetes Secret with an empty token)
    assert _config(["worker", "fraud"], {"STREAMWISE_API_TOKEN": ""}).api.token is None


def test_every_documented_variable_reaches_its_setting() -> None:
    env = {"STREAMWISE_BROKER": "k:9", "STREAMWISE_TOPIC_PREFIX": "x.",
           "STREAMWISE_PARTITIONS": "4", "STREAMWISE_WEB_HOST": "0.0.0.0",
           "STREAMWISE_WEB_PORT": "7", "STREAMWISE_DATA_DIR": "/d",
           "STREAMWISE_MAX_BATCH": "10", "STREAMWISE_FETCH_MAX_WAIT_MS": "3",
           "STREAMWISE_CYCLE_MS": "2.5", "STREAMWISE_COMMIT_INTERVAL_MS": "50",
           "STREAMWISE_MODELS_DIR": "/m", "STREAMWISE_MODEL": "primary=1,backup=2",
           "STREAMWISE_API_TOKEN": "t", "STREAMWISE_ADVERTISE_URL": "http://w:1",
           "STREAMWISE_LOG_LEVEL": "debug", "STREAMWISE_LOG_FORMAT": "JSON",
           "STREAMWISE_CREATE_INPUT_TOPIC": "true", "STREAMWISE_REPLICATION_FACTOR": "3"}
    cfg = _config(["worker", "fraud"], env)
    k = cfg.kafka
    assert (k.bootstrap, k.topic_prefix, k.partitions, k.max_batch_records, k.fetch_max_wait_ms,
            k.cycle_ms, k.commit_interval_ms, k.create_input_topic, k.replication_factor) == (
        "k:9", "x.", 4, 10, 3, 2.5, 50, True, 3)
    assert (cfg.api.host, cfg.api.port, cfg.api.token.get_secret_value(),
            cfg.api.advertise_url) == ("0.0.0.0", 7, "t", "http://w:1")
    assert str(cfg.state.data_dir) == "/d" and str(cfg.models.models_dir) == "/m"
    assert cfg.models.pins == {"primary": "1", "backup": "2"}
    assert (cfg.log.level, cfg.log.format) == ("DEBUG", "json")
    flags = _config(["worker", "fraud", "--model", "primary=1", "--model", "backup=2",
                     "--no-create-input-topic"], env)
    assert flags.models.pins == {"primary": "1", "backup": "2"}
    assert flags.kafka.create_input_topic is False


def test_security_settings_and_the_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret-pw\n")
    cfg = _config(["replay", "fraud", "--output", "x.jsonl", "--from-beginning",
                   "--security-protocol", "sasl_ssl", "--sasl-mechanism", "SCRAM-SHA-512",
                   "--sasl-username", "alice", "--sasl-password-file", str(secret),
                   "--ssl-cafile", "/ca.pem", "--no-ssl-check-hostname"])
    s = cfg.kafka.security
    assert (s.protocol, s.sasl_mechanism, s.sasl_username, str(s.ssl_cafile),
            s.ssl_check_hostname) == ("SASL_SSL", "SCRAM-SHA-512", "alice", "/ca.pem", False)
    assert s.sasl_password.get_secret_value() == "s3cret-pw"  # the newline is not part of it
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.model_dump())
    env = {"STREAMWISE_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "STREAMWISE_SASL_MECHANISM": "PLAIN",
           "STREAMWISE_SASL_USERNAME": "bob", "STREAMWISE_SASL_PASSWORD": "from-env"}
    assert _config(["produce", "fraud"], env).kafka.security.sasl_password \
        .get_secret_value() == "from-env"
    with pytest.raises(ConfigError, match="one way"):
        _config(["produce", "fraud", "--sasl-password-file", str(secret)], env)
    with pytest.raises(ConfigError, match="cannot read --sasl-password-file"):
        _config(["produce", "fraud", "--sasl-password-file", str(tmp_path / "nope")],
                {k: v for k, v in env.items() if k != "STREAMWISE_SASL_PASSWORD"})


@pytest.mark.parametrize("argv, env, message", [
    (["produce", "fraud", "--security-protocol", "SASL_SSL"], {},
     "--security-protocol SASL_SSL needs --sasl-mechanism"),
    (["produce", "fraud", "--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN"], {},
     "--sasl-mechanism PLAIN needs --sasl-username and a password"),
    (["produce", "fraud", "--ssl-cafile", "ca.pem"], {},
     "--ssl-cafile needs --security-protocol SSL or SASL_SSL, not PLAINTEXT"),
    (["produce", "fraud", "--security-protocol", "SSL", "--ssl-keyfile", "k.pem"], {},
     "--ssl-keyfile needs --ssl-certfile"),
    (["produce", "fraud", "--security-protocol", "SASL_SSL", "--sasl-mechanism", "OAUTHBEARER"],
     {}, "OAUTHBEARER needs --sasl-oauth-token-provider"),
    (["produce", "fraud", "--security-protocol", "TLS"], {},
     "invalid --security-protocol 'TLS': Input should be 'PLAINTEXT', 'SSL'"),
    (["worker", "fraud"], {"STREAMWISE_SECURITY_PROTOCOL": "SSL",
                           "STREAMWISE_SASL_USERNAME": "u"},
     "--sasl-username needs --security-protocol SASL_SSL or SASL_PLAINTEXT, not SSL"),
])
def test_inconsistent_security_settings_are_refused(argv, env, message) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(argv, env)
    assert message in str(caught.value)


def test_a_secret_is_never_repeated_in_an_error() -> None:
    env = {"STREAMWISE_SECURITY_PROTOCOL": "PLAINTEXT", "STREAMWISE_SASL_PASSWORD": "hunter2"}
    with pytest.raises(ConfigError) as caught:
        _config(["produce", "fraud"], env)
    assert "hunter2" not in str(caught.value)
    assert "--sasl-password needs --security-protocol" in str(caught.value)


# -- one line, exit 2, no traceback ------------------------------------------------------------


def _main(argv: list[str], capsys, monkeypatch, env: dict[str, str] | None = None
          ) -> tuple[int, list[str]]:
    for k in list(os.environ):
        if k.startswith("STREAMWISE_") or k == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(k)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("argv, env, line", [
    (["produce", "fraud", "--events", "-5"], {},
     "streamwise: argument --events: must be >= 1, not -5 (see streamwise produce --help)"),
    (["produce", "fraud", "--rate", "fast"], {},
     "streamwise: argument --rate: not a number: 'fast' (see streamwise produce --help)"),
    (["produce", "fraud", "--late", "2"], {},
     "streamwise: argument --late: must be between 0 and 1, not 2 "
     "(see streamwise produce --help)"),
    (["--log-level", "LOUD", "worker", "fraud"], {},
     "streamwise: invalid --log-level 'LOUD': Input should be 'DEBUG', 'INFO', 'WARNING', "
     "'ERROR' or 'CRITICAL'"),
    (["worker", "fraud"], {"STREAMWISE_LOG_LEVEL": "LOUD"},
     "streamwise: invalid STREAMWISE_LOG_LEVEL 'LOUD': Input should be 'DEBUG', 'INFO', "
     "'WARNING', 'ERROR' or 'CRITICAL'"),
    (["worker", "fraud"], {"STREAMWISE_WEB_PORT": "abc"},
     "streamwise: invalid STREAMWISE_WEB_PORT 'abc': Input should be a valid integer, unable "
     "to parse string as an integer"),
    (["worker", "fraud", "--web-port", "70000"], {},
     "streamwise: invalid --web-port '70000': Input should be less than or equal to 65535"),
    (["worker", "fraud", "--topic-prefix", "bad prefix!"], {},
     "streamwise: invalid --topic-prefix 'bad prefix!': String should match pattern "
     "'^[A-Za-z0-9._-]*$'"),
    (["worker", "fraud", "--model", "primary"], {},
     "streamwise: --model takes NAME=VERSION (e.g. primary=1), not 'primary'"),
    (["worker", "fraud", "--sasl-password", "hunter2"], {},
     "streamwise: the SASL password is never taken from a flag (it would show in the process "
     "list): set STREAMWISE_SASL_PASSWORD or --sasl-password-file"),
    (["worker", "fraud", "--cycle-ms", "0"], {},
     "streamwise: invalid --cycle-ms '0': Input should be greater than 0"),
])
def test_a_bad_setting_is_one_line_and_exit_2(argv, env, line, capsys, monkeypatch) -> None:
    code, lines = _main(argv, capsys, monkeypatch, env)
    assert (code, lines) == (2, [line])


def test_help_and_version_work_whatever_the_environment_holds(capsys, monkeypatch) -> None:
    code, _ = _main(["--help"], capsys, monkeypatch, {"STREAMWISE_WEB_PORT": "abc"})
    assert code == 0
    code, _ = _main(["--version"], capsys, monkeypatch)
    assert code == 0
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == "streamwise 0.1.0"


def test_help_shows_defaults_choices_and_variables(capsys, monkeypatch) -> None:
    monkeypatch.setenv("STREAMWISE_WEB_PORT", "abc")
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for shown in ("[default: 6066; env STREAMWISE_WEB_PORT]",
                  "[default: 127.0.0.1:9092; env STREAMWISE_BROKER or KAFKA_BOOTSTRAP_SERVERS]",
                  "{PLAINTEXT,SSL,SASL_PLAINTEXT,SASL_SSL}",
                  "{PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER}",
                  "[default: PLAINTEXT; env STREAMWISE_SECURITY_PROTOCOL]",
                  "--sasl-password-file FILE", "[default: 10.0; env STREAMWISE_CYCLE_MS]",
                  "--no-ssl-check-hostname", "the topology: a registered name (clickrisk, fraud), "
                  "package.module:ATTR, or package.module (its TOPOLOGY)"):
        assert shown in text, shown
    assert "--sasl-password " not in text and "--inject-faults" not in text


# -- checks that need the model registry or a port, not Kafka ------------------------------------


@pytest.mark.parametrize("pin, line", [
    ("primary=9", "streamwise: --model primary=9: model primary has no version '9' "
                  "(versions: 1)"),
    ("prmary=1", "streamwise: --model prmary=1: no model 'prmary' in {models} "
                 "(models: backup, primary)"),
])
def test_an_unknown_model_name_or_version_is_refused(pin, line) -> None:
    import topologies
    models = topologies.get("fraud").models_dir
    # refused before any broker is asked: this one is closed
    proc = _cli("worker", "fraud", "--model", pin, "--broker", "127.0.0.1:9", "--web-port", "0")
    assert _one_line(proc) == line.format(models=models)
    proc = _cli("replay", "fraud", "--from-beginning", "--output", "x.jsonl", "--model", pin,
                "--broker", "127.0.0.1:9")
    assert _one_line(proc) == line.format(models=models)


def test_a_busy_web_port_is_one_line_before_any_broker_is_asked() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _cli("worker", "fraud", "--web-port", str(port), "--broker", "127.0.0.1:9")
    assert _one_line(proc) == (f"streamwise: cannot listen on 127.0.0.1:{port}: address "
                               "already in use (pass another --web-port)")


def test_a_replay_into_a_missing_folder_is_refused_before_it_starts(tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "dir" / "out.parquet"
    proc = _cli("replay", "fraud", "--from-beginning", "--output", str(out),
                "--broker", "127.0.0.1:9")
    assert _one_line(proc) == (f"streamwise: --output {out}: folder {out.parent} does not "
                               "exist")
    events = tmp_path / "events.jsonl"
    events.write_text("")
    proc = _cli("replay", "fraud", "--input", str(events), "--output", str(out))
    assert _one_line(proc) == (f"streamwise: --output {out}: folder {out.parent} does not "
                               "exist")


def test_an_empty_file_replay_says_so_unless_allowed(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("\n")
    out = tmp_path / "out.parquet"
    proc = _cli("replay", "fraud", "--input", str(events), "--output", str(out))
    assert _one_line(proc, code=1) == (
        f"streamwise: nothing to replay: input file {events} holds no records; pass "
        "--allow-empty to write an empty output anyway")
    assert not out.exists()
    proc = _cli("replay", "fraud", "--input", str(events), "--output", str(out),
                "--allow-empty")
    assert proc.returncode == 0, proc.stderr
    import pyarrow.parquet as pq
    assert pq.read_table(out).num_rows == 0


def test_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    from topologies.fraud.workload import generate
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in generate(50, 3).events))
    proc = _cli("--log-format", "json", "replay", "fraud", "--input", str(events),
                "--output", str(tmp_path / "out.jsonl"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    logs = [orjson.loads(line) for line in lines[:-1]]
    assert logs and all(set(d) >= {"ts", "level", "logger", "message"} for d in logs)
    assert any(d["logger"] == "streamwise.models" and "loaded" in d["message"] for d in logs)
    assert lines[-1].startswith("replayed 50 events")  # the summary is for people
    proc = _cli("--log-format", "text", "replay", "fraud", "--input", str(events),
                "--output", str(tmp_path / "out.jsonl"))
    assert not proc.stderr.startswith("{") and " INFO streamwise.models: " in proc.stderr
