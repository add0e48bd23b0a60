//! A real pebble (Debian package `pebble`) for tests: started with a TLS root made by this crate, and
//! pebble-challtestsrv as its DNS, which sends every name to one address. Shared by this crate's ACME tests
//! and Portico's end-to-end tests (feature `testing`).
//!
//! Without pebble, [`ensure_pebble`] runs `scripts/install-test-deps.sh`; if pebble is still missing it
//! prints why and the caller skips, unless `PORTICO_REQUIRE_PEBBLE=1`, which makes that a panic.
#![allow(clippy::missing_panics_doc)]

use crate::{CertificateAuthority, CertificateRequest, KeyAlgorithm, issue, tool};
use std::io::Write;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

/// Child processes killed (by their own handle) when the test ends, however it ends.
pub struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running pebble and pebble-challtestsrv, stopped on drop.
pub struct Pebble {
    _procs: Procs,
    /// Working directory (configs and logs).
    pub dir: tempfile::TempDir,
    /// ACME directory URL.
    pub directory_url: String,
    /// Management port (roots, ...).
    pub management: u16,
    /// challtestsrv's management port.
    pub challtestsrv_management: u16,
    /// The root that pebble's own TLS certificate chains to (trust it to reach the directory).
    pub root_pem: String,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn have(binary: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {binary}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure pebble is installed; `None` (with the reason printed) if it cannot be.
pub fn ensure_pebble() -> Option<()> {
    if have("pebble") && have("pebble-challtestsrv") {
        return Some(());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-test-deps.sh");
    let out = Command::new("bash").arg(&script).output();
    if have("pebble") && have("pebble-challtestsrv") {
        return Some(());
    }
    let why = match out {
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("running bash {}: {e}", script.display()),
    };
    let message = format!("SKIPPED: pebble is not installed and could not be installed ({why})");
    if std::env::var("PORTICO_REQUIRE_PEBBLE").is_ok_and(|v| v == "1") {
        panic!("{message}");
    }
    // Straight to the process's stderr, past the test harness's capture, so the skip is seen.
    let _ = writeln!(std::io::stderr(), "{message}");
    None
}

fn wait_for_port(port: u16, what: &str, procs: &mut Procs) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        for child in &mut procs.0 {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{what}: a test server exited early with {status}");
            }
        }
        assert!(Instant::now() < deadline, "{what} did not listen on 127.0.0.1:{port} within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(dir.join(name)).map(Stdio::from).unwrap_or_else(|_| Stdio::null())
}

/// Starts challtestsrv and pebble; HTTP-01 validation goes to 127.0.0.1:`http_port`.
pub fn start_pebble(http_port: u16) -> Pebble {
    start_pebble_resolving(http_port, "127.0.0.1".parse().expect("ip"))
}

/// Starts challtestsrv and pebble; every name resolves to `address`, and HTTP-01 validation goes to
/// `address`:`http_port`.
pub fn start_pebble_resolving(http_port: u16, address: IpAddr) -> Pebble {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // Pebble ships no usable certificate: make one with Portico's own tools.
    let (root_pem, root_key) = tool::init_root("CN=Pebble Test Root", 2, KeyAlgorithm::EcdsaP256).expect("root");
    let root = CertificateAuthority::from_pem(&root_pem, root_key.expose()).expect("root CA");
    let tls = issue(
        &root,
        &CertificateRequest {
            common_name: Some("pebble".into()),
            dns_names: vec!["localhost".into()],
            ip_addresses: vec!["127.0.0.1".parse().expect("ip")],
            key_algorithm: KeyAlgorithm::EcdsaP256,
            ..Default::default()
        },
    )
    .expect("pebble TLS certificate");
    let cert: PathBuf = write(d, "pebble.crt", &tls.chain_pem);
    let key: PathBuf = write(d, "pebble.key", tls.key_pem.expose());

    let (listen, management, dns, cts_management) = (free_port(), free_port(), free_port(), free_port());
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{listen}"),
        "managementListenAddress": format!("127.0.0.1:{management}"),
        "certificate": cert, "privateKey": key,
        "httpPort": http_port, "tlsPort": free_port(),
        "ocspResponderURL": "", "externalAccountBindingRequired": false
    }});
    let config_path = write(d, "pebble-config.json", &config.to_string());

    let mut procs = Procs(Vec::new());
    let cts = Command::new("pebble-challtestsrv")
        .args([
            "-defaultIPv4",
            &address.to_string(),
            "-defaultIPv6",
            "",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
        ])
        .args(["-dns01", &format!("127.0.0.1:{dns}"), "-management", &format!("127.0.0.1:{cts_management}")])
        .stdout(log_file(d, "challtestsrv.log"))
        .stderr(log_file(d, "challtestsrv.err"))
        .spawn()
        .expect("start pebble-challtestsrv");
    procs.0.push(cts);
    wait_for_port(cts_management, "pebble-challtestsrv", &mut procs);
    let pebble = Command::new("pebble")
        .arg("-config")
        .arg(&config_path)
        .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_VA_ALWAYS_VALID", "0")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(log_file(d, "pebble.log"))
        .stderr(log_file(d, "pebble.err"))
        .spawn()
        .expect("start pebble");
    procs.0.push(pebble);
    wait_for_port(listen, "pebble", &mut procs);
    wait_for_port(management, "pebble management", &mut procs);
    Pebble {
        _procs: procs,
        directory_url: format!("https://127.0.0.1:{listen}/dir"),
        management,
        challtestsrv_management: cts_management,
        root_pem,
        dir,
    }
}

impl Pebble {
    /// pebble's logs, for failure messages.
    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("--- pebble ---\n{}{}", read("pebble.log"), read("pebble.err"))
    }

    /// Pebble's issuing root (regenerated at each start), from its management interface.
    pub fn issuing_root(&self) -> String {
        let d = self.dir.path();
        write(d, "tls-root.pem", &self.root_pem);
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--cacert", "tls-root.pem"])
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .current_dir(d)
            .output()
            .expect("curl is installed");
        assert!(out.status.success(), "GET /roots/0: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
