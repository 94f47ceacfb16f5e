#!/usr/bin/env bash
# tests/compose/run.sh — the duet mesh in Docker, end to end (ctest label compose):
#
#   run.sh SOURCE_DIR DUET DUET_LOAD MODEL
#
# 1. a Docker engine: the one DOCKER_HOST (or the default socket) names when it answers, else a
#    dockerd of our own (own socket, exec root and pidfile; data root $DUET_DOCKER_ROOT, default
#    /var/lib/duet-docker, kept so that a second run reuses the image layers), stopped by its PID;
# 2. the base image (debian:bookworm) made with debootstrap and imported when missing (no
#    registry is needed), then the CPU image from docker/Dockerfile;
# 3. compose.yaml up with the host's model mounted read-only; waits for every service's health;
# 4. `duet generate --gateway` through the published port gives the same greedy text as
#    in-process `duet generate`; a short duet-load run succeeds; the decode instance received KV
#    bytes from prefill (the disaggregated path across containers);
# 5. --scale decode=2: both decode instances register and both serve requests of a load run
#    (duet_requests_total{outcome="ok"} of each grows);
# 6. down -v, and our dockerd stopped, always (trap).
#
# Exit 0 passed, 1 failed, 77 skipped (no Docker engine can be had here: said loudly on stderr).
set -uo pipefail

SKIP=77
src=${1:?usage: run.sh SOURCE_DIR DUET DUET_LOAD MODEL}
duet=${2:?duet binary}
duet_load=${3:?duet-load binary}
model=${4:?model file}
src=$(cd "$src" && pwd)

base_image=${DUET_BASE_IMAGE:-debian:bookworm}
image=${DUET_TEST_IMAGE:-duet:cpu}
project=duetci
prompt="The capital of France is"
t0=$(date +%s)

log() { printf '[compose %4ds] %s\n' "$(( $(date +%s) - t0 ))" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
skip() {
  printf '\n*** compose test SKIPPED: %s ***\n\n' "$*" >&2
  exit "$SKIP"
}

[ -r "$model" ] || fail "the model $model cannot be read"
[ -x "$duet" ] && [ -x "$duet_load" ] || fail "duet ($duet) or duet-load ($duet_load) is missing"

# The docker CLI: Debian's docker.io ships the one matching its engine; any docker CLI works.
docker=$(command -v docker) || skip "no docker CLI (apt-get install docker.io)"
[ -x /usr/bin/docker ] && docker=/usr/bin/docker
if "$docker" compose version >/dev/null 2>&1; then
  compose=("$docker" compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  skip "neither 'docker compose' nor docker-compose is installed (apt-get install docker-compose)"
fi

run=$(mktemp -d /tmp/duet-compose.XXXXXX)
dockerd_pid=""
stack_up=0
child=""

# Runs a long command in the background and waits for it, so that INT or TERM reach the trap at
# once (bash defers traps until a foreground command ends) and the trap can stop the command.
bg() {
  "$@" &
  child=$!
  wait "$child"
  local rc=$?
  child=""
  return "$rc"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  exec 1>&7 2>&8   # a signal may land inside a command's redirection (bg ... >file)
  if [ -n "$child" ]; then
    kill -TERM "$child" 2>/dev/null
    wait "$child" 2>/dev/null
  fi
  if [ "$stack_up" = 1 ]; then
    if [ "$rc" != 0 ] && [ "$rc" != "$SKIP" ]; then
      log "service logs (last lines):"
      timeout 60 "${compose[@]}" logs --no-color --tail 30 >&2 2>&1 || true
    fi
    log "compose down -v"
    timeout 120 "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || log "compose down failed"
  fi
  if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
    log "stopping dockerd (pid $dockerd_pid)"
    kill -TERM "$dockerd_pid" 2>/dev/null
    for _ in $(seq 1 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$dockerd_pid" 2>/dev/null; then
      log "dockerd did not stop in 30 s; killing it"
      kill -KILL "$dockerd_pid" 2>/dev/null
    fi
  fi
  rm -rf "$run"
  log "done (exit $rc, $(( $(date +%s) - t0 )) s)"
  exit "$rc"
}
exec 7>&1 8>&2
trap cleanup EXIT
trap 'exit 130' INT TERM

engine_answers() { timeout 10 "$docker" info >/dev/null 2>&1; }

# --- 1. the engine -------------------------------------------------------------------------------
if [ -n "${DOCKER_HOST:-}" ] && engine_answers; then
  log "using the engine at DOCKER_HOST=$DOCKER_HOST"
elif [ -z "${DOCKER_HOST:-}" ] && [ -S /var/run/docker.sock ] && engine_answers; then
  log "using the engine at /var/run/docker.sock"
else
  command -v dockerd >/dev/null || skip "no Docker engine answers and dockerd is not installed"
  [ "$(id -u)" = 0 ] || skip "no Docker engine answers and starting dockerd needs root"
  root=${DUET_DOCKER_ROOT:-/var/lib/duet-docker}
  mkdir -p "$root"
  # One dockerd per data root: wait while another run of this test holds it; a dockerd left
  # behind by a run that was killed (its pidfile names a live dockerd on our data root) is ours
  # to stop.
  exec 9>"$root.lock"
  flock -w 900 9 || fail "another run of this test held $root.lock for 15 minutes"
  if [ -s "$root.pid" ]; then
    old=$(cat "$root.pid")
    if tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null | grep -q -- "dockerd .*--data-root $root "; then
      log "stopping dockerd $old left behind by an earlier run"
      kill -TERM "$old"
      for _ in $(seq 1 60); do kill -0 "$old" 2>/dev/null || break; sleep 0.5; done
      kill -KILL "$old" 2>/dev/null
    fi
    rm -f "$root.pid"
  fi
  sock="$run/docker.sock"
  log "starting dockerd (data root $root)"
  dockerd --host "unix://$sock" --data-root "$root" --exec-root "$run/exec" \
          --pidfile "$root.pid" >"$run/dockerd.log" 2>&1 7>&- 8>&- 9>&- &
  dockerd_pid=$!
  export DOCKER_HOST="unix://$sock"
  for _ in $(seq 1 60); do
    engine_answers && break
    kill -0 "$dockerd_pid" 2>/dev/null || break
    sleep 1
  done
  if ! engine_answers; then
    tail -n 15 "$run/dockerd.log" >&2
    skip "dockerd did not start on this machine (its log is above)"
  fi
  log "dockerd up (pid $dockerd_pid)"
fi

# --- 2. images -----------------------------------------------------------------------------------
debian_mirror() {
  [ -n "${DUET_DEBIAN_MIRROR:-}" ] && { echo "$DUET_DEBIAN_MIRROR"; return; }
  # The first non-security Debian URI this machine's apt sources name (one-line or deb822).
  local uri
  uri=$( { grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
             sed -E 's/^deb +(\[[^]]*\] +)?//' | awk '{print $1}'
           grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'; } |
         grep -v security | grep -E '/debian/?$' | head -n 1)
  echo "${uri:-http://deb.debian.org/debian}"
}

if ! timeout 30 "$docker" image inspect "$base_image" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || skip "$base_image is missing and debootstrap is not installed"
  [ "$(id -u)" = 0 ] || skip "$base_image is missing and debootstrap needs root"
  mirror=$(debian_mirror)
  log "making $base_image with debootstrap from $mirror"
  rootfs="$run/rootfs"
  bg timeout 300 debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$run/debootstrap.log" 2>&1 ||
    { tail -n 20 "$run/debootstrap.log" >&2; fail "debootstrap failed"; }
  tar -C "$rootfs" -c . | timeout 300 "$docker" import - "$base_image" >/dev/null ||
    fail "docker import of $base_image failed"
  rm -rf "$rootfs"
fi

log "building $image from docker/Dockerfile"
bg timeout 900 "$docker" build -q -f "$src/docker/Dockerfile" --build-arg "BASE_IMAGE=$base_image" \
        -t "$image" "$src" >"$run/build.log" 2>&1 ||
  { tail -n 40 "$run/build.log" >&2; fail "docker build failed"; }
log "image built"
# The legacy builder leaves each build stage as a dangling image; drop those of past days (newer
# ones keep the dependency layer cached for the next run).
timeout 120 "$docker" image prune -f --filter until=24h >/dev/null 2>&1 || true

# --- 3. the stack --------------------------------------------------------------------------------
# The model's directory is mounted read-only; the containers run as uid 10001, so it must be
# world-readable, else a readable copy is mounted instead.
model=$(readlink -f "$model")
model_dir=$(dirname "$model")
model_file=$(basename "$model")
if [ -z "$(find "$model_dir" -maxdepth 0 -perm -o=rx)" ] || [ -z "$(find "$model" -perm -o=r)" ]; then
  mkdir -p "$run/models" && chmod 755 "$run/models"
  cp "$model" "$run/models/$model_file" && chmod 644 "$run/models/$model_file"
  model_dir="$run/models"
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
gw_port=$(free_port)
metrics_port=$(free_port)
gateway="127.0.0.1:$gw_port"

export COMPOSE_PROJECT_NAME=$project COMPOSE_FILE="$src/compose.yaml"
export DUET_IMAGE=$image DUET_REDIS_IMAGE=$image DUET_BASE_IMAGE=$base_image
export DUET_MODELS=$model_dir DUET_MODEL_FILE=$model_file
export DUET_GATEWAY_ADDR=127.0.0.1 DUET_GATEWAY_PORT=$gw_port DUET_METRICS_PORT_HOST=$metrics_port
export DUET_THREADS=1 DUET_LOG_LEVEL=info
unset DUET_API_KEYS UCX_TLS

stack_up=1
timeout 120 "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1   # leftovers of a killed run
log "compose up (gateway on $gateway)"
bg timeout 600 "${compose[@]}" up -d --no-build >"$run/up.log" 2>&1 ||
  { cat "$run/up.log" >&2; fail "compose up failed"; }

cid_of() { timeout 30 "${compose[@]}" ps -q "$1" 2>/dev/null; }
health_of() { timeout 30 "$docker" inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1" 2>/dev/null; }

# Waits until every container of the named services is healthy (at most $1 seconds).
wait_healthy() {
  local limit=$1; shift
  local until=$(( $(date +%s) + limit )) svc c st all
  while :; do
    all=1
    for svc in "$@"; do
      for c in $(cid_of "$svc"); do
        st=$(health_of "$c")
        case "$st" in
          healthy) ;;
          exited|dead|unhealthy) fail "$svc container ${c:0:12} is $st" ;;
          *) all=0 ;;
        esac
      done
      [ -n "$(cid_of "$svc")" ] || all=0
    done
    [ "$all" = 1 ] && return 0
    [ "$(date +%s)" -ge "$until" ] && fail "services $* not healthy within $limit s"
    sleep 2
  done
}
wait_healthy 300 redis scheduler prefill decode gateway
log "every service is healthy"

# --- 4. a request, the same text as in process, and a short load ---------------------------------
gen_args=(--prompt "$prompt" --temperature 0 --max-tokens 24)
bg timeout 120 "$duet" generate --gateway "$gateway" "${gen_args[@]}" >"$run/mesh.txt" 2>"$run/mesh.err" ||
  { cat "$run/mesh.err" >&2; fail "duet generate --gateway $gateway failed"; }
bg timeout 300 "$duet" generate --model "$model" --threads 1 "${gen_args[@]}" >"$run/local.txt" 2>"$run/local.err" ||
  { cat "$run/local.err" >&2; fail "in-process duet generate failed"; }
log "through the gateway: $(tr '\n' ' ' <"$run/mesh.txt")"
[ -s "$run/mesh.txt" ] || fail "the gateway returned no text"
cmp -s "$run/mesh.txt" "$run/local.txt" ||
  fail "greedy text through the containers differs from in-process: '$(cat "$run/local.txt")'"
log "the same text as in-process duet generate"

bg timeout 180 "$duet_load" --gateway "$gateway" --requests 6 --concurrency 2 --prompt-tokens 64 \
        --output-tokens 16 --quiet --json >"$run/load1.json" 2>"$run/load1.err" ||
  { cat "$run/load1.err" "$run/load1.json" >&2; fail "duet-load against the containers failed"; }
log "duet-load: $(head -c 300 "$run/load1.json")"

# The value of one sample (name with labels, as printed) in a container's /metrics; 0 if absent.
metric() {
  timeout 30 "$docker" exec "$1" python3 -c '
import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9090/metrics", timeout=5).read().decode()
v = [l.split()[-1] for l in text.splitlines() if l.startswith(sys.argv[1] + " ")]
print(v[0] if v else 0)' "$2" | awk '{printf "%d\n", $1}'
}
ok_sample='duet_requests_total{outcome="ok"}'
d1=$(cid_of decode)
kv=$(metric "$d1" duet_kv_transfer_bytes_total)
[ "${kv:-0}" -gt 0 ] || fail "the decode instance received no KV bytes from prefill"
log "decode received $kv KV bytes from prefill over UCX"

# --- 5. two decode instances ---------------------------------------------------------------------
log "scaling decode to 2"
bg timeout 300 "${compose[@]}" up -d --no-build --no-recreate --scale decode=2 >"$run/scale.log" 2>&1 ||
  { cat "$run/scale.log" >&2; fail "compose up --scale decode=2 failed"; }
wait_healthy 180 decode
decodes=($(cid_of decode))
[ "${#decodes[@]}" = 2 ] || fail "expected 2 decode containers, found ${#decodes[@]}"
# Both registered in Redis (their records name their container addresses).
until=$(( $(date +%s) + 30 ))
while :; do
  n=$(timeout 30 "${compose[@]}" exec -T redis sh -c \
      'for k in $(redis-cli --scan --pattern "duet:inst:*"); do redis-cli hget "$k" role; done' |
      grep -c '^decode' || true)
  [ "$n" -ge 2 ] && break
  [ "$(date +%s)" -ge "$until" ] && fail "Redis lists $n decode instances, not 2"
  sleep 1
done
declare -A before
for c in "${decodes[@]}"; do before[$c]=$(metric "$c" "$ok_sample"); done
bg timeout 240 "$duet_load" --gateway "$gateway" --requests 16 --concurrency 4 --prompt-tokens 64 \
        --output-tokens 16 --seed 2 --quiet --json >"$run/load2.json" 2>"$run/load2.err" ||
  { cat "$run/load2.err" "$run/load2.json" >&2; fail "duet-load with two decode instances failed"; }
for c in "${decodes[@]}"; do
  after=$(metric "$c" "$ok_sample")
  served=$(( after - ${before[$c]} ))
  log "decode ${c:0:12}: $served requests ok during the load run"
  [ "$served" -gt 0 ] || fail "decode ${c:0:12} served no request with two instances"
done

log "PASS"
exit 0
