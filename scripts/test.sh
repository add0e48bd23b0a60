#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, then runs every check CI runs:
# formatting, clippy (warnings are errors) and the whole test suite (unit, golden, end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests drive as real peers: openssl (an independent TLS client), pebble (ACME).
scripts/install-test-deps.sh
# BIND 9, dig and dnsperf: the DNS tests' corporate DNS, resolver and load generator.
scripts/install-test-deps-dns.sh
# A real Kubernetes API server for the Kubernetes tests: kube-apiserver, kubectl, etcd and helm, built from the
# Go module proxy once (about 20 minutes on 2 cores) and cached in ~/.cache/portico (PORTICO_CACHE).
scripts/kube-testenv.sh build
# The ACME, DNS and Kubernetes tests must run, not skip, wherever this script runs.
export PORTICO_REQUIRE_PEBBLE=1 PORTICO_REQUIRE_DNS_TOOLS=1 PORTICO_REQUIRE_KUBE=1
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# A clean checkout gains nothing from incremental compilation, and its caches took most of a 70 GB target
# directory on a developer machine. Set CARGO_INCREMENTAL=1 to keep them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# The build and the benchmark peers need a few gigabytes; say so before a compiler dies of it.
free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ "${free_kib:-0}" -lt $((6 * 1024 * 1024)) ]; then
  echo "warning: $((free_kib / 1024)) MiB free on $(df -P . | awk 'NR == 2 { print $6 }'); the build needs about 6 GiB" >&2
fi

# The end-to-end tests bind ports 80 and 443 on 127.0.0.x VIPs, as the article's deployment does.
if [ "$(id -u)" -ne 0 ]; then
  echo "note: the end-to-end tests bind ports 80/443 on loopback VIPs; run as root or grant CAP_NET_BIND_SERVICE" >&2
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
# helm lint and helm template of both charts (the Ingress and HTTPRoute value sets), and `portico validate` of
# what charts/testapp renders.
echo "== charts"
scripts/charts-check.sh
# The benchmark harness stays working: every contender (Portico, nginx, HAProxy, BIND, Knot) must answer
# correctly for a couple of seconds per scenario. Figures from this run are not benchmarks.
echo "== bench smoke"
bench/run.sh --smoke
