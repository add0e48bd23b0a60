#!/usr/bin/env bash
# Instructions per proxied HTTP/1.1 request, for Portico and nginx, counted by valgrind's callgrind: a figure that
# does not move with the machine's load (this VM has no hardware counters, and its timings vary by +-20%).
#
#   bench/callgrind.sh [portico-binary]        (as root, after a `bench/run.sh` run: it reuses bench/work/ and
#                                              its build, target/production/portico, by default)
#   SCHEME=https bench/callgrind.sh            the same over HTTPS keep-alive (ECDSA P-256, scenario 2)
#   H2=1 bench/callgrind.sh                    HTTP/2 over TLS, 10 connections x 100 streams (scenario 4)
#
# Each contender runs under callgrind on CPU 1 behind the same nginx backend as scenario 1 (CPU 0), and serves
# 2,000 then 12,000 requests of `h2load --h1 -c 64`; the difference of the two instruction totals over 10,000
# cancels start-up and shutdown. nginx is counted in its worker process only (master_process on).
# KEEP=1 keeps the profiles (the directory is printed at the end) for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
portico="${1:-target/production/portico}"
scheme="${SCHEME:-http}"
load=(--h1 -c 64)
if [ -n "${H2:-}" ]; then scheme=https; load=(-c 10 -m 100); fi
work="$PWD/bench/work"
for needed in valgrind h2load nginx; do
  command -v "$needed" >/dev/null || { echo "bench/callgrind.sh: $needed is missing (apt-get install valgrind nghttp2-client nginx-light)" >&2; exit 1; }
done
[ -f "$work/portico/config/bench.yaml" ] && [ -f "$work/nginx/nginx.conf" ] || {
  echo "bench/callgrind.sh: run bench/run.sh http1 first (it writes the configurations to bench/work/)" >&2; exit 1; }
out="$(mktemp -d)"
chmod 1777 "$out" # nginx's worker runs as nobody and writes its own profile
trap 'pkill -f "$work/backend/nginx.conf" || true; pkill -f "$work/nginx/nginx.conf" || true; [ -n "${KEEP:-}" ] || rm -rf "$out"; echo "$out"' EXIT

backend() {
  # `daemon off` in the configuration: it stays in the foreground.
  taskset -c 0 nginx -c "$work/backend/nginx.conf" -p "$work/backend" -e "$work/backend/error.log" &
}

# $1 contender, $2 requests: prints the instruction total of the contender's serving process.
count() {
  local name=$1 requests=$2 address pid
  backend
  if [ "$name" = portico ]; then
    address=127.0.0.201
    RUST_LOG=warn taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$out/$name.$requests.%p" \
      "$portico" run --config "$work/portico/config" --admin 127.0.0.201:19901 --state-dir "$out/state" \
      --drain-seconds 1 >"$out/$name.log" 2>&1 &
  else
    address=127.0.0.202
    taskset -c 1 valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$out/$name.$requests.%p" \
      nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -e "$work/nginx/error.log" >"$out/$name.log" 2>&1 &
  fi
  pid=$!
  for _ in $(seq 120); do
    curl -sk -o /dev/null --connect-to "::$address:" "$scheme://app01-lab.avi.aclab.uk/" && break
    sleep 0.5
  done
  taskset -c 0 h2load "${load[@]}" -n "$requests" --connect-to="$address" "$scheme://app01-lab.avi.aclab.uk/" \
    | grep -q "status codes: $requests 2xx" || { echo "$name: not every request answered 2xx" >&2; exit 1; }
  if [ "$name" = portico ]; then kill -INT "$pid"; else kill -QUIT "$pid"; fi
  wait "$pid" || true
  # nginx's worker writes its profile when it exits, which can be after the master.
  for _ in $(seq 60); do
    pgrep -f "$work/nginx/nginx.conf" >/dev/null || break
    sleep 0.5
  done
  pkill -f "$work/backend/nginx.conf" || true
  sleep 1
  # The largest total is the serving process (nginx's master does next to nothing).
  grep -h "^summary:" "$out/$name.$requests".* | awk '{print $2}' | sort -n | tail -1
}

for name in ${CONTENDERS:-portico nginx}; do
  small=$(count "$name" 2000)
  large=$(count "$name" 12000)
  echo "$name: $(( (large - small) / 10000 )) instructions per request"
done
