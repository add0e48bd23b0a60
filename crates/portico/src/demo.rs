//! `portico demo`: the article's deployment on this machine in one command. Four test applications stand in
//! for the team's nginx pods (ports from `examples/article/README.md`), and Portico serves one flavour.

use crate::{DemoArgs, KubernetesArgs, RunArgs, SourceArgs, TranslateArgs};
use anyhow::Context as _;
use std::net::{IpAddr, SocketAddr};

/// Colour, HTTP port, HTTPS port: as in the example's EndpointSlices.
const BACKENDS: [(&str, u16, u16); 4] =
    [("root", 18080, 18443), ("pink", 18081, 18444), ("blue", 18082, 18445), ("green", 18083, 18446)];

pub async fn run(args: DemoArgs, serving: tokio::runtime::Handle) -> anyhow::Result<()> {
    let tls = args.example.join("tls");
    if !tls.join("backend-chain.crt").exists() {
        anyhow::bail!(
            "{} has no tls/backend-chain.crt: run the demo from the repository's root, or pass --example",
            args.example.display()
        );
    }
    let mut apps = Vec::new();
    for (colour, http, https) in BACKENDS {
        let config = portico_testapp::TestAppConfig {
            name: format!("{colour}-1"),
            http: Some(SocketAddr::from(([127, 0, 0, 1], http))),
            https: Some(SocketAddr::from(([127, 0, 0, 1], https))),
            tls_cert: Some(tls.join("backend-chain.crt")),
            tls_key: Some(tls.join("backend.key")),
        };
        apps.push(
            portico_testapp::start(config).await.with_context(|| format!("starting the {colour} test application"))?,
        );
    }
    let vip: IpAddr = if args.flavour == "ingress" { [127, 0, 0, 11].into() } else { [127, 0, 0, 10].into() };
    let run_args = RunArgs {
        source: SourceArgs {
            config: vec![args.example.join("common"), args.example.join(&args.flavour)],
            default_namespace: "dev".into(),
            kubernetes: false,
            kubeconfig: None,
            cluster_resource_namespace: "cert-manager".into(),
            config_file: None,
            translate: TranslateArgs {
                ingress_addresses: vec![[127, 0, 0, 11].into()],
                gateway_address: None,
                default_ingress_class: None,
                default_certificate: None,
                publish_service: None,
                gateway_address_pool: Vec::new(),
                gateway_services_namespace: None,
                gateway_service_selector: Vec::new(),
                listen_any: false,
            },
        },
        state_dir: ".portico".into(),
        admin: args.admin,
        drain_seconds: 5,
        reuse_port: false,
        pool_request_limit: portico_proxy::DEFAULT_POOL_REQUEST_LIMIT,
        request_head_timeout: portico_proxy::DEFAULT_REQUEST_HEAD_TIMEOUT.as_secs_f64(),
        kubernetes: KubernetesArgs::default(),
    };
    let ca = tls.join("root-ca.crt");
    println!("Portico demo: the article's {} flavour on VIP {vip}", args.flavour);
    println!("Backends: test applications on 127.0.0.1:18080-18083 (HTTP) and :18443-18446 (HTTPS)");
    println!("Try:");
    for host in ["app01-lab.avi.aclab.uk", "application01.aclab.uk"] {
        for path in ["/", "/pink", "/blue", "/green"] {
            println!("  curl --cacert {} --resolve {host}:443:{vip} https://{host}{path}", ca.display());
        }
    }
    println!("Admin: http://{}/api/status  http://{}/metrics", args.admin, args.admin);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    // Without --seconds the sender lives until the demo ends, so only Ctrl-C or SIGTERM stops it.
    let _keep_running = if args.seconds > 0 {
        let seconds = args.seconds;
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
            let _ = stop_tx.send(());
        });
        None
    } else {
        Some(stop_tx)
    };
    let result = crate::run(run_args, Some(stop_rx), serving).await;
    for app in apps {
        app.shutdown().await;
    }
    result
}
