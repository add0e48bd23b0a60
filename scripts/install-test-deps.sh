#!/usr/bin/env bash
# Installs the system packages the tests use beyond Rust itself, idempotently (nothing is done when they are
# already there): pebble and pebble-challtestsrv (a test ACME server, Debian package `pebble`) for
# crates/pki's ACME tests, and the openssl CLI that several tests use as an independent judge.
set -euo pipefail

need_apt=()
command -v pebble >/dev/null 2>&1 && command -v pebble-challtestsrv >/dev/null 2>&1 || need_apt+=(pebble)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
[ ${#need_apt[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "missing: ${need_apt[*]} (run as root, or: sudo apt-get install -y ${need_apt[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq "${need_apt[@]}" >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}"
fi
