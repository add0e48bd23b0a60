#!/usr/bin/env bash
# Installs what the DNS tests (crates/dns) need on a Debian machine: BIND 9 (`named`, as the corporate DNS and a
# recursive resolver), its tools (`dig`, `named-checkconf`) and `dnsperf`. Idempotent: does nothing when every
# tool is already there. Run as root (the tests bind port 53 on 127.0.0.x addresses).
set -euo pipefail

missing=0
for tool in named dig dnsperf ip; do
  command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1 || missing=1
done
if [ "$missing" -eq 0 ]; then
  echo "install-test-deps-dns: bind9, bind9-dnsutils and dnsperf already installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-test-deps-dns: missing bind9/bind9-dnsutils/dnsperf and not root: install them with apt-get" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update
apt-get -o DPkg::Lock::Timeout=600 install -y bind9 bind9-dnsutils dnsperf iproute2
# The package starts a system named on port 53 of every address where a service manager runs; the tests start
# their own, so stop the packaged one if it is running (it would hold 127.0.0.x:53).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet named 2>/dev/null; then
  systemctl stop named || true
fi
echo "install-test-deps-dns: done"
