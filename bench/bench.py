#!/usr/bin/env python3
"""Portico's benchmark harness: Portico against nginx and HAProxy (proxy) and against BIND 9 and Knot (DNS),
on loopback, in one run, with the same backend and TLS material. Started by bench/run.sh, which installs the
peers and builds Portico; see bench/README.md for the method and the peers' settings.

Standard library only. Every wait is bounded in count and time; every process started here is stopped by its
own pid on the way out.
"""

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TEMPLATES = BENCH / "templates"
TLS = REPO / "examples" / "article" / "tls"

# Everything on 127.0.0.0/8, on addresses no test of the repository uses.
ADDR = {
    "portico": "127.0.0.201",
    "nginx": "127.0.0.202",
    "haproxy": "127.0.0.203",
    "backend": "127.0.0.210",
    "dns-portico": "127.0.0.231",
    "bind": "127.0.0.232",
    "knot": "127.0.0.233",
    "dns-vip": "127.0.0.234",
    "controlplane": "127.0.0.241",
}
BACKEND_PORT = 18080
PORTICO_ADMIN = "127.0.0.201:19901"
PORTICO_DNS_ADMIN = "127.0.0.231:19902"
CONTROLPLANE_ADMIN = "127.0.0.241:19903"
HOST = "app01-lab.avi.aclab.uk"
BODY = "portico-bench ok"
PROXY_CPU = "1"  # the contender (proxy or DNS server) has CPU 1 to itself
LOAD_CPU = "0"  # load generator, backend and this harness share CPU 0
# Contenders, backend and load generators all run at this niceness, so that other work on the machine (other
# engineers' compilers) takes less of their CPU; the same for every contender. Set by --nice.
NICE = ["nice", "-n", "-10"]
# Scenario 3 (new TLS connections): the share of its CPU each contender gets (cgroup CPU quota, per 10 ms period),
# the same for all. A new connection costs the client more than the server: a full handshake 1.5-2.5 ms of CPU 0
# (ECDHE, signature check, 8 processes switching) against 0.4-0.9 ms for the proxies; a resumed one (wrk) about
# as much as the proxy's. Uncapped, CPU 0 saturated first: 8 `openssl s_time` reached 400-550 handshakes/s
# whoever served, the proxies 15-45% busy, and the figure measured the client's noise (+-15% between runs); with
# wrk, Portico was 58-76% busy and nginx 88-95%. Capped, each contender is its own limit: at 10% (full) at most
# ~250/s at 0.4 ms each; at 40% (resumed) at most ~3,600/s (TLS 1.2) and ~1,300/s (TLS 1.3), both below what
# CPU 0 sustains. Latency under a cap includes waits for the next period, the same for every contender.
NEWCONN_CPU_SHARE = {"resumed": 0.40, "full handshake": 0.10}
CGROUP_PERIOD_US = 10_000
PROXIES = ["portico", "nginx", "haproxy"]
DNS_SERVERS = ["portico", "bind", "knot"]
DNS_NAMES = 1000
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Every contender gets the same file descriptor budget: the soft limit run.sh raised to the hard one. A proxy
# needs one descriptor per client connection and up to one per backend connection.
FD_LIMIT = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
MAXCONN = max(1000, (FD_LIMIT - 1000) // 2)

SCENARIOS = {
    "1": "http1",
    "2": "https",
    "3": "newconn",
    "4": "h2",
    "5": "cpu",
    "6": "rss",
    "7": "dns",
    "8": "controlplane",
    "8k": "kube",
}
TITLES = {
    "http1": "1. HTTP/1.1 keep-alive proxying (wrk -t1 -c64, small response)",
    "https": "2. HTTPS termination, keep-alive (wrk -t1 -c64)",
    "newconn": "3. New TLS connections per second, one request per connection: resumed (wrk -t1 -c64, "
               "`Connection: close`; wrk resumes sessions: IDs/tickets in 1.2, PSK+ECDHE in 1.3) and full "
               f"handshakes (8 x `openssl s_time -new`). Each contender is held to a share of its CPU by a cgroup quota, "
               f"{NEWCONN_CPU_SHARE['resumed']:.0%} (resumed) and {NEWCONN_CPU_SHARE['full handshake']:.0%} (full), "
               "so that it, not the one load-generating CPU, is the limit",
    "h2": "4. HTTP/2 multiplexed over TLS (h2load -t1 -c10 -m100)",
    "cpu": "5. Proxy CPU seconds per 100,000 requests (/proc/PID/stat utime+stime, process tree)",
    "rss": "6. Proxy memory (VmRSS of the process tree)",
    "dns": "7. Authoritative DNS over UDP (dnsperf -T1 -c8 -q500, 1,000 names)",
    "controlplane": "8. Control plane: generated HTTPRoutes (Portico only)",
    "kube": "8k. Control plane through a real Kubernetes API server (kube-apiserver + etcd on CPU 0, Portico only)",
}
# Scenarios with no peer: Portico's figures against the absolute bars.
PORTICO_ONLY = ("controlplane", "kube")


class BenchError(Exception):
    pass


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------
# Templates and files


def render(template_text, values):
    """Replaces {{NAME}}; a multi-line value is indented to the column of its placeholder."""

    def substitute(line):
        for key, value in values.items():
            token = "{{" + key + "}}"
            if token not in line:
                continue
            value = str(value)
            if "\n" in value.strip("\n"):
                column = line.index(token)
                lines = value.rstrip("\n").split("\n")
                value = ("\n" + " " * column).join(lines)
            line = line.replace(token, value)
        return line

    out = "\n".join(substitute(line) for line in template_text.split("\n"))
    left = re.findall(r"\{\{[A-Z_]+\}\}", out)
    if left:
        raise BenchError(f"template values missing: {sorted(set(left))}")
    return out


def write_template(name, destination, values):
    text = render((TEMPLATES / name).read_text(), values)
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(text)
    return destination


def write_atomic(path, text):
    temp = path.parent / f".{path.name}.tmp"
    temp.write_text(text)
    os.rename(temp, path)


def run_quiet(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


def make_tls(work):
    """ECDSA material from the repository's example; an RSA 2048 leaf for the same names signed by the example
    sub CA (generated here; test material only); HAProxy's combined PEM files."""
    tls = work / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    ext = tls / "rsa.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:app01-lab.avi.aclab.uk,DNS:application01.aclab.uk\n"
    )
    steps = [
        ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tls / "rsa.key"),
         "-subj", f"/CN={HOST}", "-out", str(tls / "rsa.csr")],
        ["openssl", "x509", "-req", "-in", str(tls / "rsa.csr"), "-CA", str(TLS / "sub-ca.crt"),
         "-CAkey", str(TLS / "sub-ca.key"), "-set_serial", str(int(time.time())), "-days", "30",
         "-extfile", str(ext), "-out", str(tls / "rsa.crt")],
    ]
    for step in steps:
        result = run_quiet(step)
        if result.returncode != 0:
            raise BenchError(f"{' '.join(step[:2])}: {result.stderr.strip()}")
    sub_ca = (TLS / "sub-ca.crt").read_text()
    (tls / "rsa-chain.crt").write_text((tls / "rsa.crt").read_text() + sub_ca)
    (tls / "ecdsa.pem").write_text((TLS / "app01-chain.crt").read_text() + (TLS / "app01.key").read_text())
    (tls / "rsa.pem").write_text((tls / "rsa-chain.crt").read_text() + (tls / "rsa.key").read_text())
    for key in ("rsa.key", "ecdsa.pem", "rsa.pem"):
        os.chmod(tls / key, 0o600)
    return tls


# ---------------------------------------------------------------------------------------------------------
# Processes


def proc_children():
    """pid -> list of child pids, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = (Path("/proc") / entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


class Proc:
    """A contender, backend or helper started here, pinned with taskset; stopped by its own pid."""

    def __init__(self, name, argv, cpu, work, env=None):
        self.name = name
        self.log_path = work / "logs" / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = open(self.log_path, "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            NICE + ["taskset", "-c", cpu] + [str(a) for a in argv],
            stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT,
            start_new_session=True, env=full_env,
        )
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def tree(self):
        children = proc_children()
        pids, queue = [], [self.pid]
        while queue and len(pids) < 1000:
            pid = queue.pop()
            pids.append(pid)
            queue.extend(children.get(pid, []))
        return pids

    def cpu_seconds(self):
        """utime + stime of every process of the tree (each counts all its threads)."""
        total = 0
        for pid in self.tree():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK

    def rss_kb(self):
        total = 0
        for pid in self.tree():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total

    def log_tail(self, lines=20):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self):
        if self.alive():
            pids = self.tree()
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.popen.wait(timeout=10)
        self.log_file.close()


STARTED = []


def start(name, argv, cpu, work, env=None):
    proc = Proc(name, argv, cpu, work, env)
    STARTED.append(proc)
    return proc


def stop(proc):
    proc.stop()
    if proc in STARTED:
        STARTED.remove(proc)


def stop_all():
    for proc in reversed(list(STARTED)):
        try:
            proc.stop()
        except Exception as error:  # noqa: BLE001 - keep stopping the others
            log(f"stopping {proc.name}: {error}")
    STARTED.clear()


def wait_until(what, check, proc=None, timeout=20.0, interval=0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise BenchError(f"{what}: {proc.name} exited ({proc.popen.returncode}); log:\n{proc.log_tail()}")
        try:
            if check():
                return
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            last = error
        time.sleep(interval)
    tail = f"; log:\n{proc.log_tail()}" if proc is not None else ""
    raise BenchError(f"{what}: not ready after {timeout:.0f}s ({last}){tail}")


def http_get(address, port, path="/", host=None, timeout=2.0):
    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Host": host or address})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def port_open(address, port):
    with socket.create_connection((address, port), timeout=1):
        return True


# ---------------------------------------------------------------------------------------------------------
# Starting the contenders


def start_backend(args, work):
    if args.backend == "testapp":
        proc = start("backend", [args.portico, "testapp", "--name", "bench",
                                 "--http", f"{ADDR['backend']}:{BACKEND_PORT}", "--https", "off"], LOAD_CPU, work,
                     env={"RUST_LOG": "warn"})
    else:
        (work / "backend" / "tmp").mkdir(parents=True, exist_ok=True)
        conf = write_template("backend-nginx.conf", work / "backend" / "nginx.conf", values(work))
        proc = start("backend", ["nginx", "-c", conf, "-p", work / "backend", "-e", work / "backend" / "error.log"],
                     LOAD_CPU, work)
    wait_until("backend", lambda: http_get(ADDR["backend"], BACKEND_PORT)[0] == 200, proc)
    return proc


def values(work):
    return {
        "WORK": work, "TLS": TLS, "BODY": BODY + "\\n", "BACKEND_ADDR": ADDR["backend"],
        "BACKEND_PORT": BACKEND_PORT, "DNS_VIP": ADDR["dns-vip"], "DNS_ADDR": ADDR["dns-portico"],
        "BIND_ADDR": ADDR["bind"], "KNOT_ADDR": ADDR["knot"], "CP_ADDR": ADDR["controlplane"],
        "FD_LIMIT": FD_LIMIT, "WORKER_CONNECTIONS": FD_LIMIT - 100, "MAXCONN": MAXCONN, "HOST": HOST,
    }


def start_proxy(name, args, work):
    address = ADDR[name]
    v = dict(values(work), ADDR=address)
    if name == "portico":
        tls = work / "tls"
        v.update({
            "ECDSA_CHAIN": (TLS / "app01-chain.crt").read_text(), "ECDSA_KEY": (TLS / "app01.key").read_text(),
            "RSA_CHAIN": (tls / "rsa-chain.crt").read_text(), "RSA_KEY": (tls / "rsa.key").read_text(),
        })
        config = work / "portico" / "config"
        write_template("portico-proxy.yaml", config / "bench.yaml", v)
        proc = start("portico", [args.portico, "run", "--config", config, "--admin", PORTICO_ADMIN,
                                 "--state-dir", work / "portico" / "state", "--drain-seconds", "1"],
                     PROXY_CPU, work, env={"RUST_LOG": "info"})
    elif name == "nginx":
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (work / "nginx" / sub).mkdir(parents=True, exist_ok=True)
        conf = write_template("nginx.conf", work / "nginx" / "nginx.conf", v)
        proc = start("nginx", ["nginx", "-c", conf, "-p", work / "nginx", "-e", work / "nginx" / "error.log"],
                     PROXY_CPU, work)
    else:
        conf = write_template("haproxy.cfg", work / "haproxy" / "haproxy.cfg", v)
        check = run_quiet(["haproxy", "-c", "-f", str(conf)])
        if check.returncode != 0:
            raise BenchError(f"haproxy configuration: {check.stdout}{check.stderr}")
        proc = start("haproxy", ["haproxy", "-db", "-f", conf], PROXY_CPU, work)
    wait_until(f"{name} serving", lambda: http_get(address, 80, host=HOST) == (200, BODY + "\n"), proc)
    for port in (443, 8443):
        wait_until(f"{name} TLS port {port}", lambda p=port: port_open(address, p), proc)
    return proc


def curl(args_list):
    result = run_quiet(["curl", "-sS", "--max-time", "5"] + args_list)
    return result.returncode, result.stdout, result.stderr.strip()


def check_proxy(name):
    """Each way the scenarios talk to a contender, once with curl (which verifies the certificate)."""
    address = ADDR[name]
    failures = []
    resolve = lambda port: ["--resolve", f"{HOST}:{port}:{address}", "--cacert", str(TLS / "root-ca.crt")]  # noqa: E731
    checks = [
        ("HTTP/1.1", ["-w", "|%{http_code}|%{http_version}", f"http://{address}/"], "1.1"),
        ("HTTPS ECDSA TLS1.3", resolve(443) + ["--tlsv1.3", "--http1.1", "-w", "|%{http_code}|%{http_version}",
                                               f"https://{HOST}/"], "1.1"),
        ("HTTPS ECDSA TLS1.2", resolve(443) + ["--tlsv1.2", "--tls-max", "1.2", "--http1.1", "-w",
                                               "|%{http_code}|%{http_version}", f"https://{HOST}/"], "1.1"),
        ("HTTPS RSA TLS1.3", resolve(8443) + ["--tlsv1.3", "--http1.1", "-w", "|%{http_code}|%{http_version}",
                                              f"https://{HOST}:8443/"], "1.1"),
        ("HTTPS RSA TLS1.2", resolve(8443) + ["--tlsv1.2", "--tls-max", "1.2", "--http1.1", "-w",
                                              "|%{http_code}|%{http_version}", f"https://{HOST}:8443/"], "1.1"),
        ("HTTP/2", resolve(443) + ["--http2", "-w", "|%{http_code}|%{http_version}", f"https://{HOST}/"], "2"),
    ]
    for label, curl_args, version in checks:
        code, out, err = curl(curl_args)
        expected = f"{BODY}\n|200|{version}"
        if code != 0 or out != expected:
            failures.append(f"{name} {label}: got {out!r} (curl exit {code}: {err})")
    # The RSA listener really serves the RSA certificate, the ECDSA one the ECDSA certificate.
    for port, algorithm in ((443, "id-ecPublicKey"), (8443, "rsaEncryption")):
        result = subprocess.run(
            ["openssl", "s_client", "-connect", f"{address}:{port}", "-servername", HOST],
            input="", capture_output=True, text=True, timeout=20)
        leaf = subprocess.run(["openssl", "x509", "-noout", "-text"], input=result.stdout, capture_output=True,
                              text=True, timeout=20)
        if f"Public Key Algorithm: {algorithm}" not in leaf.stdout:
            failures.append(f"{name} port {port}: the certificate served is not {algorithm}")
    return failures


# ---------------------------------------------------------------------------------------------------------
# Load generators


class Background:
    """Runs `run` on a daemon thread from `start` (or the start of a `with`) to `stop`; `run` returns once
    `self.stopping` is set."""

    join_timeout = 10

    def __init__(self):
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        raise NotImplementedError

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=self.join_timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *_):
        self.stop()


class Sampler(Background):
    """Samples a process tree's RSS every 0.2 s while a load generator runs; keeps the maximum."""

    join_timeout = 5

    def __init__(self, proc):
        super().__init__()
        self.proc, self.max_kb = proc, 0

    def run(self):
        while not self.stopping.is_set():
            self.max_kb = max(self.max_kb, self.proc.rss_kb())
            self.stopping.wait(0.2)


def load_env(tls_version=None):
    env = dict(os.environ)
    if tls_version:
        env["OPENSSL_CONF"] = str(TEMPLATES / f"openssl-tls{tls_version}.cnf")
    return env


def measured(proc, load, what, cpu_share=None):
    """Calls `load` (which runs load generators on CPU 0 against `proc`, capped at `cpu_share` of its CPU if
    given); returns what it returned, the proxy's CPU seconds, the wall time, the maximum RSS seen and whether
    the cap was applied (None when none was asked for)."""
    cap = CpuCap(proc, cpu_share) if cpu_share else None
    before = proc.cpu_seconds()
    started = time.monotonic()
    with Sampler(proc) as sampler, (cap or contextlib.nullcontext()):
        result = load()
    wall = time.monotonic() - started
    cpu = proc.cpu_seconds() - before
    if not proc.alive():
        raise BenchError(f"{proc.name} died during {what}; log:\n{proc.log_tail()}")
    return result, cpu, wall, sampler.max_kb, cap.applied if cap else None


def run_measured(proc, argv, duration, env, cpu_share=None):
    """`measured` for one load generator command."""
    full = NICE + ["taskset", "-c", LOAD_CPU] + [str(a) for a in argv]
    return measured(proc, lambda: subprocess.run(full, capture_output=True, text=True, env=env,
                                                 timeout=duration + 120), str(argv[0]), cpu_share)


def wrk(proc, url, connections, duration, headers=(), tls_version=None, cpu_share=None):
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", "--latency",
            "-s", TEMPLATES / "wrk-report.lua"]
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    result, cpu, wall, rss, capped = run_measured(proc, argv, duration, load_env(tls_version), cpu_share)
    match = re.search(r"^BENCHJSON (\{.*\})$", result.stdout, re.M)
    if result.returncode != 0 or not match:
        raise BenchError(f"wrk {url} against {proc.name}: exit {result.returncode}\n{result.stdout}{result.stderr}")
    summary = json.loads(match.group(1))
    requests = summary["requests"]
    seconds = summary["duration_us"] / 1e6
    errors = sum(summary[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    return {
        "rps": requests / seconds if seconds else 0.0,
        "p99_ms": summary["lat_p99_us"] / 1000.0,
        "p50_ms": summary["lat_p50_us"] / 1000.0,
        "requests": requests,
        "errors": errors,
        "error_detail": {k: summary[k] for k in summary if k.endswith("errors") or k == "timeouts"},
        "cpu_s": cpu,
        "cpu_per_100k": cpu / requests * 1e5 if requests else None,
        "busy": cpu / wall if wall else 0.0,
        "rss_max_kb": rss,
        "cpu_capped": capped,
    }


def h2load(proc, url, duration, work):
    log_file = work / "h2load.log"
    if log_file.exists():
        log_file.unlink()
    argv = ["h2load", "-t1", "-c10", "-m100", "-D", str(duration), "--log-file", log_file, url]
    result, cpu, wall, rss, _ = run_measured(proc, argv, duration, load_env())
    out = result.stdout
    finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored, (\d+) timeout", out)
    statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    protocol = re.search(r"Application protocol: (\S+)", out)
    if result.returncode != 0 or not (finished and counts and statuses):
        raise BenchError(f"h2load {url} against {proc.name}: exit {result.returncode}\n{out}{result.stderr}")
    latencies = []
    if log_file.exists():
        with open(log_file) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    latencies.append(int(parts[2]))
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] / 1000.0 if latencies else None
    succeeded = int(counts.group(4))
    errors = int(counts.group(5)) + int(counts.group(6)) + int(counts.group(7))
    errors += sum(int(statuses.group(i)) for i in (2, 3, 4))
    return {
        "rps": float(finished.group(3)),
        "p99_ms": p99,
        "requests": succeeded,
        "errors": errors + (0 if protocol and protocol.group(1) == "h2" else 1),
        "protocol": protocol.group(1) if protocol else None,
        "cpu_s": cpu,
        "cpu_per_100k": cpu / succeeded * 1e5 if succeeded else None,
        "busy": cpu / wall if wall else 0.0,
        "rss_max_kb": rss,
    }


class CpuCap:
    """Caps a contender's process tree at `share` of one CPU while in a `with`, through the cgroup CPU controller
    (v2 `cpu.max`, or v1 `cpu.cfs_quota_us`), then puts each process back in the group it came from.
    `applied` is False (and nothing is changed) where no writable CPU controller exists."""

    NAME = "portico-bench-cap"

    def __init__(self, proc, share):
        self.proc, self.share, self.applied, self.origin = proc, share, False, {}
        self.group, self.version = self.find_group()

    @classmethod
    def find_group(cls):
        v2 = Path("/sys/fs/cgroup")
        try:
            if "cpu" in (v2 / "cgroup.controllers").read_text().split():
                (v2 / "cgroup.subtree_control").write_text("+cpu")
                return v2 / cls.NAME, 2
        except OSError:
            pass
        v1 = Path("/sys/fs/cgroup/cpu")
        if (v1 / "cpu.cfs_quota_us").exists():
            return v1 / cls.NAME, 1
        return None, None

    def cgroup_of(self, pid):
        """The pid's group relative to the controller's root, from /proc/PID/cgroup."""
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if (self.version == 2 and controllers == "") or (self.version == 1 and "cpu" in controllers.split(",")):
                return path
        return "/"

    def __enter__(self):
        if self.group is None:
            return self
        try:
            self.group.mkdir(exist_ok=True)
            quota = int(CGROUP_PERIOD_US * self.share)
            if self.version == 2:
                (self.group / "cpu.max").write_text(f"{quota} {CGROUP_PERIOD_US}")
            else:
                (self.group / "cpu.cfs_period_us").write_text(str(CGROUP_PERIOD_US))
                (self.group / "cpu.cfs_quota_us").write_text(str(quota))
            for pid in self.proc.tree():
                self.origin[pid] = self.cgroup_of(pid)
                (self.group / "cgroup.procs").write_text(str(pid))
            self.applied = True
        except OSError as error:
            log(f"  CPU cap not applied to {self.proc.name}: {error}")
            self.__exit__()
        return self

    def __exit__(self, *_):
        root = self.group.parent if self.group is not None else None
        for pid, path in self.origin.items():
            try:
                (root / path.lstrip("/") / "cgroup.procs").write_text(str(pid))
            except OSError:
                pass  # the process has exited
        self.origin.clear()
        if self.applied:
            try:
                self.group.rmdir()
            except OSError:
                pass  # not empty: a process could not be moved back; the next cap reuses the group


def s_time(proc, address, port, tls_version, duration, parallel=8, cpu_share=None):
    """Full handshakes (no resumption): `parallel` concurrent `openssl s_time -new` clients, each doing one
    HTTP/1.0 GET per new connection, one at a time; the contender capped at `cpu_share` of its CPU if given."""
    argv = NICE + ["taskset", "-c", LOAD_CPU, "openssl", "s_time", "-connect", f"{address}:{port}", "-new",
                   f"-tls1_{tls_version[1]}", "-time", str(duration), "-www", "/"]

    def load():
        children = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                    for _ in range(parallel)]
        outputs = []
        for child in children:
            try:
                out, _ = child.communicate(timeout=duration + 60)
            except subprocess.TimeoutExpired:
                child.kill()
                out, _ = child.communicate()
            outputs.append((child.returncode, out))
        return outputs

    outputs, cpu, wall, rss, capped = measured(proc, load, "openssl s_time", cpu_share)
    connections, errors = 0, 0
    for code, out in outputs:
        match = re.search(r"(\d+) connections in [\d.]+ real seconds, (\d+) bytes read per connection", out)
        if code != 0 or not match:
            errors += 1
            continue
        connections += int(match.group(1))
        if int(match.group(2)) < len(BODY):
            errors += 1
    return {
        "rps": connections / wall if wall else 0.0,
        "p99_ms": None,
        "requests": connections,
        "errors": errors,
        "error_detail": [o[1][-300:] for o in outputs if o[0] != 0][:1],
        "cpu_s": cpu,
        "cpu_per_100k": cpu / connections * 1e5 if connections else None,
        "busy": cpu / wall if wall else 0.0,
        "rss_max_kb": rss,
        "cpu_capped": capped,
    }


def dnsperf(proc, address, queries, duration):
    argv = ["dnsperf", "-s", address, "-d", queries, "-l", str(duration), "-T", "1", "-c", "8", "-q", "500",
            "-t", "2"]
    result, cpu, wall, rss, _ = run_measured(proc, argv, duration, load_env())
    out = result.stdout
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    sent = re.search(r"Queries sent:\s+(\d+)", out)
    completed = re.search(r"Queries completed:\s+(\d+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    latency = re.search(r"Average Latency \(s\):\s+([\d.]+)", out)
    codes = re.search(r"Response codes:\s+(.*)", out)
    if result.returncode != 0 or not (qps and sent and completed and lost):
        raise BenchError(f"dnsperf against {proc.name}: exit {result.returncode}\n{out}{result.stderr}")
    noerror = re.search(r"NOERROR \d+ \(([\d.]+)%\)", codes.group(1)) if codes else None
    done = int(completed.group(1))
    return {
        "qps": float(qps.group(1)),
        "avg_latency_ms": float(latency.group(1)) * 1000 if latency else None,
        "sent": int(sent.group(1)),
        "completed": done,
        "lost": int(lost.group(1)),
        "noerror_pct": float(noerror.group(1)) if noerror else 0.0,
        "response_codes": codes.group(1).strip() if codes else "",
        "cpu_s": cpu,
        "cpu_per_100k": cpu / done * 1e5 if done else None,
        "busy": cpu / wall if wall else 0.0,
        "rss_max_kb": rss,
    }


# ---------------------------------------------------------------------------------------------------------
# Results


class Results:
    def __init__(self):
        self.runs = {}  # (scenario, metric, contender) -> [values]
        self.meta = {}  # (scenario, metric) -> unit, better
        self.failures = []
        self.notes = []

    def add(self, scenario, metric, contender, value, unit, better):
        if value is None:
            return
        self.runs.setdefault((scenario, metric, contender), []).append(value)
        self.meta[(scenario, metric)] = (unit, better)

    def median(self, scenario, metric, contender):
        values = self.runs.get((scenario, metric, contender))
        return statistics.median(values) if values else None

    def fail(self, message):
        log(f"FAILED: {message}")
        self.failures.append(message)


def record_load(results, scenario, label, contender, outcome, smoke):
    results.add(scenario, f"{label} req/s", contender, outcome["rps"], "req/s", "higher")
    results.add(scenario, f"{label} p99", contender, outcome["p99_ms"], "ms", "lower")
    if scenario == "newconn":
        results.add(scenario, f"{label} CPU s per 100k connections", contender, outcome["cpu_per_100k"], "CPU s",
                    "lower")
    results.add(scenario, f"{label} proxy CPU busy", contender, outcome["busy"] * 100, "%", "info")
    if outcome["requests"] == 0 or outcome["errors"]:
        results.fail(f"{scenario} {label} {contender}: {outcome['requests']} requests, {outcome['errors']} errors "
                     f"{outcome.get('error_detail', '')}")
    if outcome.get("cpu_capped") is False:
        note = (f"{label}: no writable cgroup CPU controller on this machine, so the contenders ran without their "
                f"CPU cap; the load generator may have been the limit (see the busy row), and the CPU per "
                f"connection is the figure to compare.")
        if note not in results.notes:
            results.notes.append(note)


# ---------------------------------------------------------------------------------------------------------
# Scenarios


def rotated(items, rep):
    """The contenders in a different order at each repetition, so none is always measured first."""
    shift = rep % len(items)
    return items[shift:] + items[:shift]


def proxy_scenarios(args, work, results, wanted, backend):
    procs = {}
    for name in PROXIES:
        log(f"starting {name} on {ADDR[name]} (CPU {PROXY_CPU})")
        procs[name] = start_proxy(name, args, work)
    for name in PROXIES:
        for failure in check_proxy(name):
            results.fail(failure)
    time.sleep(1.0)
    for name in PROXIES:
        results.add("rss", "idle RSS (after the checks)", name, procs[name].rss_kb() / 1024, "MiB", "lower")

    d, reps = args.duration, args.reps
    http_url = lambda n: f"http://{ADDR[n]}/"  # noqa: E731
    https_url = lambda n, port=443: f"https://{ADDR[n]}:{port}/"  # noqa: E731
    plan = []
    if "http1" in wanted:
        plan.append(("http1", "HTTP/1.1", PROXIES, lambda n: wrk(procs[n], http_url(n), 64, d)))
    if "https" in wanted:
        plan.append(("https", "ECDSA P-256", PROXIES, lambda n: wrk(procs[n], https_url(n), 64, d)))
        plan.append(("https", "RSA 2048", PROXIES, lambda n: wrk(procs[n], https_url(n, 8443), 64, d)))
    if "newconn" in wanted:
        for version in ("13", "12"):
            label = f"TLS 1.{version[1]} ECDSA, resumed"
            plan.append(("newconn", label, PROXIES, lambda n, v=version: wrk(
                procs[n], https_url(n), 64, d, ["Connection: close"], v, NEWCONN_CPU_SHARE["resumed"])))
        for version in ("13", "12"):
            label = f"TLS 1.{version[1]} ECDSA, full handshake"
            plan.append(("newconn", label, PROXIES, lambda n, v=version: s_time(
                procs[n], ADDR[n], 443, v, d, cpu_share=NEWCONN_CPU_SHARE['full handshake'])))
    if "h2" in wanted:
        plan.append(("h2", "h2 ECDSA", PROXIES, lambda n: h2load(procs[n], https_url(n), d, work)))
    no_proxy = []  # scenario 1's load straight to the backend, once per repetition: the harness's own floor
    for scenario, label, contenders, measure in plan:
        log(f"scenario {scenario}: {label}")
        if not args.smoke:
            for name in contenders:  # warm-up: backend connections, session caches, page faults
                try:
                    measure_warmup(args, measure, name)
                except BenchError as error:
                    results.fail(f"{scenario} {label} {name} warm-up: {error}")
        for rep in range(reps):
            for name in rotated(contenders, rep):
                try:
                    outcome = measure(name)
                except BenchError as error:
                    results.fail(f"{scenario} {label} {name}: {error}")
                    continue
                log(f"  {name:8} rep {rep + 1}: {outcome['rps']:10.0f} req/s  p99 "
                    f"{outcome['p99_ms'] if outcome['p99_ms'] is not None else float('nan'):7.2f} ms  "
                    f"busy {outcome['busy'] * 100:5.1f}%  errors {outcome['errors']}")
                record_load(results, scenario, label, name, outcome, args.smoke)
                if scenario in ("http1", "https") and outcome["cpu_per_100k"] is not None:
                    results.add("cpu", f"{label} ({'HTTP' if scenario == 'http1' else 'HTTPS'})", name,
                                outcome["cpu_per_100k"], "CPU s", "lower")
                if scenario == "http1":
                    results.add("rss", "RSS under scenario 1 (64 connections, max)", name,
                                outcome["rss_max_kb"] / 1024, "MiB", "lower")
            if scenario == "http1":
                try:
                    floor = wrk(backend, f"http://{ADDR['backend']}:{BACKEND_PORT}/", 64, d)
                except BenchError as error:
                    results.fail(f"http1 no proxy: {error}")
                    continue
                if floor["requests"] == 0 or floor["errors"]:
                    results.fail(f"http1 no proxy: {floor['requests']} requests, {floor['errors']} errors")
                    continue
                no_proxy.append(floor)
    if no_proxy:
        results.notes.append(no_proxy_note(no_proxy))
    if "rss" in wanted:
        conns = args.rss_connections
        log(f"scenario rss: {conns} open connections")
        for rep in range(reps):
            for name in rotated(PROXIES, rep):
                try:
                    outcome = wrk(procs[name], http_url(name), conns, max(d // 2, 2))
                except BenchError as error:
                    results.fail(f"rss {name}: {error}")
                    continue
                log(f"  {name:8} rep {rep + 1}: {conns} connections, RSS max {outcome['rss_max_kb'] / 1024:.1f} MiB, "
                    f"{outcome['rps']:.0f} req/s, errors {outcome['errors']}")
                results.add("rss", f"RSS under load with {conns} connections (max)", name,
                            outcome["rss_max_kb"] / 1024, "MiB", "lower")
                results.add("rss", f"req/s with {conns} connections", name, outcome["rps"], "req/s", "higher")
                if outcome["requests"] == 0 or outcome["errors"]:
                    results.fail(f"rss {name}: {outcome['requests']} requests, {outcome['errors']} errors "
                                 f"{outcome['error_detail']}")
    for name in PROXIES:
        stop(procs[name])


def no_proxy_note(outcomes):
    """What scenario 1's client and backend give with no proxy between them, on the same CPU 0: the latency
    that CPU 0's sharing between wrk and the backend adds to every contender's figure."""
    p99s = [o["p99_ms"] for o in outcomes]
    return (f"Scenario 1 with no proxy (the same wrk straight to the backend, both on CPU {LOAD_CPU}, once per "
            f"repetition): p99 {statistics.median(p99s):.2f} ms (runs: {', '.join(f'{v:.2f}' for v in p99s)}), "
            f"{statistics.median(o['rps'] for o in outcomes):,.0f} req/s. wrk and the backend share CPU 0, and "
            f"the scheduler's turns between them set this tail; each proxy's p99 includes it, so differences "
            f"between proxies' p99 smaller than its spread are noise.")


def measure_warmup(args, measure, name):
    saved = args.duration
    try:
        args.duration = args.warmup
        measure(name)
    finally:
        args.duration = saved


def dns_scenario(args, work, results):
    v = values(work)
    records = "\n".join(f"host{i:04d} IN A {ADDR['dns-vip']}" for i in range(1, DNS_NAMES + 1))
    zone = render((TEMPLATES / "bench.test.zone").read_text(), dict(v, RECORDS=records))
    queries = work / "dns" / "queries.txt"
    queries.parent.mkdir(parents=True, exist_ok=True)
    queries.write_text("".join(f"host{i:04d}.bench.test A\n" for i in range(1, DNS_NAMES + 1)))
    procs = {}
    # Portico: the zone's names are the hostnames of 1,000 HTTPRoutes.
    config = work / "dns" / "portico"
    write_template("portico-dns-gateway.yaml", config / "gateway.yaml", v)
    route = (TEMPLATES / "httproute.yaml").read_text()
    (config / "routes.yaml").write_text("".join(
        render(route, {"NAME": f"host{i:04d}", "GATEWAY": "dns", "HOSTNAME": f"host{i:04d}.bench.test"})
        for i in range(1, DNS_NAMES + 1)))
    dns_file = write_template("portico-dns.yaml", work / "dns" / "portico.yaml", v)
    log(f"starting Portico DNS on {ADDR['dns-portico']} (CPU {PROXY_CPU})")
    procs["portico"] = start("portico-dns", [args.portico, "run", "--config", config, "--config-file", dns_file,
                                             "--admin", PORTICO_DNS_ADMIN, "--state-dir", work / "dns" / "state",
                                             "--drain-seconds", "1"], PROXY_CPU, work, env={"RUST_LOG": "info"})
    # BIND 9 and Knot: the same names in a zone file.
    bind_dir = work / "bind"
    bind_dir.mkdir(parents=True, exist_ok=True)
    (bind_dir / "bench.test.zone").write_text(zone)
    conf = write_template("named.conf", bind_dir / "named.conf", v)
    check = run_quiet(["named-checkconf", "-z", str(conf)])
    if check.returncode != 0:
        raise BenchError(f"named-checkconf: {check.stdout}{check.stderr}")
    # BIND binds only the addresses of interfaces: give it its own /32 on lo (removed at the end), as the DNS
    # tests of the repository do.
    loopback_alias(ADDR["bind"])
    log(f"starting BIND 9 on {ADDR['bind']} (CPU {PROXY_CPU})")
    procs["bind"] = start("bind", ["named", "-g", "-n", "1", "-c", conf], PROXY_CPU, work)
    knot_dir = work / "knot"
    knot_dir.mkdir(parents=True, exist_ok=True)
    (knot_dir / "bench.test.zone").write_text(zone)
    conf = write_template("knot.conf", knot_dir / "knot.conf", v)
    log(f"starting Knot on {ADDR['knot']} (CPU {PROXY_CPU})")
    procs["knot"] = start("knot", ["knotd", "-c", conf], PROXY_CPU, work)
    addresses = {"portico": ADDR["dns-portico"], "bind": ADDR["bind"], "knot": ADDR["knot"]}

    def dig(address, name, rtype="A"):
        result = run_quiet(["dig", f"@{address}", name, rtype, "+norec", "+noedns", "+time=1", "+tries=1"])
        status = re.search(r"status: (\w+)", result.stdout)
        answers = re.findall(r"^(\S+)\s+\d+\s+IN\s+(\S+)\s+(\S+)$", result.stdout, re.M)
        size = re.search(r"MSG SIZE\s+rcvd: (\d+)", result.stdout)
        sizes[address] = int(size.group(1)) if size else None
        return (status.group(1) if status else None), answers

    sizes = {}

    for name in DNS_SERVERS:
        wait_until(f"{name} DNS answering",
                   lambda n=name: dig(addresses[n], f"host{DNS_NAMES:04d}.bench.test")[0] == "NOERROR", procs[name],
                   timeout=30, interval=0.2)
        for probe in (1, 500, DNS_NAMES):
            status, answers = dig(addresses[name], f"host{probe:04d}.bench.test")
            if status != "NOERROR" or answers != [(f"host{probe:04d}.bench.test.", "A", ADDR["dns-vip"])]:
                results.fail(f"dns {name}: host{probe:04d}.bench.test answered {status} {answers}")
        status, _ = dig(addresses[name], "missing.bench.test")
        if status != "NXDOMAIN":
            results.fail(f"dns {name}: missing.bench.test answered {status}, not NXDOMAIN")
        dig(addresses[name], "host0001.bench.test")
        results.add("dns", "answer size, host0001 A (dig +noedns)", name, sizes.get(addresses[name]), "bytes",
                    "info")
        results.add("dns", "idle RSS", name, procs[name].rss_kb() / 1024, "MiB", "lower")

    d, reps = args.duration, args.reps
    if not args.smoke:
        for name in DNS_SERVERS:
            dnsperf(procs[name], addresses[name], queries, args.warmup)
    for rep in range(reps):
        for name in rotated(DNS_SERVERS, rep):
            try:
                outcome = dnsperf(procs[name], addresses[name], queries, d)
            except BenchError as error:
                results.fail(f"dns {name}: {error}")
                continue
            log(f"  {name:8} rep {rep + 1}: {outcome['qps']:10.0f} qps  avg {outcome['avg_latency_ms']:.3f} ms  "
                f"lost {outcome['lost']}  busy {outcome['busy'] * 100:5.1f}%  {outcome['response_codes']}")
            results.add("dns", "UDP queries/s", name, outcome["qps"], "q/s", "higher")
            results.add("dns", "average latency", name, outcome["avg_latency_ms"], "ms", "lower")
            results.add("dns", "lost queries", name, outcome["lost"] / max(outcome["sent"], 1) * 100, "%", "lower")
            results.add("dns", "CPU s per 100k queries", name, outcome["cpu_per_100k"], "CPU s", "lower")
            results.add("dns", "server CPU busy", name, outcome["busy"] * 100, "%", "info")
            if outcome["completed"] == 0 or outcome["noerror_pct"] < 99.0:
                results.fail(f"dns {name}: {outcome['completed']} answers, {outcome['response_codes']}")
    for name in DNS_SERVERS:
        stop(procs[name])


ALIASES = []


def loopback_alias(address):
    shown = run_quiet(["ip", "-4", "addr", "show", "dev", "lo"]).stdout
    if f"inet {address}/" in shown:
        return
    result = run_quiet(["ip", "addr", "add", f"{address}/32", "dev", "lo"])
    if result.returncode != 0 and "File exists" not in result.stderr:
        raise BenchError(f"cannot add {address}/32 to lo for BIND: {result.stderr.strip()}")
    if result.returncode == 0:
        ALIASES.append(address)


def remove_aliases():
    for address in ALIASES:
        run_quiet(["ip", "addr", "del", f"{address}/32", "dev", "lo"])
    ALIASES.clear()


def timed_command(argv, cpu=PROXY_CPU):
    """Runs a command pinned to `cpu`; its wall time in seconds, maximum RSS in MiB, exit code and output."""
    started = time.monotonic()
    child = subprocess.Popen(NICE + ["taskset", "-c", cpu] + [str(a) for a in argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    # Read both pipes to the end (a big IR would fill a pipe), then reap with wait4 for the child's rusage.
    out_chunks, err_chunks = [], []
    reader = threading.Thread(target=lambda: err_chunks.append(child.stderr.read()), daemon=True)
    reader.start()
    out_chunks.append(child.stdout.read())
    reader.join(timeout=600)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    return wall, usage.ru_maxrss / 1024, child.returncode, b"".join(out_chunks), b"".join(err_chunks)


def controlplane_scenario(args, work, results):
    v = values(work)
    route_template = (TEMPLATES / "httproute.yaml").read_text()
    for count in args.routes:
        directory = work / "controlplane" / f"routes-{count}"
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        write_template("controlplane-gateway.yaml", directory / "gateway.yaml", dict(v, ROUTES=count))
        for first in range(1, count + 1, 100):
            text = "".join(render(route_template, {"NAME": f"route{i:05d}", "GATEWAY": "cp",
                                                   "HOSTNAME": f"route{i:05d}.cp.bench.test"})
                           for i in range(first, min(first + 100, count + 1)))
            (directory / f"routes-{first:05d}.yaml").write_text(text)
        changed = directory / "changed.yaml"
        changed.write_text(render(route_template, {"NAME": "changed", "GATEWAY": "cp",
                                                   "HOSTNAME": "changed-0.cp.bench.test"}))
        label = f"{count} routes"
        log(f"scenario controlplane: {label}")
        for rep in range(args.reps):
            wall, rss, code, out, err = timed_command([args.portico, "translate", "--config", directory])
            if code != 0 or b"route00001" not in out:
                results.fail(f"controlplane {label}: portico translate exit {code}: {err.decode()[-500:]}")
                continue
            results.add("controlplane", f"{label}: `portico translate` wall time", "portico", wall * 1000, "ms",
                        "lower")
            results.add("controlplane", f"{label}: `portico translate` max RSS", "portico", rss, "MiB", "lower")
            wall, rss, code, out, err = timed_command([args.portico, "validate", "--config", directory])
            if code != 0:
                results.fail(f"controlplane {label}: portico validate exit {code}: {out.decode()[-500:]}")
                continue
            results.add("controlplane", f"{label}: `portico validate` wall time", "portico", wall * 1000, "ms",
                        "lower")
            log(f"  rep {rep + 1}: translate+validate done")
        # Serving: start, time to the first route answering, RSS, then update-to-serving of one changed file.
        address = ADDR["controlplane"]
        started = time.monotonic()
        proc = start(f"portico-cp-{count}", [args.portico, "run", "--config", directory, "--admin",
                                             CONTROLPLANE_ADMIN, "--state-dir", work / "controlplane" / "state",
                                             "--drain-seconds", "1"], PROXY_CPU, work,
                     # BENCH_PORTICO_LOG=info,portico=debug logs how long each translation and swap took.
                     env={"RUST_LOG": os.environ.get("BENCH_PORTICO_LOG", "info")})
        try:
            wait_until(f"portico with {label}", lambda: http_get(address, 80, host=f"route{count:05d}.cp.bench.test")
                       == (200, BODY + "\n"), proc, timeout=120, interval=0.02)
            results.add("controlplane", f"{label}: start to serving", "portico",
                        (time.monotonic() - started) * 1000, "ms", "lower")
            time.sleep(0.5)
            results.add("controlplane", f"{label}: `portico run` RSS serving", "portico", proc.rss_kb() / 1024,
                        "MiB", "lower")
            # The data plane at this scale: the first and the last of the routes should answer alike (a host
            # lookup that tries hosts in order made the last of 10,000 answer 3.7 times fewer requests/s).
            for which, route in (("first", "route00001"), ("last", f"route{count:05d}")):
                outcome = wrk(proc, f"http://{address}:80/", 64, max(args.duration // 2, 2),
                              [f"Host: {route}.cp.bench.test"])
                if outcome["requests"] == 0 or outcome["errors"]:
                    results.fail(f"controlplane {label}: wrk to the {which} route: {outcome['requests']} requests, "
                                 f"{outcome['errors']} errors {outcome['error_detail']}")
                    continue
                log(f"  {which} route ({route}): {outcome['rps']:.0f} req/s")
                results.add("controlplane", f"{label}: keep-alive req/s to the {which} route (wrk -c64)", "portico",
                            outcome["rps"], "req/s", "higher")
            # Requests keep flowing to another route meanwhile: the slowest shows whether a reload holds up
            # the data plane.
            with SteadyClient(address, "route00001.cp.bench.test") as steady:
                for rep in range(args.reps):
                    hostname = f"changed-{rep + 1}.cp.bench.test"
                    text = render(route_template, {"NAME": "changed", "GATEWAY": "cp", "HOSTNAME": hostname})
                    latency = update_latency(address, lambda: write_atomic(changed, text), hostname, proc)
                    if latency is None:
                        results.fail(f"controlplane {label}: the changed route never answered")
                        continue
                    log(f"  rep {rep + 1}: update-to-serving {latency:.0f} ms")
                    results.add("controlplane", f"{label}: update-to-serving (one route file changed)", "portico",
                                latency, "ms", "lower")
                    time.sleep(0.3)
            if steady.failures or not steady.latencies:
                results.fail(f"controlplane {label}: requests during the updates: {steady.failures} failed, "
                             f"{len(steady.latencies)} answered")
            else:
                log(f"  slowest of {len(steady.latencies)} requests during the updates: "
                    f"{max(steady.latencies):.1f} ms")
                results.add("controlplane", f"{label}: slowest request to another route during the updates",
                            "portico", max(steady.latencies), "ms", "lower")
            results.add("controlplane", f"{label}: `portico run` RSS after updates", "portico",
                        proc.rss_kb() / 1024, "MiB", "lower")
            # Portico gives a replaced configuration's memory back 1 s after changes settle.
            time.sleep(2)
            results.add("controlplane", f"{label}: `portico run` RSS 2 s after the last update", "portico",
                        proc.rss_kb() / 1024, "MiB", "lower")
        except BenchError as error:
            results.fail(f"controlplane {label}: {error}")
        finally:
            stop(proc)


class SteadyClient(Background):
    """One keep-alive connection sending GET after GET (every 5 ms) to an unchanged route, from a thread, while
    the configuration changes; records each request's latency and counts failures."""

    def __init__(self, address, hostname):
        super().__init__()
        self.address, self.hostname = address, hostname
        self.latencies, self.failures = [], 0

    def run(self):
        connection = http.client.HTTPConnection(self.address, 80, timeout=5)
        deadline = time.monotonic() + 600
        while not self.stopping.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                connection.request("GET", "/", headers={"Host": self.hostname})
                response = connection.getresponse()
                body = response.read()
                if response.status == 200 and body.decode(errors="replace") == BODY + "\n":
                    self.latencies.append((time.monotonic() - started) * 1000)
                else:
                    self.failures += 1
            except (OSError, http.client.HTTPException):
                self.failures += 1
                connection.close()
                connection = http.client.HTTPConnection(self.address, 80, timeout=5)
            time.sleep(0.005)
        connection.close()


def update_latency(address, change, hostname, proc, timeout=30.0):
    """Makes the change (a route file rewritten with write + rename, as a deploy tool does; or an HTTPRoute
    patched in the API server) and polls every 2 ms until the new hostname answers 200; milliseconds from just
    before the change, or None after `timeout`."""
    connection = http.client.HTTPConnection(address, 80, timeout=2)
    started = time.monotonic()
    change()
    deadline = started + timeout
    try:
        while time.monotonic() < deadline:
            try:
                connection.request("GET", "/", headers={"Host": hostname})
                response = connection.getresponse()
                body = response.read()
                if response.status == 200 and body.decode(errors="replace") == BODY + "\n":
                    return (time.monotonic() - started) * 1000
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection(address, 80, timeout=2)
            if not proc.alive():
                raise BenchError(f"portico exited; log:\n{proc.log_tail()}")
            time.sleep(0.002)
    finally:
        connection.close()
    return None


# ---------------------------------------------------------------------------------------------------------
# Scenario 8k: the control plane through a real API server. The API server refuses loopback addresses in
# EndpointSlices, so this part runs in a network namespace of its own (`ip netns add`): the backend listens on a
# pod address (10.244.0.2) on that namespace's loopback, and no packet leaves it. bench.py runs itself again
# inside the namespace (--kube-inside) and reads back the figures.

KUBE_POD = "10.244.0.2"
KUBE_ROUTES_API = "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes"


def kube_testenv_built():
    """Whether `scripts/kube-testenv.sh build` has run: `versions` prints each tool's binary or binary
    directory last."""
    result = run_quiet([str(REPO / "scripts" / "kube-testenv.sh"), "versions"])
    if result.returncode != 0:
        return False
    paths = {line.split()[0]: Path(line.split()[-1]) for line in result.stdout.splitlines() if line.split()}
    return ("kubernetes" in paths and (paths["kubernetes"] / "kube-apiserver").exists()
            and "etcd" in paths and paths["etcd"].exists())


def kube_scenario(args, work, results):
    if not kube_testenv_built():
        message = "kube: the API server is not built (scripts/kube-testenv.sh build, about 20 minutes once)"
        if os.environ.get("PORTICO_REQUIRE_KUBE") == "1":
            results.fail(message)
        else:
            log(f"scenario kube: skipped: {message}")
            results.notes.append(f"Scenario 8k skipped: {message}.")
        return
    netns = f"portico-bench-{os.getpid()}"
    created = run_quiet(["ip", "netns", "add", netns])
    if created.returncode != 0:
        results.fail(f"kube: ip netns add {netns}: {created.stderr.strip()}")
        return
    directory = work / "kube"
    directory.mkdir(parents=True, exist_ok=True)
    measures = directory / "measures.json"
    try:
        argv = ["ip", "netns", "exec", netns, sys.executable, str(Path(__file__).resolve()), "--kube-inside",
                str(measures), "--portico", str(Path(args.portico).resolve()), "--work", str(work),
                "--reps", str(args.reps), "--nice", str(args.nice),
                "--routes", ",".join(str(c) for c in args.routes)]
        # Bounded: 10,000 objects are created through the API server (about a minute), then three updates.
        inner = subprocess.run(argv, timeout=1800)
        if not measures.exists():
            results.fail(f"kube: the run inside {netns} wrote no figures (exit {inner.returncode})")
            return
        found = json.loads(measures.read_text())
        for figure in found["figures"]:
            results.add("kube", figure["metric"], "portico", figure["value"], figure["unit"], "lower")
        for failure in found["failures"]:
            results.fail(failure)
    except subprocess.TimeoutExpired:
        results.fail("kube: the run inside the network namespace took more than 30 minutes")
    finally:
        run_quiet([str(REPO / "scripts" / "kube-testenv.sh"), "down", str(directory / "env")])
        run_quiet(["ip", "netns", "del", netns])


class KubeApi:
    """The API server over HTTPS with the test environment's admin token; one keep-alive connection."""

    def __init__(self, env):
        import ssl
        import urllib.parse
        server = urllib.parse.urlparse(env["KUBE_SERVER"])
        self.host, self.port = server.hostname, server.port
        self.context = ssl.create_default_context(cafile=env["KUBE_CA"])
        self.token = Path(env["KUBE_TOKEN_FILE"]).read_text().strip()
        self.connection = None

    def call(self, method, path, body=None, content_type="application/json"):
        for attempt in range(3):
            if self.connection is None:
                self.connection = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=30)
            try:
                headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
                data = None
                if body is not None:
                    data = json.dumps(body).encode()
                    headers["Content-Type"] = content_type
                self.connection.request(method, path, body=data, headers=headers)
                response = self.connection.getresponse()
                text = response.read().decode(errors="replace")
                if response.status >= 300:
                    raise BenchError(f"{method} {path}: {response.status} {text[:300]}")
                return json.loads(text) if text else None
            except (OSError, http.client.HTTPException) as error:
                self.connection.close()
                self.connection = None
                if attempt == 2:
                    raise BenchError(f"{method} {path}: {error}") from error
        return None


def kube_route(name, hostname):
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"parentRefs": [{"name": "cp"}], "hostnames": [hostname],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                            "backendRefs": [{"name": "backend", "port": 80}]}]},
    }


def kube_create_routes(env, first, last):
    """Creates routeNNNNN for NNNNN in first..last, on four connections at once (kube-apiserver and etcd take
    most of CPU 0 meanwhile)."""
    numbers = list(range(first, last + 1))
    errors = []

    def worker(chunk):
        api = KubeApi(env)
        try:
            for i in chunk:
                api.call("POST", KUBE_ROUTES_API, kube_route(f"route{i:05d}", f"route{i:05d}.cp.bench.test"))
        except BenchError as error:
            errors.append(str(error))

    threads = [threading.Thread(target=worker, args=(numbers[k::4],)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=1800)
    if errors:
        raise BenchError(f"creating HTTPRoutes: {errors[0]}")


def kube_inside(args):
    """Inside the network namespace: the API server, the backend, the objects, then Portico for each route
    count; writes the figures to args.kube_inside."""
    os.sched_setaffinity(0, {int(LOAD_CPU)})  # etcd and kube-apiserver inherit CPU 0
    work = Path(args.work)
    directory = work / "kube"
    figures, failures = [], []

    def figure(metric, value, unit):
        figures.append({"metric": metric, "value": value, "unit": unit})

    try:
        for step in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", f"{KUBE_POD}/32", "dev", "lo"]):
            done = run_quiet(step)
            if done.returncode != 0:
                raise BenchError(f"{' '.join(step)}: {done.stderr.strip()}")
        started = time.monotonic()
        up = subprocess.run([str(REPO / "scripts" / "kube-testenv.sh"), "up", str(directory / "env")],
                            capture_output=True, text=True, timeout=300)
        if up.returncode != 0:
            raise BenchError(f"kube-testenv.sh up: {up.stderr[-1000:]}")
        log(f"scenario kube: API server up in {time.monotonic() - started:.1f} s")
        env = dict(line.split("=", 1) for line in (directory / "env" / "env").read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
        (directory / "backend" / "tmp").mkdir(parents=True, exist_ok=True)
        conf = write_template("backend-nginx.conf", directory / "backend" / "nginx.conf",
                              dict(values(directory), BACKEND_ADDR=KUBE_POD))
        backend = start("kube-backend", ["nginx", "-c", conf, "-p", directory / "backend", "-e",
                                         directory / "backend" / "error.log"], LOAD_CPU, directory)
        wait_until("backend", lambda: http_get(KUBE_POD, BACKEND_PORT)[0] == 200, backend)
        api = KubeApi(env)
        api.call("POST", "/apis/gateway.networking.k8s.io/v1/gatewayclasses", {
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "portico"},
            "spec": {"controllerName": "portico.dev/gateway-controller"}})
        api.call("POST", "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways", {
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "cp", "namespace": "default"},
            "spec": {"gatewayClassName": "portico",
                     "addresses": [{"type": "IPAddress", "value": ADDR["controlplane"]}],
                     "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
                                    "allowedRoutes": {"namespaces": {"from": "All"}}}]}})
        api.call("POST", "/api/v1/namespaces/default/services", {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "backend", "namespace": "default"},
            "spec": {"ports": [{"port": 80, "targetPort": BACKEND_PORT}]}})
        api.call("POST", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "backend", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "backend"}},
            "addressType": "IPv4", "ports": [{"name": "", "port": BACKEND_PORT}],
            "endpoints": [{"addresses": [KUBE_POD]}]})
        api.call("POST", KUBE_ROUTES_API, kube_route("changed", "changed-0.cp.bench.test"))
        created = 0
        for count in args.routes:
            label = f"{count} routes"
            log(f"scenario kube: {label}: creating HTTPRoutes {created + 1}-{count} in the API server")
            started = time.monotonic()
            kube_create_routes(env, created + 1, count)
            log(f"  {count - created} created in {time.monotonic() - started:.1f} s")
            created = count
            kube_serve(args, directory, api, count, figure, failures)
        stop(backend)
    except BenchError as error:
        failures.append(f"kube: {error}")
    finally:
        stop_all()
        Path(args.kube_inside).write_text(json.dumps({"figures": figures, "failures": failures}))


def kube_accepted(api, name):
    status = api.call("GET", f"{KUBE_ROUTES_API}/{name}").get("status", {})
    return any(c.get("type") == "Accepted" and c.get("status") == "True"
               for parent in status.get("parents", []) for c in parent.get("conditions", []))


def kube_serve(args, directory, api, count, figure, failures):
    """One `portico run --kubernetes` over `count` routes: start to serving, RSS, update-to-serving of a patched
    HTTPRoute, RSS after updates."""
    label = f"{count} routes"
    address = ADDR["controlplane"]
    started = time.monotonic()
    proc = start(f"portico-kube-{count}", [
        args.portico, "run", "--kubernetes", "--kubeconfig", directory / "env" / "admin.kubeconfig",
        "--leader-elect", "false", "--admin", CONTROLPLANE_ADMIN, "--state-dir", directory / f"state-{count}",
        "--drain-seconds", "1"], PROXY_CPU, directory,
        # BENCH_PORTICO_LOG=info,portico=debug logs how long each translation and swap took.
        env={"RUST_LOG": os.environ.get("BENCH_PORTICO_LOG", "info")})
    try:
        wait_until(f"portico with {label} from the API server",
                   lambda: http_get(address, 80, host=f"route{count:05d}.cp.bench.test") == (200, BODY + "\n"),
                   proc, timeout=180, interval=0.02)
        figure(f"{label}: start to serving (lists from the API server)", (time.monotonic() - started) * 1000, "ms")
        time.sleep(0.5)
        figure(f"{label}: `portico run --kubernetes` RSS serving", proc.rss_kb() / 1024, "MiB")

        def updates(when, series):
            for rep in range(args.reps):
                hostname = f"changed-{count}-{series}-{rep + 1}.cp.bench.test"

                def change(hostname=hostname):
                    api.call("PATCH", f"{KUBE_ROUTES_API}/changed", {"spec": {"hostnames": [hostname]}},
                             content_type="application/merge-patch+json")

                latency = update_latency(address, change, hostname, proc)
                if latency is None:
                    failures.append(f"kube {label}: the patched HTTPRoute never answered")
                    continue
                log(f"  rep {rep + 1}: update-to-serving {latency:.0f} ms ({when})")
                figure(f"{label}: update-to-serving (one HTTPRoute patched in the API server), {when}", latency, "ms")
                time.sleep(0.3)

        # First while Portico writes the statuses of every route after its start (a minute for 10,000 routes,
        # each a request to the API server, which shares CPU 0 with the harness), then once they are written.
        with SteadyClient(address, "route00001.cp.bench.test") as steady:
            updates("while the first statuses are written", "a")
        if steady.failures or not steady.latencies:
            failures.append(f"kube {label}: requests during the updates: {steady.failures} failed, "
                            f"{len(steady.latencies)} answered")
        else:
            figure(f"{label}: slowest request to another route during the updates", max(steady.latencies), "ms")
        figure(f"{label}: `portico run --kubernetes` RSS after updates", proc.rss_kb() / 1024, "MiB")
        time.sleep(2)  # a replaced configuration's memory goes back 1 s after changes settle
        figure(f"{label}: `portico run --kubernetes` RSS 2 s after the last update", proc.rss_kb() / 1024, "MiB")
        # Portico writes every route's status as the spec says, in name order: the first and the last route
        # are checked, and the last one's time is when every status was written.
        for name in ("route00001", f"route{count:05d}"):
            wait_until(f"HTTPRoute {name} Accepted by Portico", lambda name=name: kube_accepted(api, name), proc,
                       timeout=600, interval=0.25)
        figure(f"{label}: start to every HTTPRoute status written", (time.monotonic() - started) * 1000, "ms")
        updates("statuses all written", "b")
    except BenchError as error:
        failures.append(f"kube {label}: {error}")
    finally:
        stop(proc)


# ---------------------------------------------------------------------------------------------------------
# Report


BARS = {
    # (scenario, metric prefix): how Portico's median is judged
    "req/s": ("higher", "best"),
    "p99": ("lower", "fastest"),
}


def machine_info():
    info = {"cpus": os.cpu_count(), "kernel": platform.release()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        info["memory_gib"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return info


def busy_elsewhere():
    """Processes not started here that used CPU recently (other engineers' compilers), from ps."""
    result = run_quiet(["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"])
    # kube-apiserver and etcd: scenario 8k's (they run in its network namespace).
    ours = {"python3", "ps", "bench.py", "kube-apiserver", "etcd"}
    busy = []
    for line in result.stdout.splitlines()[:15]:
        parts = line.split(None, 1)
        if len(parts) == 2 and float(parts[0]) >= 5.0 and parts[1] not in ours:
            busy.append(f"{parts[1]} {parts[0]}%")
    return busy


class LoadWatcher(Background):
    """Every 15 s during the run: the 1-minute load average and the busy processes that are not ours."""

    join_timeout = 20

    def __init__(self):
        super().__init__()
        self.max_load, self.seen = 0.0, {}

    def run(self):
        while not self.stopping.is_set():
            self.max_load = max(self.max_load, float(Path("/proc/loadavg").read_text().split()[0]))
            ours = {str(p.pid) for p in STARTED}
            for entry in busy_elsewhere():
                name = entry.rsplit(" ", 1)[0]
                if name not in ("wrk", "h2load", "dnsperf", "openssl", "nginx", "haproxy", "named", "knotd",
                                "portico", "taskset", "nice") and name not in ours:
                    self.seen[name] = self.seen.get(name, 0) + 1
            self.stopping.wait(15)


def versions(args):
    def first_line(argv, stream="stdout"):
        try:
            result = run_quiet(argv)
        except (OSError, subprocess.TimeoutExpired):
            return None
        text = (result.stdout + result.stderr).strip()
        return text.splitlines()[0] if text else None

    rev = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    # Results of earlier runs (bench/results/latest.*) do not change what is measured.
    dirty = run_quiet(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", ".",
                       ":(exclude)bench/results"]).stdout.strip()
    return {
        "portico": f"{rev}{' (work tree modified)' if dirty else ''}, {args.profile} build",
        "nginx": first_line(["nginx", "-v"]),
        "haproxy": first_line(["haproxy", "-v"]),
        "bind": first_line(["named", "-v"]),
        "knot": first_line(["knotd", "-V"]),
        "wrk": first_line(["wrk", "-v"]),
        "h2load": first_line(["h2load", "--version"]),
        "dnsperf": next((l for l in run_quiet(["dnsperf", "-h"]).stderr.splitlines() if l.startswith("Version")),
                        None),
        "openssl": first_line(["openssl", "version"]),
    }


def fmt(value, unit):
    if value is None:
        return "-"
    if unit in ("req/s", "q/s"):
        return f"{value:,.0f}"
    if unit == "%":
        return f"{value:.1f}"
    if unit in ("ms",) and value < 10:
        return f"{value:.2f}"
    if unit == "bytes":
        return f"{value:.0f}"
    if unit in ("CPU s",):
        return f"{value:.2f}"
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def build_tables(results):
    """Rows per scenario: medians per contender, ratios Portico/peer, and the issue's bar where there is one."""
    tables = {}
    for (scenario, metric), (unit, better) in results.meta.items():
        peers = DNS_SERVERS[1:] if scenario == "dns" else ([] if scenario in PORTICO_ONLY else PROXIES[1:])
        contenders = ["portico"] + peers
        medians = {c: results.median(scenario, metric, c) for c in contenders}
        runs = {c: results.runs.get((scenario, metric, c), []) for c in contenders}
        ratios = {p: (medians["portico"] / medians[p]) if medians["portico"] is not None and medians[p] else None
                  for p in peers}
        bar = judge(scenario, metric, unit, better, medians, peers)
        tables.setdefault(scenario, []).append({
            "metric": metric, "unit": unit, "better": better, "median": medians, "runs": runs,
            "ratio": ratios, "bar": bar,
        })
    return tables


def judge(scenario, metric, unit, better, medians, peers):
    portico = medians.get("portico")
    if portico is None:
        return None
    if scenario in PORTICO_ONLY:
        if "10000 routes" in metric and "translate` wall" in metric:
            return {"text": "< 1,000 ms", "met": portico < 1000}
        if "update-to-serving" in metric:
            return {"text": "< 200 ms", "met": portico < 200}
        if "10000 routes" in metric and "RSS" in metric:
            return {"text": "< 200 MiB", "met": portico < 200}
        return None
    if scenario == "dns" and metric == "UDP queries/s" and medians.get("bind"):
        return {"text": ">= 1.0 x BIND", "met": portico >= medians["bind"]}
    if scenario == "cpu" and medians.get("nginx"):
        return {"text": "<= nginx", "met": portico <= medians["nginx"]}
    if scenario in ("http1", "https", "newconn", "h2") and (metric.endswith("req/s") or metric.endswith("p99")):
        if scenario == "h2":
            candidates = ["nginx"]
        else:
            candidates = [p for p in peers if medians.get(p) is not None]
        if not candidates or any(medians.get(p) is None for p in candidates):
            return None
        # The faster peer by req/s in the same row group sets the bar for both req/s and p99.
        if better == "higher":
            best = max(candidates, key=lambda p: medians[p])
            return {"text": f">= 1.0 x {best}", "met": portico >= medians[best]}
        best = min(candidates, key=lambda p: medians[p])
        return {"text": f"<= {best}", "met": portico <= medians[best]}
    return None


NAMES = {"portico": "Portico", "nginx": "nginx", "haproxy": "HAProxy", "bind": "BIND 9", "knot": "Knot"}


def markdown(report, tables):
    lines = [f"# Portico benchmarks, {report['date']}", ""]
    m = report["machine"]
    lines += [
        f"Mode: **{report['mode']}** ({report['reps']} repetition(s) of {report['duration_s']} s per figure, median "
        f"shown; ratios are Portico / peer, measured in the same run). Machine: {m.get('cpu_model', '?')}, "
        f"{m['cpus']} CPUs, {m.get('memory_gib', '?')} GiB, Linux {m['kernel']}. Pinning: each proxy or DNS server on "
        f"CPU {PROXY_CPU} alone; the load generator (one thread), the backend ({report['backend']}) and the harness "
        f"on CPU {LOAD_CPU}; all at niceness {report['nice']}.",
        "",
        f"Load average at start {report['load_before']}, at end {report['load_after']}. Busy processes not ours at "
        f"start: {', '.join(report['busy_elsewhere_before']) or 'none'}; at end: "
        f"{', '.join(report['busy_elsewhere_after']) or 'none'}. During the run (sampled every 15 s): highest "
        f"1-minute load average {report['load_max_1min']:.1f} on {m['cpus']} CPUs; other busy processes seen "
        f"(name: samples) {', '.join(f'{k}: {v}' for k, v in report['busy_elsewhere_during'].items()) or 'none'}.",
        "",
        "Versions: " + "; ".join(f"{k}: {v}" for k, v in report["versions"].items() if v) + ".",
        "",
        "`busy` rows are the contender's CPU seconds over wall time during the run: near 100% means the contender "
        "was the bottleneck; well below means the load generator and backend on CPU 0 were, and the figure "
        "understates the contender.",
        "",
    ]
    for scenario in ["http1", "https", "newconn", "h2", "cpu", "rss", "dns", "controlplane", "kube"]:
        rows = tables.get(scenario)
        if not rows:
            continue
        peers = DNS_SERVERS[1:] if scenario == "dns" else ([] if scenario in PORTICO_ONLY else PROXIES[1:])
        contenders = ["portico"] + peers
        lines.append(f"## {TITLES[scenario]}")
        lines.append("")
        header = ["metric"] + [NAMES[c] for c in contenders] + [f"Portico/{NAMES[p]}" for p in peers] + ["bar"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for row in rows:
            unit = row["unit"]
            cells = [f"{row['metric']} ({unit})"]
            cells += [fmt(row["median"][c], unit) for c in contenders]
            cells += [f"{row['ratio'][p]:.2f}" if row["ratio"][p] is not None else "-" for p in peers]
            bar = row["bar"]
            cells.append("-" if not bar else f"{'met' if bar['met'] else '**missed**'} ({bar['text']})")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if report["failures"]:
        lines += ["## Failures", ""] + [f"- {f}" for f in report["failures"]] + [""]
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    lines += [f"Reproduce: `{report['command']}` (results in bench/results/).", ""]
    return "\n".join(lines)


def chart(tables, out_png, work):
    """Portico/peer ratios of the throughput rows, as a bar chart (gnuplot)."""
    if not shutil.which("gnuplot"):
        return False
    rows = []
    for scenario in ["http1", "https", "newconn", "h2", "dns"]:
        for row in tables.get(scenario, []):
            if row["better"] != "higher":
                continue
            ratios = [row["ratio"].get(p) for p in (["bind", "knot"] if scenario == "dns" else ["nginx", "haproxy"])]
            label = f"{scenario}: {row['metric'].replace(' req/s', '').replace('UDP queries/s', 'UDP')}"
            rows.append((label, ratios))
    if not rows:
        return False
    data = work / "chart.dat"
    with open(data, "w") as f:
        for label, ratios in rows:
            values_text = " ".join(f"{r:.3f}" if r is not None else "NaN" for r in ratios)
            f.write(f"\"{label}\" {values_text}\n")
    script = f"""
set terminal pngcairo size 1200,600 font "sans,10"
set output "{out_png}"
set title "Portico throughput / peer throughput (same run; > 1 means Portico is faster)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set yrange [0:*]
set grid ytics
set xtics rotate by -30 scale 0
set key top right
set arrow from graph 0, first 1 to graph 1, first 1 nohead lc rgb "red" dt 2 lw 2
plot "{data}" using 2:xtic(1) title "vs nginx / BIND 9", "" using 3 title "vs HAProxy / Knot"
"""
    result = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True, timeout=60)
    return result.returncode == 0


# ---------------------------------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="~2 s per scenario, one repetition, check answers")
    parser.add_argument("--portico", required=True, help="the portico binary")
    parser.add_argument("--profile", default="production")
    parser.add_argument("--backend", choices=["nginx", "testapp"], default="nginx")
    parser.add_argument("--duration", type=int, help="seconds per measured run (10; smoke 2)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per contender (full mode)")
    parser.add_argument("--reps", type=int, help="repetitions (3; smoke 1)")
    parser.add_argument("--rss-connections", type=int, help="open connections for the RSS figure (10000)")
    parser.add_argument("--routes", help="route counts for the control plane (100,1000,10000; smoke 100)")
    parser.add_argument("--nice", type=int, default=-10, help="niceness of everything started (-10)")
    parser.add_argument("--results", default=str(BENCH / "results"))
    parser.add_argument("--work", default=str(BENCH / "work"))
    parser.add_argument("--command-line", default="bench/run.sh")
    parser.add_argument("--kube-inside", help=argparse.SUPPRESS)  # scenario 8k, inside its network namespace
    parser.add_argument("scenarios", nargs="*", help="1-8, 8k or names: " + ", ".join(SCENARIOS.values()))
    args = parser.parse_args(argv)
    args.duration = args.duration or (2 if args.smoke else 10)
    args.reps = args.reps or (1 if args.smoke else 3)
    # 10,000 as the issue asks when the descriptor limit allows it (each proxy needs two per connection).
    args.rss_connections = args.rss_connections or (1000 if args.smoke else min(10000, MAXCONN - 500))
    args.routes = [int(x) for x in (args.routes or ("100" if args.smoke else "100,1000,10000")).split(",")]
    wanted = set()
    for item in args.scenarios or SCENARIOS.values():
        name = SCENARIOS.get(item, item)
        if name not in SCENARIOS.values():
            parser.error(f"unknown scenario {item!r}")
        wanted.add(name)
    # Scenario 5 is measured during 1 and 2; scenario 6's "under load" figure during 1.
    if "cpu" in wanted:
        wanted |= {"http1", "https"}
    if "rss" in wanted:
        wanted.add("http1")
    args.wanted = wanted
    return args


def main(argv):
    args = parse_args(argv)
    NICE[2] = str(args.nice)
    if args.kube_inside:
        kube_inside(args)
        return 0
    # The harness itself stays off the contenders' CPU.
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    results = Results()
    date = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    report = {
        "date": date,
        "mode": "smoke" if args.smoke else "full",
        "duration_s": args.duration,
        "reps": args.reps,
        "backend": "nginx, one worker, static 17-byte body" if args.backend == "nginx" else "portico testapp",
        "machine": machine_info(),
        "load_before": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "busy_elsewhere_before": busy_elsewhere(),
        "versions": versions(args),
        "nice": args.nice,
        "pinning": {"contender_cpu": PROXY_CPU, "load_generator_cpu": LOAD_CPU, "backend_cpu": LOAD_CPU},
        "addresses": ADDR,
        "scenarios": sorted(args.wanted),
        "command": args.command_line.strip(),
    }

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    watcher = LoadWatcher()
    watcher.start()
    try:
        make_tls(work)
        proxy_wanted = args.wanted & {"http1", "https", "newconn", "h2", "cpu", "rss"}
        if proxy_wanted or "controlplane" in args.wanted:
            log(f"starting the backend ({args.backend}) on {ADDR['backend']}:{BACKEND_PORT} (CPU {LOAD_CPU})")
            backend = start_backend(args, work)
        if proxy_wanted:
            proxy_scenarios(args, work, results, args.wanted, backend)
        if "dns" in args.wanted:
            dns_scenario(args, work, results)
        if "controlplane" in args.wanted:
            controlplane_scenario(args, work, results)
        if "kube" in args.wanted:
            kube_scenario(args, work, results)
    except BenchError as error:
        results.fail(str(error))
    except KeyboardInterrupt as error:
        results.fail(f"interrupted ({error})")
    finally:
        stop_all()
        remove_aliases()

    watcher.stop()
    report["load_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    report["load_max_1min"] = watcher.max_load
    report["busy_elsewhere_during"] = watcher.seen
    report["busy_elsewhere_after"] = busy_elsewhere()
    report["failures"] = results.failures
    report["notes"] = results.notes
    tables = build_tables(results)
    report["tables"] = tables
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-smoke" if args.smoke else ""
    json_path = out / f"{date}{suffix}.json"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = markdown(report, tables)
    (out / f"{date}{suffix}.md").write_text(text)
    (out / f"latest{suffix}.md").write_text(text)
    if not args.smoke:
        png = out / f"{date}.png"
        if chart(tables, png, work):
            shutil.copyfile(png, out / "latest.png")
            log(f"chart: {png}")
    log(f"results: {json_path} and {out / f'{date}{suffix}.md'}")
    print(text)
    if results.failures:
        log(f"{len(results.failures)} failure(s):")
        for failure in results.failures:
            print(f"  - {failure.splitlines()[0]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
