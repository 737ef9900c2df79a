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
# Secured listeners (KAFKA_SECURE=1, or `streamwise kafka up --secure`): beside the plaintext
# listener, an SSL listener that requires a client certificate (mutual TLS) on
# KAFKA_SSL_PORT (9094) and a SASL_SSL listener on KAFKA_SASL_SSL_PORT (9095) with SCRAM-SHA-512,
# SCRAM-SHA-256, PLAIN and OAUTHBEARER (unsecured JWTs: for tests only). A throwaway CA, the
# broker's certificate (127.0.0.1, localhost) and a client certificate are made with openssl
# at the first secured start, the SCRAM user `streamwise` with a random password at format
# time (or with kafka-configs when the data predates it); all in $KAFKA_LOCAL_DIR/secure, and
# the settings a client needs in $KAFKA_LOCAL_DIR/secure/client.env.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_VERSION="${KAFKA_VERSION:-4.1.2}"
PORT="${KAFKA_PORT:-9092}"
CPORT="${KAFKA_CONTROLLER_PORT:-9093}"
SECURE="${KAFKA_SECURE:-}"
SSL_PORT="${KAFKA_SSL_PORT:-9094}"
SASL_SSL_PORT="${KAFKA_SASL_SSL_PORT:-9095}"
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
SEC="$BASE/secure"
SCRAM_USER="streamwise"
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

make_secrets() {  # a throwaway CA, the broker's and a client's certificate, passwords
  [ -f "$SEC/.complete" ] && return 0
  command -v openssl >/dev/null || die "openssl not found (needed for the secured listeners)"
  rm -rf "$SEC"; mkdir -p "$SEC"; chmod 700 "$SEC"
  (
    cd "$SEC"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days 30 \
      -subj "/CN=streamwise-local-ca" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign"
    for who in broker client; do
      cn="localhost"; eku="serverAuth,clientAuth"; san="subjectAltName=IP:127.0.0.1,DNS:localhost"
      if [ "$who" = client ]; then
        cn="streamwise-client"; eku="clientAuth"; san="subjectAltName=DNS:streamwise-client"
      fi
      openssl req -newkey rsa:2048 -nodes -keyout "$who-key.pem" -out "$who.csr" -subj "/CN=$cn"
      printf '%s\nextendedKeyUsage=%s\nbasicConstraints=CA:FALSE\n' "$san" "$eku" >"$who.ext"
      openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
        -out "$who.pem" -days 30 -extfile "$who.ext"
      rm -f "$who.csr" "$who.ext"
    done
    head -c 18 /dev/urandom | base64 | tr -d '/+=\n' >store-password
    head -c 18 /dev/urandom | base64 | tr -d '/+=\n' >scram-password
    openssl pkcs12 -export -in broker.pem -inkey broker-key.pem -certfile ca.pem \
      -name broker -out broker.p12 -passout "file:store-password"
    chmod 600 ./*-key.pem store-password scram-password broker.p12
  ) >"$SEC/openssl.log" 2>&1 || { tail -n 20 "$SEC/openssl.log" >&2; die "making the TLS material failed"; }
  touch "$SEC/.complete"
  log "made a throwaway CA, broker and client certificates in $SEC"
}

secure_config() {  # the listeners beside PLAINTEXT and how clients authenticate on them
  local pw scram; pw="$(cat "$SEC/store-password")"; scram="$(cat "$SEC/scram-password")"
  cat <<CONF
ssl.keystore.type=PKCS12
ssl.keystore.location=$SEC/broker.p12
ssl.keystore.password=$pw
ssl.key.password=$pw
ssl.truststore.type=PEM
ssl.truststore.location=$SEC/ca.pem
listener.name.ssl.ssl.client.auth=required
listener.name.sasl_ssl.ssl.client.auth=none
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN,OAUTHBEARER
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SCRAM_USER="$scram";
listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="broker";
listener.name.sasl_ssl.oauthbearer.sasl.server.callback.handler.class=org.apache.kafka.common.security.oauthbearer.internals.unsecured.OAuthBearerUnsecuredValidatorCallbackHandler
CONF
  cat >"$SEC/client.env" <<CONF
KAFKA_SSL_BOOTSTRAP=127.0.0.1:$SSL_PORT
KAFKA_SASL_SSL_BOOTSTRAP=127.0.0.1:$SASL_SSL_PORT
KAFKA_CA_FILE=$SEC/ca.pem
KAFKA_CLIENT_CERT_FILE=$SEC/client.pem
KAFKA_CLIENT_KEY_FILE=$SEC/client-key.pem
KAFKA_SASL_USERNAME=$SCRAM_USER
KAFKA_SASL_PASSWORD_FILE=$SEC/scram-password
CONF
}

write_config() {
  mkdir -p "$CONF" "$DATA" "$LOGS"
  local listeners="PLAINTEXT://127.0.0.1:$PORT" map="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  if [ -n "$SECURE" ]; then
    listeners="$listeners,SSL://127.0.0.1:$SSL_PORT,SASL_SSL://127.0.0.1:$SASL_SSL_PORT"
    map="$map,SSL:SSL,SASL_SSL:SASL_SSL"
  fi
  # Static quorum (controller.quorum.voters): the ports may change between runs on one data dir.
  cat >"$CONF/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=$listeners,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=$listeners
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=$map
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
  if [ -n "$SECURE" ]; then secure_config >>"$CONF/server.properties"; fi
  chmod 600 "$CONF/server.properties"  # it holds the keystore password when secured
}

# Running = the PID file names a live process whose command line is *this* instance's broker.
is_running() {
  [ -f "$PIDFILE" ] || return 1
  local pid; pid="$(cat "$PIDFILE")"
  kill -0 "$pid" 2>/dev/null && ps -ww -p "$pid" -o args= | grep -qF "$CONF/server.properties"
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
broker_version() { sed -n 's/.*Kafka version: \([^ ]*\).*/\1/p' "$LOGS/server.out" | head -n1; }
secured() { grep -q '^listeners=.*SASL_SSL' "$CONF/server.properties" 2>/dev/null; }
announce() {
  echo "Apache Kafka $(broker_version) (KRaft, pid $(cat "$PIDFILE"), dir $BASE)"
  if secured; then
    echo "secured: SSL (mutual TLS) 127.0.0.1:$SSL_PORT, SASL_SSL 127.0.0.1:$SASL_SSL_PORT; client settings in $SEC/client.env"
  fi
  echo "127.0.0.1:$PORT"
}

format_once() {
  [ -f "$DATA/meta.properties" ] && return 0
  local cid=""
  while [[ ! "$cid" =~ ^[A-Za-z0-9_][A-Za-z0-9_-]{21}$ ]]; do  # a Kafka Uuid: 16 bytes, base64url
    cid="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
  done
  log "formatting $DATA (cluster id $cid)"
  local scram=()
  if [ -n "$SECURE" ]; then
    local pw; pw="$(cat "$SEC/scram-password")"
    scram=(--add-scram "SCRAM-SHA-512=[name=$SCRAM_USER,password=$pw]"
           --add-scram "SCRAM-SHA-256=[name=$SCRAM_USER,password=$pw]")
  fi
  jvm_args
  "$JAVA" "${JVM[@]}" kafka.tools.StorageTool format --ignore-formatted -t "$cid" \
      -c "$CONF/server.properties" ${scram[@]+"${scram[@]}"} >"$LOGS/format.log" 2>&1 \
    || { tail -n 40 "$LOGS/format.log" >&2; die "format failed"; }
  [ -z "$SECURE" ] || touch "$DATA/.scram-users"
}

add_scram_users() {  # data formatted before the secured listeners: add the user now
  if [ -z "$SECURE" ] || [ -f "$DATA/.scram-users" ]; then return 0; fi
  local pw mech; pw="$(cat "$SEC/scram-password")"
  jvm_args
  for mech in SCRAM-SHA-512 SCRAM-SHA-256; do  # one mechanism per request
    "$JAVA" "${JVM[@]}" kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$PORT" --alter \
        --entity-type users --entity-name "$SCRAM_USER" --add-config "$mech=[password=$pw]" \
        >>"$LOGS/scram.log" 2>&1 \
      || { tail -n 20 "$LOGS/scram.log" >&2; stop; die "adding SCRAM users failed"; }
  done
  touch "$DATA/.scram-users"
  log "added SCRAM user $SCRAM_USER"
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
  local ports=("$PORT" "$CPORT")
  [ -z "$SECURE" ] || ports+=("$SSL_PORT" "$SASL_SSL_PORT")
  for p in "${ports[@]}"; do
    ! port_open "$p" || die "127.0.0.1:$p is already in use by another process"
  done
  resolve
  [ -z "$SECURE" ] || make_secrets
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
  add_scram_users
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
      if secured; then echo "secured listeners: $(tr '\n' ' ' <"$SEC/client.env")"; fi
    else echo "stopped"; exit 1; fi ;;
  logs) tail -n "${2:-100}" "$LOGS/server.out" ;;
  reset) stop; rm -rf "$CONF" "$DATA" "$LOGS" "$ADDRFILE" "$SEC" ;;
  *) echo "usage: $0 {resolve|start|stop|kill|restart|status|logs [N]|reset}" >&2; exit 2 ;;
esac
