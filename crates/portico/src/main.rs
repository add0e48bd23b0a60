//! `portico`: the application delivery controller binary.
//!
//! Subcommands: `run` (serve from manifest directories), `validate`, `translate`, `testapp` and `demo`.

mod admin;
mod ca;
mod certs;
mod config_file;
mod controller;
mod demo;
mod dns;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use clap::{Args, Parser, Subcommand};
use portico_provider::{FileProvider, Loaded};
use portico_proxy::{Metrics, Proxy};
use portico_resources::Severity;
use portico_translate::{TranslateOptions, translate};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Portico: load balancer, Gateway API and Ingress controller, certificates and DNS in one binary.
#[derive(Parser)]
#[command(name = "portico", version, about)]
struct Cli {
    /// Threads that serve traffic; by default one per CPU this process may use (its CPU affinity). With one,
    /// connections are served by a single-threaded runtime (tasks run in the order they were woken) on a thread of
    /// its own, and the control plane runs on the main thread.
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the manifests in one or more directories, reloading on every change.
    Run(RunArgs),
    /// Parse and translate manifests; print each resource's status and every error. Exit 1 on errors.
    Validate(SourceArgs),
    /// Print the IR (what the data plane will do) for a set of manifests, as YAML.
    Translate(SourceArgs),
    /// Run the test application (white, pink, blue, green pages and /healthz).
    Testapp(TestappArgs),
    /// Start four test applications and Portico on the article example, and print what to try.
    Demo(DemoArgs),
    /// CA tools: make a root, a subordinate CA request, sign it, and write the issuer's Secret.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// DNS: the records Portico's DNS server answers, and what the sync to the corporate DNS would change.
    #[command(subcommand)]
    Dns(dns::DnsCommand),
}

/// Where manifests come from and how they are read.
#[derive(Args, Clone)]
struct SourceArgs {
    /// Directory (read recursively) or file of Kubernetes manifests; repeatable.
    #[arg(long = "config", short = 'c', value_name = "DIR", required_unless_present = "kubernetes")]
    config: Vec<PathBuf>,
    /// Read resources from a Kubernetes API server (in-cluster, or --kubeconfig / $KUBECONFIG) instead of files,
    /// and write statuses back.
    #[arg(long)]
    kubernetes: bool,
    /// The kubeconfig for --kubernetes.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Namespace of objects that name none (helm output names none).
    #[arg(long, default_value = "default")]
    default_namespace: String,
    /// Namespace of the Secrets that ClusterIssuers refer to (cert-manager's --cluster-resource-namespace).
    #[arg(long, default_value = "cert-manager")]
    cluster_resource_namespace: String,
    /// Portico's own settings (DNS server and sync), e.g. portico.yaml; see the README.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    #[command(flatten)]
    translate: TranslateArgs,
}

/// Settings of the translation.
#[derive(Args, Clone)]
struct TranslateArgs {
    /// VIP that Ingresses are served on; repeatable.
    #[arg(long = "ingress-address", value_name = "IP", default_values_t = [IpAddr::from([127, 0, 0, 1])])]
    ingress_addresses: Vec<IpAddr>,
    /// Address for Gateways that request none.
    #[arg(long, value_name = "IP")]
    gateway_address: Option<IpAddr>,
    /// Ingresses without a class belong to Portico under this class name.
    #[arg(long, value_name = "NAME")]
    default_ingress_class: Option<String>,
    /// Secret (`namespace/name`) of the default certificate: served by HTTPS listeners without
    /// certificateRefs and Ingress tls entries without a secretName. Issue it with a Certificate, e.g. the
    /// operator's convention `avi-system/router-certs-default`.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    default_certificate: Option<String>,
    /// The Service in front of Portico's replicas: Ingresses, and Gateways that request no address, report its
    /// load-balancer addresses.
    #[arg(long, env = "PORTICO_PUBLISH_SERVICE", value_name = "NAMESPACE/NAME")]
    publish_service: Option<String>,
    /// Addresses for Gateways that request none, one each (IPs or ranges like 192.0.2.10-192.0.2.19): the
    /// edge mode, where Portico runs outside the cluster with routable pod addresses.
    #[arg(long, value_name = "IP|IP-IP", value_delimiter = ',', value_parser = parse_address_range)]
    gateway_address_pool: Vec<Vec<IpAddr>>,
    /// Manage a Service of type LoadBalancer in this namespace for every Gateway that requests no address; the
    /// Gateway is served on the address the cluster's LB provider gives it.
    #[arg(long, value_name = "NAMESPACE")]
    gateway_services_namespace: Option<String>,
    /// Labels of Portico's pods, the selector of those Services (KEY=VALUE, comma-separated).
    #[arg(long, value_name = "KEY=VALUE", value_delimiter = ',', value_parser = parse_label)]
    gateway_service_selector: Vec<(String, String)>,
    /// Listen on the wildcard address of each port rather than on the VIPs (in a pod, where traffic arrives at
    /// the pod's address).
    #[arg(long)]
    listen_any: bool,
}

/// `192.0.2.10` or `192.0.2.10-192.0.2.19` (at most 65,536 addresses).
fn parse_address_range(text: &str) -> Result<Vec<IpAddr>, String> {
    let Some((first, last)) = text.split_once('-') else {
        return text.parse::<IpAddr>().map(|ip| vec![ip]).map_err(|e| format!("{text:?}: {e}"));
    };
    let parse = |s: &str| s.trim().parse::<IpAddr>().map_err(|e| format!("{s:?}: {e}"));
    let (first, last) = (parse(first)?, parse(last)?);
    let (start, end) = match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b))),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b)),
        _ => return Err(format!("{text:?}: both ends must be of the same family")),
    };
    if end < start || end - start >= 65_536 {
        return Err(format!("{text:?}: the range must be ascending and hold at most 65,536 addresses"));
    }
    Ok((start..=end)
        .map(|n| match first {
            IpAddr::V4(_) => IpAddr::from(std::net::Ipv4Addr::from(n as u32)),
            IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(n)),
        })
        .collect())
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

impl TranslateArgs {
    fn options(&self) -> TranslateOptions {
        TranslateOptions {
            ingress_addresses: self.ingress_addresses.clone(),
            default_gateway_address: self.gateway_address,
            default_ingress_class: self.default_ingress_class.clone(),
            default_certificate: self.default_certificate.clone(),
            publish_service: self.publish_service.clone(),
            gateway_address_pool: self.gateway_address_pool.iter().flatten().copied().collect(),
            gateway_services_namespace: self.gateway_services_namespace.clone(),
            gateway_service_selector: self.gateway_service_selector.iter().cloned().collect(),
            listen_any: self.listen_any,
            ..TranslateOptions::default()
        }
    }
}

#[derive(Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Directory for state that must survive restarts (status.json; later: issued certificates).
    #[arg(long, default_value = "./.portico")]
    state_dir: PathBuf,
    /// Admin endpoint (health, metrics, status, config). Keep it on localhost unless it is protected.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// How long to let open requests finish on SIGTERM.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    drain_seconds: u64,
    /// Requests in flight to one pool's backends at most (each holds a backend connection); more wait.
    #[arg(long, default_value_t = portico_proxy::DEFAULT_POOL_REQUEST_LIMIT, value_name = "N")]
    pool_request_limit: usize,
    /// How long a client connection may go without a request while none is in progress; then it is asked to
    /// close (within 1 to 1.5 times this; HTTP/2 gets a GOAWAY), and closed outright half of it later if still
    /// open. Covers clients that send nothing or a head byte by byte, and idle kept-alive connections. Decimals
    /// allowed.
    #[arg(long, default_value_t = portico_proxy::DEFAULT_REQUEST_HEAD_TIMEOUT.as_secs_f64(), value_name = "SECONDS",
          value_parser = positive_seconds)]
    request_head_timeout: f64,
    /// Share listening addresses with other processes (SO_REUSEPORT): replicas on one host's network, or a
    /// new binary started before the old one drains.
    #[arg(long)]
    reuse_port: bool,
    #[command(flatten)]
    kubernetes: KubernetesArgs,
}

/// Settings that only matter with --kubernetes.
#[derive(Args, Clone, Default)]
struct KubernetesArgs {
    /// Issue cert-manager Certificates with Portico's CA and ACME issuers and write their Secrets and status.
    /// Default: on standalone; off on Kubernetes, where cert-manager may own them (Portico then only serves
    /// the Secrets).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    issue_certificates: Option<bool>,
    /// Elect one leader among the replicas (a coordination.k8s.io Lease) to write status, issue certificates
    /// and sync DNS; every replica serves traffic. Off: this replica does all of it.
    #[arg(long, default_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
    leader_elect: bool,
    /// Namespace of the Lease (the release namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// Name of the Lease.
    #[arg(long, default_value = "portico")]
    leader_election_id: String,
    /// Seconds a Lease holds without renewal: the longest failover.
    #[arg(long, default_value = "15", value_name = "SECONDS")]
    lease_duration: u64,
    /// This replica's name in the Lease (default: $POD_NAME or the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

impl KubernetesArgs {
    fn lease(&self) -> portico_provider::lease::LeaseConfig {
        let name = self.identity.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
        });
        portico_provider::lease::LeaseConfig {
            namespace: self.leader_election_namespace.clone(),
            name: self.leader_election_id.clone(),
            // The process id tells a restarted container from its predecessor.
            identity: format!("{name}_{}", std::process::id()),
            lease_duration: Duration::from_secs(self.lease_duration.max(2)),
        }
    }
}

#[derive(Args)]
struct TestappArgs {
    /// Instance name shown on every page.
    #[arg(long, default_value = "testapp")]
    name: String,
    /// HTTP listen address ("off" to disable).
    #[arg(long, default_value = "0.0.0.0:8080")]
    http: String,
    /// HTTPS listen address ("off" to disable).
    #[arg(long, default_value = "0.0.0.0:8443")]
    https: String,
    /// PEM certificate chain for HTTPS (self-generated when absent).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Args)]
struct DemoArgs {
    /// Which flavour of the article to serve: httproute (Gateway API) or ingress.
    #[arg(long, default_value = "httproute", value_parser = ["httproute", "ingress"])]
    flavour: String,
    /// The example folder.
    #[arg(long, default_value = "examples/article")]
    example: PathBuf,
    /// Admin endpoint.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value = "0")]
    seconds: u64,
}

/// mimalloc rather than glibc's malloc. Measured with `bench/run.sh controlplane --routes 10000 --reps 5`, the same
/// code with either allocator (issue 7): update-to-serving 236-241 -> 198-201 ms (median) and RSS after updates
/// 202 -> 189-195 MiB, but the first update after start 189-196 -> 307-324 ms (memory growing for the first time)
/// and RSS serving 119 -> 140 MiB. A proxied request costs the same instructions with either.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps freed memory for 2 s (purge delay, not 10 ms) and commits arena memory as it is used. The controller
/// gives the memory of a replaced configuration back 1 s after changes settle (`mi_collect`); the long delay
/// lets the next change in a burst reuse it instead of faulting in fresh pages, and spares the request path
/// an `madvise` every few hundred requests (purge delay 0 made 84-133 per 10,000 HTTPS requests).
/// The eager-commit setting: with 10,000 routes the RSS after updates went from 229-247 MiB (mimalloc's
/// defaults) to 189-195 MiB with it and purge delay 0 (before objects were shared between snapshots).
/// Set from `main`, the arena setting comes too late for the arena mimalloc opened before it (set by the
/// environment, the same two settings gave 119 MiB serving and 179 MiB after updates). Set while one thread
/// runs; the `MIMALLOC_*` environment variables still win.
///
/// Transparent huge pages stay allowed (mimalloc asks for them with `MADV_HUGEPAGE`). They are why the first
/// update after a start is slow: the heap grows then, and each new 2 MiB page must be found and zeroed by the
/// kernel. Measured with 10,000 routes, `MIMALLOC_ALLOW_THP=0` against the default, in back-to-back runs of
/// `bench/run.sh controlplane --routes 10000 --reps 5`:
/// - the first update took 175 ms instead of 371, and RSS was 119 / 137 MiB (serving / after updates)
///   instead of 137 / 156;
/// - but the later updates took 237-260 ms instead of 195-239, so the median was 251 ms instead of 216.
///
/// Measured again once memory was kept across updates (`bench/run.sh controlplane --routes 10000 --reps 5`, then
/// `bench/run.sh http1 https --reps 3 --duration 5`, back to back): updates 149-200 ms without THP against
/// 123-303 ms with them (medians 177 and 171), but HTTP/1.1 at 0.84 of nginx's requests/s without against 0.98
/// with. They stay allowed.
///
/// Through the API server (`bench/run.sh kube --routes 10000`), RSS serving / right after updates / 2 s later
/// was 183 / 204 / 130 MiB with them against 149 / 166 / 113 without; once the IR's virtual hosts stopped keeping
/// the room of their staging vectors, 154 / 193 / 122 against 128 / 140 / 103 (one run each); with the route
/// statuses' vectors sized too (heaptrack: 122 -> 96 MB of heap at the peak), 143 / 161 / 96 with them, under
/// the 200 MiB bar.
fn tune_allocator() {
    // mimalloc 3's option numbers (libmimalloc-sys 0.1 does not name these two).
    const OPTIONS: [(libmimalloc_sys::mi_option_t, &str, std::ffi::c_long); 2] =
        [(4, "MIMALLOC_ARENA_EAGER_COMMIT", 0), (15, "MIMALLOC_PURGE_DELAY", 2000)];
    for (option, variable, value) in OPTIONS {
        if std::env::var_os(variable).is_none() {
            // SAFETY: a store into mimalloc's option table; not thread-safe, and no other thread runs yet.
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
}

/// A number of seconds above zero, at most a day.
fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds <= 86_400.0 => Ok(seconds),
        Ok(_) => Err("must be more than 0 and at most 86400 seconds".into()),
        Err(error) => Err(error.to_string()),
    }
}

/// The tokio runtime and its number of worker threads: `workers`, else one per CPU this process may use.
///
/// For one, a current-thread runtime rather than a work-stealing one of one worker. Same instructions per request
/// (`bench/callgrind.sh`, HTTP/1.1 and HTTP/2), but the work-stealing scheduler runs a task just spawned before
/// the tasks already waiting (its LIFO slot): hyper spawns a task per HTTP/2 stream, and with 10 connections x
/// 100 streams (`bench/run.sh h2`, Portico on one CPU) new streams overtook those whose response had come back.
/// More requests were in flight to the backend at once (250 new backend connections per 50,000 requests,
/// against none), and the p99 was 157-174 ms against 41-50 ms, at 25,200-26,700 requests/s against
/// 33,300-34,800.
fn runtime(workers: Option<u16>) -> std::io::Result<(tokio::runtime::Runtime, usize)> {
    let workers = workers.map_or_else(|| std::thread::available_parallelism().map_or(1, usize::from), usize::from);
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    Ok((builder.enable_all().build()?, workers))
}

/// With one worker, `portico run` serves connections on a current-thread runtime of a thread of its own, and runs
/// the control plane on the main thread's. Translating a large configuration holds its thread for 100 ms or more
/// (10,000 routes); on one runtime, requests waited for it (244 ms at worst during updates, bench scenario 8),
/// where with two threads the kernel shares the CPU between them, as it did between the main thread and the one
/// worker of a work-stealing runtime (12-14 ms).
struct ServingThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServingThread {
    fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("portico-serve".into()).spawn(move || {
            let _ = runtime.block_on(stopped);
        })?;
        Ok(ServingThread { handle, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for ServingThread {
    /// Stops the runtime (its tasks are dropped) and waits for the thread.
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Targets that log once per DNS query or TLS handshake, at the level they are kept to unless `RUST_LOG` names
/// them: hickory's server logs every query at info (and a benign warning per DNSSEC-OK query); rustls warns about
/// each client's odd ClientHello (an IP address as SNI, as wrk, curl to an address and many clients send). One
/// line per query or handshake is a cost any client can impose (in the benchmark of new TLS connections, a log
/// line formatted and written for each), and floods the logs.
const NOISY_TARGETS: [(&str, &str); 2] = [("hickory_server", "error"), ("rustls", "error")];

/// The log filter's directives: `RUST_LOG` (else `info`), with [`NOISY_TARGETS`] kept quiet unless it names them.
fn log_directives(rust_log: Option<&str>) -> String {
    let given = rust_log.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("info");
    let mut directives = given.to_string();
    for (target, level) in NOISY_TARGETS {
        let named = given.split(',').any(|directive| {
            let directive_target = directive.split(['=', '[']).next().unwrap_or("").trim();
            directive_target == target || directive_target.starts_with(&format!("{target}::"))
        });
        if !named {
            directives.push_str(&format!(",{target}={level}"));
        }
    }
    directives
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let directives = log_directives(std::env::var("RUST_LOG").ok().as_deref());
    let filter = tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|error| {
        eprintln!("RUST_LOG {directives:?}: {error}; logging at info");
        tracing_subscriber::EnvFilter::new(log_directives(None))
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    raise_open_files_limit();
    let serves = matches!(cli.command, Command::Run(_) | Command::Demo(_));
    let started = runtime(cli.workers).and_then(|(runtime, workers)| {
        let serving_thread = if serves && workers == 1 { Some(ServingThread::start()?) } else { None };
        Ok((runtime, workers, serving_thread))
    });
    let (runtime, serving_thread) = match started {
        Ok((runtime, workers, serving_thread)) => {
            if serves {
                tracing::info!("runtime started: {workers} worker thread{}", if workers == 1 { "" } else { "s" });
            }
            (runtime, serving_thread)
        }
        Err(error) => {
            eprintln!("portico: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let serving = serving_thread.as_ref().map_or_else(|| runtime.handle().clone(), |thread| thread.handle.clone());
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run(args, None, serving).await.map(|()| true),
            Command::Validate(args) => validate(&args),
            Command::Translate(args) => translate_command(&args).map(|()| true),
            Command::Testapp(args) => testapp(args).await.map(|()| true),
            Command::Demo(args) => demo::run(args, serving).await.map(|()| true),
            Command::Ca(command) => ca::run(command).map(|()| true),
            Command::Dns(command) => dns::command(command).await.map(|()| true),
        }
    });
    drop(serving_thread);
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(error) => {
            eprintln!("portico: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit of open files to the hard limit: a proxy holds two descriptors per request in flight
/// (client and backend), and the usual soft limit of 1,024 would refuse connections long before the machine
/// must (the bench's 9,000 connections failed with EMFILE). Go's runtime and nginx's `worker_rlimit_nofile` do
/// the same.
fn raise_open_files_limit() {
    #[cfg(target_os = "linux")]
    // SAFETY: getrlimit/setrlimit only read and write the struct passed; no memory is shared.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn load_once(args: &SourceArgs) -> anyhow::Result<Loaded> {
    let mut provider = FileProvider::new(args.config.clone(), args.default_namespace.clone());
    Ok(provider.load()?)
}

/// `portico validate`: statuses and errors; `Ok(false)` when there are errors.
fn validate(args: &SourceArgs) -> anyhow::Result<bool> {
    let mut loaded = load_once(args)?;
    // Issuers and Certificates are checked by issuing in memory (nothing is written).
    let mut certs = certs::CertManager::new(None, args.cluster_resource_namespace.clone());
    certs.reconcile(&mut loaded.snapshot, std::time::SystemTime::now());
    let mut translation = translate(&loaded.snapshot, &args.options()?);
    translation.statuses.extend(certs.statuses().iter().map(|(k, v)| (k.clone(), v.clone())));
    translation.diagnostics.extend(certs.errors().iter().cloned());
    for (resource, status) in &translation.statuses {
        let summary: Vec<String> = status
            .all_conditions()
            .iter()
            .filter(|c| {
                matches!(
                    c.kind.as_str(),
                    "Accepted" | "ResolvedRefs" | "Programmed" | "Conflicted" | "PartiallyInvalid" | "Ready"
                )
            })
            .map(|c| format!("{}={}({})", c.kind, c.status, c.reason))
            .collect();
        let mut summary = summary;
        summary.dedup();
        println!("{resource}: {}", if summary.is_empty() { "served".to_string() } else { summary.join(" ") });
    }
    let mut errors = 0;
    for diagnostic in loaded.diagnostics.iter().chain(translation.diagnostics.iter()) {
        if diagnostic.severity == Severity::Error {
            errors += 1;
        }
        println!("{diagnostic}");
    }
    let ignored: usize = loaded.ignored.values().sum();
    println!(
        "{} file(s), {} object(s) read, {ignored} of other kinds ignored; {errors} error(s)",
        loaded.files,
        loaded.snapshot.len()
    );
    Ok(errors == 0)
}

/// `portico translate`: the IR as YAML.
fn translate_command(args: &SourceArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let loaded = load_once(args)?;
    let read = started.elapsed();
    for diagnostic in &loaded.diagnostics {
        eprintln!("{diagnostic}");
    }
    let translation = translate(&loaded.snapshot, &args.options()?);
    let translated = started.elapsed();
    for diagnostic in &translation.diagnostics {
        eprintln!("{diagnostic}");
    }
    let value = serde_json::to_value(&translation.ir)?;
    print!("{}", serde_saphyr::to_string(&value).context("rendering the IR as YAML")?);
    tracing::debug!(?read, translate = ?(translated - read), render = ?(started.elapsed() - translated), "timings");
    Ok(())
}

/// How long a burst of changes may last before it is applied: long enough for a deploy tool's write and rename
/// (or a watch event burst) to arrive together, short against the update-to-serving budget (issue 7: 200 ms).
const WATCH_DEBOUNCE: Duration = Duration::from_millis(20);

/// `portico run`: serve until SIGTERM or Ctrl-C (or until `stop` resolves, for the demo). The control plane runs
/// on this task's runtime; connections, DNS queries and health checks on `serving`'s.
async fn run(
    args: RunArgs,
    stop: Option<tokio::sync::oneshot::Receiver<()>>,
    serving: tokio::runtime::Handle,
) -> anyhow::Result<()> {
    // DNS (--config-file): the authoritative server and the sync, fed by the controller on every apply.
    let config_file = config_file::ConfigFile::load(args.source.config_file.as_deref())?;
    let dns = match config_file.dns_config()? {
        // Started there, its tasks run there.
        Some(settings) => Some(
            serving
                .spawn(async move { dns::DnsRuntime::start(&settings).await })
                .await
                .context("the DNS server's start failed")??,
        ),
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let proxy = Arc::new(Proxy::new(metrics.clone(), serving)?);
    proxy.set_reuse_port(args.reuse_port);
    proxy.set_pool_request_limit(args.pool_request_limit);
    proxy.set_request_head_timeout(Duration::from_secs_f64(args.request_head_timeout));
    let view = Arc::new(ArcSwap::from_pointee(controller::View { dns, ..controller::View::default() }));
    let admin = admin::serve(args.admin, view.clone(), metrics.clone(), proxy.clone()).await?;
    tracing::info!(%admin, "admin endpoint");
    let options = config_file.translate_options(args.source.translate.options());
    let gateway_services_namespace = options.gateway_services_namespace.clone();
    if gateway_services_namespace.is_some() && options.gateway_service_selector.is_empty() {
        // A Service without a selector has no endpoints: the Gateway would get an address that leads nowhere.
        anyhow::bail!("--gateway-services-namespace needs --gateway-service-selector (the labels of Portico's pods)");
    }
    // Standalone, this process does everything; on Kubernetes, status, certificates and DNS sync are the
    // leader's (every replica serves traffic), and issuing is opt-in so as not to fight cert-manager.
    let mut elector = None;
    let (mut updates, status_writer, mut leading) = if args.source.kubernetes {
        let provider =
            portico_provider::kubernetes::KubernetesProvider::connect(args.source.kubeconfig.as_deref()).await?;
        let mut writer = provider.status_writer(&options.gateway_controller);
        let leading = if args.kubernetes.leader_elect {
            let started = portico_provider::lease::LeaderElector::start(provider.client(), args.kubernetes.lease());
            let leading = started.subscribe();
            writer.follow_leadership(leading.clone());
            elector = Some(started);
            leading
        } else {
            tokio::sync::watch::channel(true).1
        };
        (provider.watch(WATCH_DEBOUNCE), Some(writer), leading)
    } else {
        let provider = FileProvider::new(args.source.config.clone(), args.source.default_namespace.clone());
        (provider.watch(WATCH_DEBOUNCE)?, None, tokio::sync::watch::channel(true).1)
    };
    let issue_certificates = args.kubernetes.issue_certificates.unwrap_or(!args.source.kubernetes);
    let (acme, mut acme_outcomes) = certs::AcmeRuntime::new();
    let responder = acme.responder.clone();
    proxy.set_challenge_responder(Box::new(move |path| responder.respond(path)));
    let mut controller = controller::Controller::new(
        proxy.clone(),
        options,
        view,
        Some(args.state_dir.clone()),
        args.source.cluster_resource_namespace.clone(),
        acme,
    );
    let set_leading = |controller: &mut controller::Controller, leads: bool| {
        controller.set_issuing(issue_certificates && leads);
        if let Some(dns) = &controller.view().dns {
            dns.set_leading(leads);
        }
    };
    set_leading(&mut controller, *leading.borrow());
    let write_back = status_writer.map(|writer| spawn_write_back(writer, gateway_services_namespace));
    // Bumped when this replica becomes the leader again: the writer then writes every status afresh.
    let mut leadership_epoch = 0u64;
    let shutdown = shutdown_signal(stop);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            update = updates.recv() => match update {
                Some(Ok(loaded)) => controller.apply(loaded).await,
                // The directory vanished or became unreadable: keep serving the last configuration.
                Some(Err(error)) => {
                    tracing::error!(%error, "cannot read the configuration; serving the last one");
                    continue;
                }
                None => break,
            },
            Some(outcome) = acme_outcomes.recv() => controller.acme_done(outcome).await,
            // A certificate is due for renewal (or a failed issuance for another try).
            () = renewal_timer(controller.next_renewal()) => controller.renew().await,
            Ok(()) = leading.changed() => {
                let leads = *leading.borrow_and_update();
                set_leading(&mut controller, leads);
                // A new leader writes every status afresh: it cannot know what the last one left.
                leadership_epoch += 1;
                controller.renew().await;
            }
            () = &mut shutdown => break,
        }
        // On Kubernetes the leader writes statuses (only those that changed), issued Secrets and Gateway
        // Services back, in a task of their own: the next change is served without waiting for them.
        if let (Some(write_back), true) = (&write_back, *leading.borrow())
            && let Some(loaded) = controller.last_loaded()
        {
            write_back.send_replace(Some(Arc::new(WriteBack {
                statuses: controller.status(),
                loaded,
                secrets: controller.issued_secrets(),
                services: controller.gateway_services().to_vec(),
                leadership_epoch,
            })));
        }
    }
    if let Some(elector) = elector {
        elector.release().await;
    }
    tracing::info!("draining");
    proxy.shutdown(Duration::from_secs(args.drain_seconds)).await;
    tracing::info!("stopped");
    Ok(())
}

/// What the leader writes back to the API server after an apply.
struct WriteBack {
    statuses: Arc<controller::StatusDocument>,
    loaded: Arc<Loaded>,
    secrets: Vec<portico_resources::core::Secret>,
    services: Vec<portico_resources::core::Service>,
    /// Changes when this replica leads again.
    leadership_epoch: u64,
}

/// The task that writes Secrets, Gateway Services and statuses back. It takes the latest [`WriteBack`] only:
/// at start with 10,000 routes, the first run of status patches takes a minute, and a change made meanwhile
/// must not wait for it (it did, when the control loop wrote them itself). The writer patches only what
/// differs from what it last wrote, so skipping intermediate versions loses nothing. Secrets and Services go
/// first: they are few, and a Gateway's Service (its address) waited behind every route's status.
fn spawn_write_back(
    mut writer: portico_provider::kubernetes::StatusWriter,
    services_namespace: Option<String>,
) -> tokio::sync::watch::Sender<Option<Arc<WriteBack>>> {
    let (sender, mut latest) = tokio::sync::watch::channel(None::<Arc<WriteBack>>);
    tokio::spawn(async move {
        let mut epoch = 0;
        while latest.changed().await.is_ok() {
            let Some(job) = latest.borrow_and_update().clone() else { continue };
            if job.leadership_epoch != epoch {
                writer.reset();
                epoch = job.leadership_epoch;
            }
            let snapshot = &job.loaded.snapshot;
            for error in writer.write_secrets(&job.secrets, snapshot).await {
                tracing::warn!(%error);
            }
            if let Some(namespace) = &services_namespace {
                for error in writer.sync_gateway_services(&job.services, &job.loaded, namespace).await {
                    tracing::warn!(%error);
                }
            }
            for error in writer.write(&job.statuses.statuses, snapshot).await {
                tracing::warn!(%error);
            }
        }
    });
    sender
}

/// Sleeps until `due`; never wakes when nothing is due. Capped so a clock change is noticed within a minute.
async fn renewal_timer(due: Option<Duration>) {
    match due {
        Some(due) => tokio::time::sleep(due.min(Duration::from_secs(60)) + Duration::from_millis(50)).await,
        None => std::future::pending().await,
    }
}

async fn shutdown_signal(stop: Option<tokio::sync::oneshot::Receiver<()>>) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let stop = async {
        match stop {
            Some(stop) => {
                let _ = stop.await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
        () = stop => {},
    }
}

fn listen_address(text: &str, flag: &str) -> anyhow::Result<Option<SocketAddr>> {
    if text == "off" {
        return Ok(None);
    }
    text.parse().map(Some).with_context(|| format!("--{flag} {text:?} is not an address like 0.0.0.0:8080 or \"off\""))
}

async fn testapp(args: TestappArgs) -> anyhow::Result<()> {
    let config = portico_testapp::TestAppConfig {
        name: args.name,
        http: listen_address(&args.http, "http")?,
        https: listen_address(&args.https, "https")?,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
    };
    let app = portico_testapp::start(config).await?;
    if let Some(a) = app.http_addr {
        eprintln!("testapp: http://{a}/");
    }
    if let Some(a) = app.https_addr {
        eprintln!("testapp: https://{a}/");
    }
    shutdown_signal(None).await;
    app.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::log_directives;

    #[test]
    fn per_handshake_and_per_query_lines_stay_quiet_unless_rust_log_names_their_targets() {
        assert_eq!(log_directives(None), "info,hickory_server=error,rustls=error");
        assert_eq!(log_directives(Some(" ")), "info,hickory_server=error,rustls=error");
        // RUST_LOG=info (as the benchmark sets it) or debug does not bring back a warning per handshake.
        assert_eq!(log_directives(Some("debug")), "debug,hickory_server=error,rustls=error");
        assert_eq!(log_directives(Some("warn,rustls=debug")), "warn,rustls=debug,hickory_server=error");
        assert_eq!(
            log_directives(Some("rustls::msgs::handshake=warn,hickory_server[query]=info")),
            "rustls::msgs::handshake=warn,hickory_server[query]=info"
        );
        // A target that only begins like a noisy one is not taken for it.
        assert_eq!(log_directives(Some("rustlsx=debug")), "rustlsx=debug,hickory_server=error,rustls=error");
    }
}
