#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, combined broker+controller) for end-to-end
# tests, run straight from Maven Central jars: needs only `java` (17+) and
# `mvn`. No Docker, no tarball download.
#
#   scripts/kafka/kafka.sh start                  fetch jars (once), format storage (once), launch
#   scripts/kafka/kafka.sh wait [TIMEOUT_S]       block until the broker answers metadata (default 120)
#   scripts/kafka/kafka.sh stop                   SIGTERM, then SIGKILL; deletes state unless KEEP_STATE=1
#   scripts/kafka/kafka.sh status                 exit 0 if running
#   scripts/kafka/kafka.sh topics-create NAME PARTITIONS
#   scripts/kafka/kafka.sh topics-list | topics-describe NAME
#   scripts/kafka/kafka.sh produce TOPIC [VALUE...]   (values from stdin if none given)
#   scripts/kafka/kafka.sh consume TOPIC [MAX] [TIMEOUT_S]
#   scripts/kafka/kafka.sh bootstrap | fetch | logs
#
# Environment:
#   KAFKA_PORT (19092)  KAFKA_CONTROLLER_PORT (19093)
#   KAFKA_STATE_DIR (${TMPDIR:-/tmp}/refund-projector-kafka)
#   KAFKA_JAR_CACHE ($HOME/.cache/refund-projector/kafka-jars)
#   KAFKA_HEAP_OPTS (-Xms128m -Xmx512m)  KAFKA_JVM_OPTS (extra JVM flags)
#   KAFKA_EXTRA_CONFIG (extra server.properties lines, newline separated)
#   KAFKA_WAIT_TIMEOUT (120)  KAFKA_STOP_TIMEOUT (30)  KEEP_STATE (0)
#   KAFKA_MVN_ARGS (extra mvn arguments, e.g. -o or -Dmaven.repo.local=...)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$SCRIPT_DIR/pom.xml"
HELPER_SRC="$SCRIPT_DIR/KafkaCli.java"
TOOLS_LOG4J="$SCRIPT_DIR/tools-log4j2.properties"

KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
STATE_DIR="${KAFKA_STATE_DIR:-${TMPDIR:-/tmp}/refund-projector-kafka}"
JAR_CACHE="${KAFKA_JAR_CACHE:-${HOME:-/tmp}/.cache/refund-projector/kafka-jars}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
WAIT_TIMEOUT="${KAFKA_WAIT_TIMEOUT:-120}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
BOOTSTRAP="127.0.0.1:$KAFKA_PORT"

DATA_DIR="$STATE_DIR/data"
PID_FILE="$STATE_DIR/kafka.pid"
PROPS="$STATE_DIR/server.properties"
LOG_DIR="$STATE_DIR/logs"
OUT_FILE="$LOG_DIR/kafka.out"
# A marker on the broker's command line, so a recycled pid is never mistaken
# for our broker.
MARKER="-Drefund_projector.kafka.state=$STATE_DIR"

log() { printf '[kafka.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_java() {
  command -v java >/dev/null 2>&1 || die "java not found (Java 17+ is required)"
}

# ---------------------------------------------------------------- jars ----

pom_stamp() {
  # Re-fetch whenever pom.xml or the helper changes (e.g. a version bump).
  cat "$POM" "$HELPER_SRC" | sha256sum | cut -d' ' -f1
}

jars_ready() {
  [[ -f "$JAR_CACHE/.stamp" && "$(cat "$JAR_CACHE/.stamp")" == "$(pom_stamp)" ]]
}

fetch_jars() {
  if jars_ready; then
    return 0
  fi
  need_java
  command -v mvn >/dev/null 2>&1 || die "mvn not found (needed once to fetch the Kafka jars)"
  command -v javac >/dev/null 2>&1 || die "javac not found (a JDK 17+ is required, not just a JRE)"
  local t0 tmp
  t0=$(date +%s)
  log "fetching Kafka jars from Maven Central into $JAR_CACHE (first run only) ..."
  mkdir -p "$(dirname "$JAR_CACHE")"
  tmp="$JAR_CACHE.partial.$$"
  rm -rf "$tmp"
  # shellcheck disable=SC2086
  if ! mvn -q -B -f "$POM" ${KAFKA_MVN_ARGS:-} dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$tmp.mvn.log" 2>&1; then
    cat "$tmp.mvn.log" >&2
    rm -rf "$tmp" "$tmp.mvn.log"
    die "mvn dependency:copy-dependencies failed"
  fi
  rm -f "$tmp.mvn.log"
  ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "no kafka_2.13 jar was fetched into $tmp"
  # Compile the admin/produce helper once (only needs kafka-clients).
  mkdir -p "$tmp/helper-classes"
  javac -nowarn -d "$tmp/helper-classes" -cp "$tmp/*" "$HELPER_SRC" \
    || die "compiling $HELPER_SRC failed"
  pom_stamp >"$tmp/.stamp"
  rm -rf "$JAR_CACHE"
  mv "$tmp" "$JAR_CACHE"
  local jars=("$JAR_CACHE"/*.jar)
  log "fetched ${#jars[@]} jars ($(du -sh "$JAR_CACHE" | cut -f1)) in $(( $(date +%s) - t0 ))s"
}

kafka_version() {
  local jars=("$JAR_CACHE"/kafka_2.13-*.jar) v
  v=${jars[0]##*/kafka_2.13-}
  echo "${v%.jar}"
}

# Runs the KafkaCli helper (KafkaCli.java) against $BOOTSTRAP.
helper() {
  fetch_jars
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$TOOLS_LOG4J" \
    -cp "$JAR_CACHE/*:$JAR_CACHE/helper-classes" KafkaCli "$BOOTSTRAP" "$@"
}

# ---------------------------------------------------------------- process ----

broker_pid() {
  # Prints the broker pid and succeeds iff our broker is alive.
  local pid
  [[ -f "$PID_FILE" ]] || return 1
  pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$MARKER" || return 1
  echo "$pid"
}

port_open() {
  # bash /dev/tcp connect; the subshell closes the socket again.
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

random_cluster_id() {
  # Kafka Uuid string form: 16 random bytes, base64url, no padding (22 chars);
  # avoid a leading '-' so it can't be taken for a CLI flag.
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ "$id" != -* ]] && break
  done
  echo "$id"
}

write_configs() {
  mkdir -p "$DATA_DIR" "$LOG_DIR"
  cat >"$PROPS" <<EOF
# Generated by scripts/kafka/kafka.sh -- rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA_DIR
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
# After a SIGKILL the old broker registration must expire before the restarted
# broker may register again: keep that short (default 9 s).
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=3000
EOF
  if [[ -n "${KAFKA_EXTRA_CONFIG:-}" ]]; then
    printf '# KAFKA_EXTRA_CONFIG\n%s\n' "$KAFKA_EXTRA_CONFIG" >>"$PROPS"
  fi
  cat >"$STATE_DIR/log4j2.properties" <<EOF
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $LOG_DIR/server.log
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.kafka.request.name = kafka.request.logger
logger.kafka.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
EOF
}

# ---------------------------------------------------------------- commands ----

cmd_start() {
  local pid
  if pid=$(broker_pid); then
    log "already running (pid $pid) on $BOOTSTRAP, state $STATE_DIR"
    return 0
  fi
  rm -f "$PID_FILE"
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    port_open "$p" && die "port 127.0.0.1:$p is already in use by another process (set KAFKA_PORT / KAFKA_CONTROLLER_PORT)"
  done
  need_java
  fetch_jars
  write_configs
  local cp="$JAR_CACHE/*"
  if [[ -f "$DATA_DIR/meta.properties" ]]; then
    log "reusing existing storage in $DATA_DIR (cluster id $(sed -n 's/^cluster.id=//p' "$DATA_DIR/meta.properties"))"
  else
    local cid
    cid=$(random_cluster_id)
    log "formatting storage in $DATA_DIR (cluster id $cid)"
    # Static quorum (controller.quorum.voters), so no --standalone.
    if ! java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
        -Dlog4j2.configurationFile="$TOOLS_LOG4J" \
        -cp "$cp" kafka.tools.StorageTool format -t "$cid" -c "$PROPS" \
        >"$LOG_DIR/format.out" 2>&1; then
      cat "$LOG_DIR/format.out" >&2
      die "storage format failed"
    fi
  fi
  log "starting Kafka $(kafka_version) on $BOOTSTRAP (controller 127.0.0.1:$KAFKA_CONTROLLER_PORT), log $LOG_DIR/server.log"
  # shellcheck disable=SC2086
  nohup setsid java $HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true -Dkafka.logs.dir="$LOG_DIR" \
    -Dlog4j2.configurationFile="$STATE_DIR/log4j2.properties" \
    "$MARKER" ${KAFKA_JVM_OPTS:-} \
    -cp "$cp" kafka.Kafka "$PROPS" >>"$OUT_FILE" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PID_FILE"
  sleep 0.5
  if ! broker_pid >/dev/null; then
    tail -n 30 "$OUT_FILE" >&2 || true
    die "broker exited right after launch (see $OUT_FILE and $LOG_DIR/server.log)"
  fi
  log "started (pid $pid); run '$0 wait' to block until it is ready"
}

cmd_wait() {
  local timeout="${1:-$WAIT_TIMEOUT}" t0 pid hpid rc
  [[ "$timeout" =~ ^[0-9]+$ ]] || die "usage: $0 wait [TIMEOUT_S]"
  t0=$(date +%s)
  pid=$(broker_pid) || die "broker is not running (run '$0 start' first)"
  fetch_jars
  log "waiting up to ${timeout}s for $BOOTSTRAP ..."
  # The helper JVM polls metadata itself (so its start-up overlaps the
  # broker's); meanwhile watch the broker and give up early if it dies.
  helper ready $(( timeout * 1000 )) >&2 &
  hpid=$!
  while kill -0 "$hpid" 2>/dev/null; do
    if ! broker_pid >/dev/null; then
      kill "$hpid" 2>/dev/null || true
      wait "$hpid" 2>/dev/null || true
      tail -n 40 "$LOG_DIR/server.log" "$OUT_FILE" >&2 2>/dev/null || true
      die "broker (pid $pid) died while starting (logs in $LOG_DIR)"
    fi
    sleep 0.2
  done
  rc=0
  wait "$hpid" || rc=$?
  (( rc == 0 )) || die "broker not ready after ${timeout}s (logs in $LOG_DIR)"
  log "ready after $(( $(date +%s) - t0 ))s: $BOOTSTRAP"
}

cmd_stop() {
  local pid i
  if pid=$(broker_pid); then
    log "stopping broker (pid $pid) ..."
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 5; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    log "stopped"
  else
    log "not running"
  fi
  rm -f "$PID_FILE"
  if [[ "${KEEP_STATE:-0}" == 1 ]]; then
    [[ -d "$STATE_DIR" ]] && log "KEEP_STATE=1: keeping $STATE_DIR"
  elif [[ -d "$STATE_DIR" ]]; then
    rm -rf "$STATE_DIR"
    log "removed $STATE_DIR"
  fi
}

cmd_status() {
  local pid
  if pid=$(broker_pid); then
    if port_open "$KAFKA_PORT"; then
      echo "running: pid $pid, $BOOTSTRAP listening, state $STATE_DIR"
    else
      echo "starting: pid $pid, $BOOTSTRAP not listening yet, state $STATE_DIR"
    fi
    return 0
  fi
  if [[ -d "$DATA_DIR" ]]; then
    echo "stopped (state kept in $STATE_DIR)"
  else
    echo "stopped"
  fi
  return 3
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
  exit 2
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    start) cmd_start ;;
    wait) cmd_wait "$@" ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start ;;
    status) cmd_status ;;
    fetch) fetch_jars; log "jars in $JAR_CACHE (Kafka $(kafka_version))" ;;
    bootstrap) echo "$BOOTSTRAP" ;;
    logs) tail -n "${1:-100}" "$LOG_DIR/server.log" ;;
    topics-create)
      [[ $# -eq 2 && "$2" =~ ^[0-9]+$ ]] || die "usage: $0 topics-create NAME PARTITIONS"
      helper create "$1" "$2" ;;
    topics-list) helper list ;;
    topics-describe)
      [[ $# -eq 1 ]] || die "usage: $0 topics-describe NAME"
      helper describe "$1" ;;
    produce)
      [[ $# -ge 1 ]] || die "usage: $0 produce TOPIC [VALUE...]"
      helper produce "$@" ;;
    consume)
      [[ $# -ge 1 ]] || die "usage: $0 consume TOPIC [MAX] [TIMEOUT_S]"
      helper consume "$1" "${2:-100}" $(( ${3:-10} * 1000 )) ;;
    -h | --help | help | "") usage ;;
    *) log "unknown command: $cmd"; usage ;;
  esac
}

main "$@"
