#!/usr/bin/env bash
# Portico's benchmark suite: Portico vs nginx and HAProxy (proxy), vs BIND 9 and Knot (DNS), on loopback.
#
#   bench/run.sh [--smoke] [scenario...]     scenarios: 1-8, 8k or http1 https newconn h2 cpu rss dns controlplane kube
#
# Installs the peers and load generators from Debian when missing, builds Portico (release; the smoke run
# uses the debug build the test suite already made, as it only checks answers), then runs bench/bench.py,
# which writes bench/results/DATE.json, DATE.md, latest.md (and a PNG chart in full mode).
# --smoke: ~2 s per scenario, one repetition, exit non-zero unless every contender answered correctly.
# Other options are passed to bench/bench.py (--duration S, --reps N, --backend testapp, --routes 100,1000).
# Needs root (ports 53/80/443 on 127.0.0.x, apt-get). See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
for arg in "$@"; do
  [ "$arg" = "--smoke" ] && smoke=1
done

if [ "$(id -u)" -ne 0 ]; then
  echo "bench/run.sh: run as root (it installs packages and binds ports 53, 80 and 443 on 127.0.0.x)" >&2
  exit 1
fi

# --- peers and load generators (Debian packages), installed only when missing
declare -A package=(
  [nginx]=nginx-light [haproxy]=haproxy [ip]=iproute2 [named]=bind9 [named-checkconf]=bind9-utils [knotd]=knot
  [wrk]=wrk [h2load]=nghttp2-client [dnsperf]=dnsperf [dig]=bind9-dnsutils [gnuplot]=gnuplot-nox
  [curl]=curl [openssl]=openssl [taskset]=util-linux [python3]=python3
)
missing=()
for tool in "${!package[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${package[$tool]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the packages' services from starting (they would take 0.0.0.0:80 and :53).
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$made_policy" = 1 ] && rm -f "$policy"
fi

# --- Portico
if [ -n "${PORTICO_BIN:-}" ]; then
  portico="$PORTICO_BIN"
  profile="given"
elif [ "$smoke" = 1 ]; then
  echo "== cargo build -p portico (debug: the smoke run checks answers, not speed)"
  cargo build --locked -p portico
  portico="target/debug/portico"
  profile="debug"
else
  echo "== cargo build --profile production -p portico (the shipped build: fat LTO, one codegen unit)"
  cargo build --locked --profile production -p portico
  portico="target/production/portico"
  profile="production"
fi

# --- limits: as many descriptors as allowed (10,000 client connections need 20,000+ in a proxy), alike for all
ulimit -n "$(ulimit -Hn)"

exec python3 bench/bench.py --portico "$portico" --profile "$profile" --command-line "bench/run.sh $*" "$@"
