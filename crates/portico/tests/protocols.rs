//! Protocols through Portico: WebSocket upgrades, and gRPC (unary and server streaming) behind a GRPCRoute,
//! with clients over h2c and over TLS. The gRPC backend is tonic's standard health service (real gRPC, no
//! generated test code), whose Watch method streams status changes.

mod common;

use common::{Backends, Portico, http_gateway, repo, service, tls_config};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio_tungstenite::tungstenite::Message;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_portico() {
    let backends = Backends::start(&["echo"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = http_gateway("127.0.0.74", 8080)
        + &service("echo", backends.http_port(0))
        + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: ws}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [ws.example]\n  rules: [{backendRefs: [{name: echo, port: 80}]}]\n";
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    // The single-threaded runtime (one CPU) relays the upgraded connection too.
    let _portico = Portico::start(&[dir.path()], 19974, &["--workers", "1"]);
    let stream = tokio::net::TcpStream::connect("127.0.0.74:8080").await.expect("connect");
    let (mut socket, response) = tokio_tungstenite::client_async("ws://ws.example/ws", stream)
        .await
        .expect("WebSocket handshake through Portico");
    assert_eq!(response.status(), 101);
    for i in 0..3 {
        socket.send(Message::text(format!("hello {i}"))).await.expect("send");
        let reply = socket.next().await.expect("a reply").expect("frame");
        assert_eq!(reply.into_text().expect("text").as_str(), format!("echo: hello {i}"));
    }
    socket.close(None).await.expect("close");
}

async fn grpc_backend() -> (tonic_health::server::HealthReporter, SocketAddr) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("portico.Echo", ServingStatus::Serving).await;
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let address = incoming.local_addr().expect("address");
    tokio::spawn(tonic::transport::Server::builder().add_service(health).serve_with_incoming(incoming));
    (reporter, address)
}

async fn channel(uri: &'static str, vip: SocketAddr, tls_host: Option<&'static str>) -> tonic::transport::Channel {
    let connector = tower::service_fn(move |_: http::Uri| async move {
        let tcp = tokio::net::TcpStream::connect(vip).await?;
        match tls_host {
            None => Ok::<_, std::io::Error>(TokioIo::new(Box::new(tcp) as Box<dyn Io>)),
            Some(host) => {
                let config = tls_config(&repo().join("examples/article/tls/root-ca.crt"), true);
                let name = rustls::pki_types::ServerName::try_from(host).map_err(std::io::Error::other)?;
                let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
                Ok(TokioIo::new(Box::new(tls) as Box<dyn Io>))
            }
        }
    });
    tonic::transport::Endpoint::from_static(uri).connect_with_connector(connector).await.expect("gRPC channel")
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn unary_and_streaming(channel: tonic::transport::Channel, reporter: &tonic_health::server::HealthReporter) {
    let mut client = HealthClient::new(channel);
    let answer = client.check(HealthCheckRequest { service: "portico.Echo".into() }).await.expect("unary call");
    assert_eq!(answer.into_inner().status, 1, "SERVING");
    let mut stream =
        client.watch(HealthCheckRequest { service: "portico.Echo".into() }).await.expect("stream").into_inner();
    let first = stream.message().await.expect("message").expect("first update");
    assert_eq!(first.status, 1, "SERVING");
    reporter.set_service_status("portico.Echo", ServingStatus::NotServing).await;
    let second = stream.message().await.expect("message").expect("second update");
    assert_eq!(second.status, 2, "NOT_SERVING arrives on the open stream");
    reporter.set_service_status("portico.Echo", ServingStatus::Serving).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_over_h2c_and_tls() {
    let (reporter, backend) = grpc_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(repo().join("examples/article/common/tls-secret.yaml"), dir.path().join("secret.yaml"))
        .expect("copy");
    let config = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: portico}}\nspec: {{controllerName: portico.dev/gateway-controller}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  gatewayClassName: portico\n  addresses: [{{type: IPAddress, value: 127.0.0.73}}]\n  listeners:\n  - {{name: h2c, port: 8080, protocol: HTTP}}\n  - {{name: tls, port: 443, protocol: HTTPS, tls: {{certificateRefs: [{{name: app01-aclab-nginx-tls-secret}}]}}}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: health}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [grpc.example, app01-lab.avi.aclab.uk]\n  rules:\n  - matches: [{{method: {{service: grpc.health.v1.Health}}}}]\n    backendRefs: [{{name: grpc, port: 80}}]\n{}",
        service("grpc", backend.port())
    );
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    // HTTP/2 streams (a task each) on the single-threaded runtime that Portico picks on one CPU.
    let _portico = Portico::start(&[dir.path()], 19973, &["--default-namespace", "dev", "--workers", "1"]);

    let h2c = channel("http://grpc.example:8080", "127.0.0.73:8080".parse().expect("vip"), None).await;
    unary_and_streaming(h2c, &reporter).await;
    let tls = channel(
        "https://app01-lab.avi.aclab.uk",
        "127.0.0.73:443".parse().expect("vip"),
        Some("app01-lab.avi.aclab.uk"),
    )
    .await;
    unary_and_streaming(tls, &reporter).await;

    // A host no GRPCRoute serves: the gRPC client gets UNIMPLEMENTED, not an HTTP error it cannot read.
    let other = channel("http://other.example:8080", "127.0.0.73:8080".parse().expect("vip"), None).await;
    let error =
        HealthClient::new(other).check(HealthCheckRequest { service: String::new() }).await.expect_err("no route");
    assert_eq!(error.code(), tonic::Code::Unimplemented, "{error:?}");
}
