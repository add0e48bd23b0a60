//! Test harness: real BIND 9 processes, dig, and a hickory client, all on loopback.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_proto::op::{DnsResponse, Edns, Message, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};

/// Secrets of the test keys (base64), as `tsig-keygen` would write them.
pub const KEY_SHA256: &str = "cG9ydGljby10ZXN0LWtleS1zaGEyNTYtMDEyMzQ1Njc4OQ==";
pub const KEY_SHA384: &str = "cG9ydGljby10ZXN0LWtleS1zaGEzODQtMDEyMzQ1Njc4OWFiY2RlZg==";
pub const KEY_SHA512: &str = "cG9ydGljby10ZXN0LWtleS1zaGE1MTItMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3";
pub const KEY_OTHER: &str = "b3RoZXIta2V5LXRyYW5zZmVyLW9ubHktMDEyMzQ1Njc4OQ==";

/// Prints straight to the terminal, past the test harness's capture, so that a skip or a measurement is seen.
pub fn shout(message: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{message}");
}

fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Installs BIND, dig and dnsperf with the project's script when they are missing and we are root; once.
fn ensure_installed() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if find_tool("named").is_some() && find_tool("dig").is_some() && find_tool("dnsperf").is_some() {
            return;
        }
        if !is_root() {
            return;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-test-deps-dns.sh");
        shout(&format!("dns tests: installing bind9, bind9-dnsutils and dnsperf with {}", script.display()));
        let _ = Command::new("bash").arg(script).stdout(Stdio::null()).stderr(Stdio::inherit()).status();
    });
}

/// The path of `tool`, installing the test dependencies first if needed; `None` (after a loud message) when it
/// cannot be had. With `PORTICO_REQUIRE_DNS_TOOLS=1` a missing tool fails the test instead.
pub fn tool(tool: &str, test: &str) -> Option<PathBuf> {
    ensure_installed();
    match find_tool(tool) {
        Some(p) => Some(p),
        None => {
            let msg = format!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPED {test}: `{tool}` is not installed and could not be installed.\n\
                 !!! Run scripts/install-test-deps-dns.sh as root (Debian bind9 bind9-dnsutils dnsperf).\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            if std::env::var("PORTICO_REQUIRE_DNS_TOOLS").is_ok_and(|v| v == "1") {
                panic!("{msg}");
            }
            shout(&msg);
            None
        }
    }
}

/// A BIND 9 process started for one test, killed when dropped.
pub struct Bind {
    child: Child,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    log: PathBuf,
    alias: Option<LoopbackAlias>,
}

/// Why BIND could not be started.
pub enum StartError {
    /// This machine cannot give BIND its own loopback address (not root, no `ip`, no CAP_NET_ADMIN).
    Environment(String),
    /// BIND itself failed.
    Bind(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Environment(e) | StartError::Bind(e) => f.write_str(e),
        }
    }
}

impl From<String> for StartError {
    fn from(s: String) -> Self {
        StartError::Bind(s)
    }
}

/// A `/32` address on `lo` that this test added (BIND only listens on addresses of an interface; Linux
/// answers for all of 127.0.0.0/8, but BIND does not bind what it does not see). Removed when dropped.
pub struct LoopbackAlias(IpAddr);

impl LoopbackAlias {
    pub fn ensure(ip: IpAddr) -> Result<Option<LoopbackAlias>, StartError> {
        if ip == IpAddr::from([127, 0, 0, 1]) {
            return Ok(None);
        }
        let ip_tool = find_tool("ip").ok_or_else(|| {
            StartError::Environment("`ip` (iproute2) is missing: cannot add a loopback address for BIND".into())
        })?;
        let shown = Command::new(&ip_tool)
            .args(["-4", "addr", "show", "dev", "lo"])
            .output()
            .map_err(|e| StartError::Environment(e.to_string()))?;
        if String::from_utf8_lossy(&shown.stdout).contains(&format!("inet {ip}/")) {
            return Ok(None);
        }
        let out = Command::new(&ip_tool)
            .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
            .output()
            .map_err(|e| StartError::Environment(e.to_string()))?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            Ok(Some(LoopbackAlias(ip)))
        } else if err.contains("File exists") || err.contains("already assigned") {
            Ok(None)
        } else {
            Err(StartError::Environment(format!("cannot add {ip}/32 to lo (needs root / CAP_NET_ADMIN): {err}")))
        }
    }
}

impl Drop for LoopbackAlias {
    fn drop(&mut self) {
        if let Some(ip_tool) = find_tool("ip") {
            let _ = Command::new(ip_tool).args(["addr", "del", &format!("{}/32", self.0), "dev", "lo"]).output();
        }
    }
}

/// The article's corporate zone: SOA, NS, the delegation of `avi.aclab.uk` to the load balancer's DNS and its
/// glue, plus `extra` zone-file lines.
pub fn aclab_zone(ns_ip: IpAddr, lb_dns_ip: IpAddr, extra: &str) -> String {
    format!(
        "$TTL 300\n\
         @ IN SOA ns1.aclab.uk. hostmaster.aclab.uk. 1 3600 600 86400 30\n\
         @ IN NS ns1.aclab.uk.\n\
         ns1 IN A {ns_ip}\n\
         avi IN NS avi-ns01.aclab.uk.\n\
         avi-ns01 IN A {lb_dns_ip}\n\
         {extra}\n"
    )
}

/// The keys every test BIND knows: `portico-key` (sha256, may update and transfer), `portico-key-384`,
/// `portico-key-512` (may update and transfer) and `other-key` (may only transfer).
pub fn keys_conf() -> String {
    format!(
        "key \"portico-key\" {{ algorithm hmac-sha256; secret \"{KEY_SHA256}\"; }};\n\
         key \"portico-key-384\" {{ algorithm hmac-sha384; secret \"{KEY_SHA384}\"; }};\n\
         key \"portico-key-512\" {{ algorithm hmac-sha512; secret \"{KEY_SHA512}\"; }};\n\
         key \"other-key\" {{ algorithm hmac-sha256; secret \"{KEY_OTHER}\"; }};\n"
    )
}

impl Bind {
    /// BIND as the corporate DNS: primary for `aclab.uk` (zone file `zone`), updates and transfers allowed for
    /// the Portico keys, transfers for `other-key`; no recursion.
    pub fn primary(named: &Path, addr: SocketAddr, zone: &str) -> Result<Bind, StartError> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("aclab.uk.zone"), zone).map_err(|e| e.to_string())?;
        let d = dir.path().display();
        let conf = format!(
            "options {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n  session-keyfile \"{d}/session.key\";\n\
             managed-keys-directory \"{d}\";\n  listen-on port {port} {{ {ip}; }};\n  listen-on-v6 {{ none; }};\n\
             recursion no;\n  allow-query {{ any; }};\n  dnssec-validation no;\n  notify no;\n}};\n\
             controls {{ }};\n{keys}\
             zone \"aclab.uk\" {{\n  type primary;\n  file \"{d}/aclab.uk.zone\";\n\
             allow-update {{ key portico-key; key portico-key-384; key portico-key-512; }};\n\
             allow-transfer {{ key portico-key; key portico-key-384; key portico-key-512; key other-key; }};\n}};\n",
            port = addr.port(),
            ip = addr.ip(),
            keys = keys_conf(),
        );
        Bind::start(named, dir, addr, &conf)
    }

    /// BIND as a recursive resolver for clients: `aclab.uk` is a static-stub zone pointing at `primary`, so
    /// names under it are resolved from there, following delegations (to Portico's DNS) like any resolver.
    pub fn resolver(named: &Path, addr: SocketAddr, primary: IpAddr) -> Result<Bind, StartError> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path().display();
        let conf = format!(
            "options {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n  session-keyfile \"{d}/session.key\";\n\
             managed-keys-directory \"{d}\";\n  listen-on port {port} {{ {ip}; }};\n  listen-on-v6 {{ none; }};\n\
             recursion yes;\n  allow-recursion {{ 127.0.0.0/8; }};\n  allow-query {{ 127.0.0.0/8; }};\n\
             dnssec-validation no;\n  notify no;\n  qname-minimization off;\n  max-cache-ttl 1;\n\
             max-ncache-ttl 1;\n}};\n\
             controls {{ }};\n\
             zone \"aclab.uk\" {{\n  type static-stub;\n  server-addresses {{ {primary}; }};\n}};\n",
            port = addr.port(),
            ip = addr.ip(),
        );
        Bind::start(named, dir, addr, &conf)
    }

    fn start(named: &Path, dir: tempfile::TempDir, addr: SocketAddr, conf: &str) -> Result<Bind, StartError> {
        let alias = LoopbackAlias::ensure(addr.ip())?;
        let conf_path = dir.path().join("named.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        if let Some(check) = find_tool("named-checkconf") {
            let out = Command::new(check).arg(&conf_path).output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(StartError::Bind(format!(
                    "named-checkconf rejected the generated configuration:\n{}{}\n{conf}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        let log = dir.path().join("named.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new(named)
            .args(["-g", "-n", "1", "-c"])
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", named.display()))?;
        let mut bind = Bind { child, dir, addr, log, alias };
        bind.wait_ready()?;
        Ok(bind)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("named exited ({status}) at start:\n{}", self.log()));
            }
            if self.log().contains("running")
                && std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("named did not get ready on {} within 20 s:\n{}", self.addr, self.log()))
    }

    /// BIND's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // After BIND is gone, its address.
        self.alias.take();
    }
}

/// Starts a BIND with `start`, or prints a loud skip when BIND is not installed (returns `None`). A BIND that is
/// installed but does not start fails the test with its log.
pub fn bind_or_skip(test: &str, start: impl FnOnce(&Path) -> Result<Bind, StartError>) -> Option<Bind> {
    let named = tool("named", test)?;
    let skip = |why: String| {
        let msg = format!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! SKIPPED {test}: BIND could not be started here: {why}\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        if std::env::var("PORTICO_REQUIRE_DNS_TOOLS").is_ok_and(|v| v == "1") {
            panic!("{msg}");
        }
        shout(&msg);
        None
    };
    match start(&named) {
        Ok(b) => Some(b),
        Err(StartError::Environment(why)) => skip(why),
        Err(StartError::Bind(e)) if !is_root() => skip(format!("not root (port 53 needs root): {e}")),
        Err(StartError::Bind(e)) => panic!("{test}: BIND is installed but did not start: {e}"),
    }
}

/// Runs dig and returns its stdout (panics with stderr when it fails).
pub fn dig(dig: &Path, args: &[&str]) -> String {
    let out = Command::new(dig).args(args).output().expect("run dig");
    assert!(
        out.status.success(),
        "dig {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The zone's records by a TSIG-signed AXFR with dig, as `name TTL TYPE rdata` lines (SOA and TSIG left out).
pub fn dig_axfr(dig_path: &Path, server: SocketAddr, key: &str) -> BTreeSet<String> {
    let at = format!("@{}", server.ip());
    let port = server.port().to_string();
    let out = dig(dig_path, &[&at, "-p", &port, "-y", key, "aclab.uk", "AXFR", "+noall", "+answer"]);
    out.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
        .filter_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            if parts.len() < 5 || parts[3] == "SOA" || parts[3] == "TSIG" {
                return None;
            }
            Some(format!("{} {} {} {}", parts[0], parts[1], parts[3], parts[4..].join(" ")))
        })
        .collect()
}

/// A hickory client over UDP.
pub async fn udp_client(server: SocketAddr) -> Client<TokioRuntimeProvider> {
    let stream = UdpClientStream::builder(server, TokioRuntimeProvider::default())
        .with_timeout(Some(Duration::from_secs(3)))
        .build();
    let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(bg);
    client
}

/// A hickory client over TCP.
pub async fn tcp_client(server: SocketAddr) -> Client<TokioRuntimeProvider> {
    let (future, sender) =
        TcpClientStream::new(server, None, Some(Duration::from_secs(3)), TokioRuntimeProvider::default());
    let stream = future.await.expect("tcp connect");
    let (client, bg) = Client::<TokioRuntimeProvider>::new(stream, sender);
    tokio::spawn(bg);
    client
}

/// One query with the hickory client.
pub async fn query(client: &mut Client<TokioRuntimeProvider>, name: &str, rtype: RecordType) -> Message {
    let response: DnsResponse =
        client.query(Name::from_ascii(name).unwrap(), DNSClass::IN, rtype).await.expect("dns query");
    response.into()
}

/// One raw UDP query, with EDNS (`Some(payload)`, version `edns_version`) or without, returning the raw
/// response and its size: to see truncation exactly as a client would.
pub async fn raw_udp(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    edns: Option<u16>,
    edns_version: u8,
) -> (Message, usize) {
    let mut m = Message::query();
    m.metadata.recursion_desired = false;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(payload) = edns {
        let mut e = Edns::new();
        e.set_max_payload(payload).set_version(edns_version);
        m.edns = Some(e);
    }
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&m.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, _) = tokio::time::timeout(Duration::from_secs(3), socket.recv_from(&mut buf))
        .await
        .expect("udp answer in time")
        .unwrap();
    (Message::from_vec(&buf[..len]).expect("valid response"), len)
}
