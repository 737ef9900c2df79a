#!/usr/bin/env bash
# A real single-node Apache Kafka 4.x (KRaft, combined broker + controller) on 127.0.0.1, for
# development and tests. The broker classpath comes from Maven Central once
# (deploy/kafka-local/pom.xml); no tarball, no Docker.
#
# Usage: scripts/kafka-local.sh {resolve|start|stop|kill|restart|status|logs [N]|reset}
#   resolve  download the broker jars once (into $KAFKA_LIBS_DIR/libs-$KAFKA_VERSION)
#   start    format storage once, start, wait until it serves; prints the broker version and,
#            as the last line on stdout, the bootstrap address 127.0.0.1:$KAFKA_PORT
#   stop     controlled shutdown (SIGTERM, SIGKILL after 30 s), by PID
#   kill     SIGKILL by PID, data kept (crash tests); `start` recovers the logs
#   restart  stop + start;  status  exit 0 iff running;  logs  tail the broker log
#   reset    stop, then delete config, data and logs (not the jar cache)
# Env: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_VERSION (4.1.2),
#      KAFKA_LOCAL_DIR (<repo>/.kafka-local: config, data, logs, pid),
#      KAFKA_LIBS_DIR (<repo>/.kafka-local: jar cache, shared by all instances),
#      KAFKA_HEAP_OPTS (-Xms512m -Xmx1g), KAFKA_START_TIMEOUT (90 s),
#      KAFKA_RESOLVE_TIMEOUT (900 s), KAFKA_OVERRIDES ("key=value ..." broker settings),
#      KAFKA_OWNER_PID (stop the broker when that process is gone, e.g. a pytest session).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_VERSION="${KAFKA_VERSION:-4.1.2}"
PORT="${KAFKA_PORT:-9092}"
CPORT="${KAFKA_CONTROLLER_PORT:-9093}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms512m -Xmx1g}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
RESOLVE_TIMEOUT="${KAFKA_RESOLVE_TIMEOUT:-900}"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

abs_dir() { mkdir -p "$1" && (cd "$1" && pwd); }
BASE="$(abs_dir "${KAFKA_LOCAL_DIR:-$ROOT/.kafka-local}")"
LIBS_ROOT="$(abs_dir "${KAFKA_LIBS_DIR:-$ROOT/.kafka-local}")"
LIBS="$LIBS_ROOT/libs-$KAFKA_VERSION"
CONF="$BASE/config"
DATA="$BASE/data"
LOGS="$BASE/logs"
PIDFILE="$BASE/kafka.pid"
ADDRFILE="$BASE/kafka.bootstrap"

log() { echo "[kafka-local] $*" >&2; }
die() { log "$*"; exit 1; }

resolve() {
  [ -f "$LIBS/.complete" ] && return 0
  command -v mvn >/dev/null || die "mvn not found (Maven is needed once, to fetch the broker jars)"
  local tmp t0=$SECONDS
  tmp="$(mktemp -d "$LIBS_ROOT/.libs-$KAFKA_VERSION.XXXXXX")"
  log "resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION from Maven Central (one time)"
  if ! timeout "$RESOLVE_TIMEOUT" mvn -q -B -Dstyle.color=never -f "$ROOT/deploy/kafka-local/pom.xml" \
      -Dkafka.version="$KAFKA_VERSION" "$DEP_PLUGIN:copy-dependencies" \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$tmp.log" 2>&1; then
    tail -n 40 "$tmp.log" | sed 's/\x1b\[[0-9;]*m//g' >&2  # without Maven's colour codes
    rm -rf "$tmp" "$tmp.log"; die "resolve failed"
  fi
  rm -f "$tmp.log"
  [ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ] || { rm -rf "$tmp"; die "no kafka_2.13 jar resolved"; }
  chmod 755 "$tmp"; touch "$tmp/.complete"
  # Atomic publish; if a concurrent resolve won the race, keep its copy.
  mv -T "$tmp" "$LIBS" 2>/dev/null || rm -rf "$tmp"
  log "resolved $(find "$LIBS" -name '*.jar' | wc -l) jars in $((SECONDS - t0)) s"
}

jvm_args() {  # flags of bin/kafka-run-class.sh, with a test-sized heap
  local heap; read -r -a heap <<<"$HEAP_OPTS"
  JVM=("${heap[@]}" -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20
       -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
       -XX:MaxInlineLevel=15 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
       -Dkafka.logs.dir="$LOGS" -Dlog4j2.configurationFile="$CONF/log4j2.properties"
       -cp "$LIBS/*")  # quoted: the JVM expands the wildcard itself
}

write_config() {
  mkdir -p "$CONF" "$DATA" "$LOGS"
  # Static quorum (controller.quorum.voters): the ports may change between runs on one data dir.
  cat >"$CONF/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA
auto.create.topics.enable=true
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
message.max.bytes=8388608
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
log.retention.hours=24
EOF
  cat >"$CONF/log4j2.properties" <<'EOF'
status = warn
name = kafka-local
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = STDOUT
logger.statechange.name = state.change.logger
logger.statechange.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
EOF
}

# Running = the PID file names a live process whose command line is *this* instance's broker.
is_running() {
  [ -f "$PIDFILE" ] || return 1
  local pid; pid="$(cat "$PIDFILE")"
  kill -0 "$pid" 2>/dev/null && ps -ww -p "$pid" -o args= | grep -qF "$CONF/server.properties"
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
broker_version() { sed -n 's/.*Kafka version: \([^ ]*\).*/\1/p' "$LOGS/server.out" | head -n1; }
announce() {
  echo "Apache Kafka $(broker_version) (KRaft, pid $(cat "$PIDFILE"), dir $BASE)"
  echo "127.0.0.1:$PORT"
}

format_once() {
  [ -f "$DATA/meta.properties" ] && return 0
  local cid=""
  while [[ ! "$cid" =~ ^[A-Za-z0-9_][A-Za-z0-9_-]{21}$ ]]; do  # a Kafka Uuid: 16 bytes, base64url
    cid="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
  done
  log "formatting $DATA (cluster id $cid)"
  jvm_args
  "$JAVA" "${JVM[@]}" kafka.tools.StorageTool format --ignore-formatted -t "$cid" \
      -c "$CONF/server.properties" >"$LOGS/format.log" 2>&1 \
    || { tail -n 40 "$LOGS/format.log" >&2; die "format failed"; }
}

metadata_ok() {  # one real Metadata request, if the project's venv is there
  local py="$ROOT/.venv/bin/python"
  [ -x "$py" ] && "$py" -c 'import aiokafka' 2>/dev/null || return 0
  timeout 20 "$py" - "127.0.0.1:$PORT" <<'EOF' >/dev/null 2>&1
import asyncio, sys
from aiokafka.client import AIOKafkaClient

async def main():
    client = AIOKafkaClient(bootstrap_servers=sys.argv[1], request_timeout_ms=10000)
    try:
        await client.bootstrap()
        metadata = await client.fetch_all_metadata()
        assert metadata.brokers(), "no broker in metadata"
    finally:
        await client.close()

asyncio.run(main())
EOF
}

watch_owner() {  # stop the broker once KAFKA_OWNER_PID is gone (a crashed test run leaks nothing)
  local owner="$1" pid="$2"
  (
    while kill -0 "$owner" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do sleep 2; done
    if is_running && [ "$(cat "$PIDFILE")" = "$pid" ]; then stop; fi
  ) </dev/null >/dev/null 2>&1 &
}

start() {
  if is_running; then log "already running (pid $(cat "$PIDFILE"))"; announce; return 0; fi
  for p in "$PORT" "$CPORT"; do
    ! port_open "$p" || die "127.0.0.1:$p is already in use by another process"
  done
  resolve
  write_config
  format_once
  [ -f "$LOGS/server.out" ] && mv -f "$LOGS/server.out" "$LOGS/server.out.prev"
  local overrides=() kv t0=$SECONDS
  for kv in ${KAFKA_OVERRIDES:-}; do overrides+=(--override "$kv"); done
  jvm_args
  nohup "$JAVA" "${JVM[@]}" kafka.Kafka "$CONF/server.properties" ${overrides[@]+"${overrides[@]}"} \
      >"$LOGS/server.out" 2>&1 </dev/null &
  local pid=$!  # the JVM itself: stop/kill signal the broker and nothing else
  echo "$pid" >"$PIDFILE"
  echo "127.0.0.1:$PORT" >"$ADDRFILE"
  log "started pid $pid; waiting for 127.0.0.1:$PORT (at most ${START_TIMEOUT}s)"
  local deadline=$((SECONDS + START_TIMEOUT))
  until port_open "$PORT" && grep -q 'Kafka Server started' "$LOGS/server.out" && metadata_ok; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 60 "$LOGS/server.out" >&2; rm -f "$PIDFILE"; die "broker exited during start"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 60 "$LOGS/server.out" >&2; stop; die "not ready after ${START_TIMEOUT}s"
    fi
    sleep 0.5
  done
  [ -z "${KAFKA_OWNER_PID:-}" ] || watch_owner "$KAFKA_OWNER_PID" "$pid"
  log "ready on 127.0.0.1:$PORT in $((SECONDS - t0)) s"
  announce
}

stop() {  # SIGTERM = controlled shutdown; SIGKILL if still alive after 30 s
  if ! is_running; then rm -f "$PIDFILE"; log "not running"; return 0; fi
  local pid; pid="$(cat "$PIDFILE")"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then log "still alive after 30 s: SIGKILL"; kill -KILL "$pid"; fi
  rm -f "$PIDFILE"
  log "stopped pid $pid"
}

hard_kill() {  # crash simulation: no controlled shutdown, data kept
  if is_running; then
    local pid; pid="$(cat "$PIDFILE")"
    kill -KILL "$pid"
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    log "killed pid $pid (-9)"
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  resolve) resolve ;;
  start) start ;;
  stop) stop ;;
  kill) hard_kill ;;
  restart) stop; start ;;
  status)
    if is_running; then
      echo "running pid $(cat "$PIDFILE") Apache Kafka $(broker_version) at $(cat "$ADDRFILE")"
    else echo "stopped"; exit 1; fi ;;
  logs) tail -n "${2:-100}" "$LOGS/server.out" ;;
  reset) stop; rm -rf "$CONF" "$DATA" "$LOGS" "$ADDRFILE" ;;
  *) echo "usage: $0 {resolve|start|stop|kill|restart|status|logs [N]|reset}" >&2; exit 2 ;;
esac
