//! Routing behaviour through a real `portico` process: weights, matches and filters, with cases taken from
//! the Gateway API documentation's examples. The test applications echo what they received
//! (`x-testapp-path`, `x-testapp-host`, `x-testapp-echo-*`), so rewrites and header edits are observable.

mod common;

use common::{Backends, Portico, get, http_gateway, request, service};
use std::net::SocketAddr;

fn route(name: &str, body: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\nspec:\n  parentRefs: [{{name: gw}}]\n{body}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_backends_split_traffic_in_proportion() {
    let backends = Backends::start(&["heavy", "light"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = http_gateway("127.0.0.41", 8080)
        + &service("heavy", backends.http_port(0))
        + &service("light", backends.http_port(1))
        + &route(
            "split",
            "  hostnames: [split.example]\n  rules:\n  - backendRefs:\n    - {name: heavy, port: 80, weight: 80}\n    - {name: light, port: 80, weight: 20}\n",
        );
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    let _portico = Portico::start(&[dir.path()], 19941, &[]);
    let vip: SocketAddr = "127.0.0.41:8080".parse().expect("vip");
    let total = 1000;
    let mut light = 0;
    for _ in 0..total {
        let answer = get(vip, "split.example", "/").await;
        assert_eq!(answer.status, 200);
        if answer.header("x-testapp-instance") == "light" {
            light += 1;
        }
    }
    // Expected 200 of 1000 (binomial, standard deviation about 12.6); 140..=260 is more than 4.5 deviations.
    assert!((140..=260).contains(&light), "light backend got {light} of {total}, expected about 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matches_and_filters_behave_as_the_spec_examples() {
    let backends = Backends::start(&["default", "canary", "whale", "poster"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = http_gateway("127.0.0.42", 8080);
    for (i, name) in ["default", "canary", "whale", "poster"].iter().enumerate() {
        config += &service(name, backends.http_port(i));
    }
    // From the Gateway API "HTTP routing" guide: header, query and method matches.
    config += &route(
        "matches",
        "  hostnames: [match.example]\n  rules:\n  - backendRefs: [{name: default, port: 80}]\n  - matches:\n    - headers: [{name: env, value: canary}]\n    backendRefs: [{name: canary, port: 80}]\n  - matches:\n    - queryParams: [{name: animal, value: whale}]\n    backendRefs: [{name: whale, port: 80}]\n  - matches:\n    - method: POST\n      path: {type: PathPrefix, value: /form}\n    backendRefs: [{name: poster, port: 80}]\n  - matches:\n    - path: {type: RegularExpression, value: \"/v[0-9]+/items\"}\n    backendRefs: [{name: canary, port: 80}]\n",
    );
    // From "HTTP redirects and rewrites" and "HTTP header modifiers".
    config += &route(
        "filters",
        "  hostnames: [filter.example]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /old}}]\n    filters:\n    - type: RequestRedirect\n      requestRedirect: {scheme: https, statusCode: 301}\n  - matches: [{path: {type: PathPrefix, value: /paprika}}]\n    filters:\n    - type: RequestRedirect\n      requestRedirect: {hostname: spices.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /fennel}}\n  - matches: [{path: {type: PathPrefix, value: /prefix/one}}]\n    filters:\n    - type: URLRewrite\n      urlRewrite: {hostname: elsewhere.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /pink}}\n    backendRefs: [{name: default, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /headers}}]\n    filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier:\n        set: [{name: x-echo-set, value: set-by-route}]\n        add: [{name: x-echo-add, value: added}]\n        remove: [x-echo-remove]\n    - type: ResponseHeaderModifier\n      responseHeaderModifier:\n        add: [{name: x-header-add, value: response-added}]\n        remove: [x-testapp-method]\n    backendRefs: [{name: default, port: 80}]\n",
    );
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    let _portico = Portico::start(&[dir.path()], 19942, &[]);
    let vip: SocketAddr = "127.0.0.42:8080".parse().expect("vip");
    let instance = |a: &common::Answer| a.header("x-testapp-instance").to_string();

    assert_eq!(instance(&get(vip, "match.example", "/").await), "default");
    let canary = request(vip, "match.example", "GET", "/", &[("env", "canary")], None).await.expect("request");
    assert_eq!(instance(&canary), "canary");
    assert_eq!(instance(&get(vip, "match.example", "/?animal=whale").await), "whale");
    assert_eq!(instance(&get(vip, "match.example", "/?animal=dolphin").await), "default");
    let post = request(vip, "match.example", "POST", "/form", &[], None).await.expect("request");
    assert_eq!(instance(&post), "poster");
    assert_eq!(instance(&get(vip, "match.example", "/form").await), "default", "GET does not match the POST rule");
    assert_eq!(instance(&get(vip, "match.example", "/v2/items").await), "canary");
    assert_eq!(instance(&get(vip, "match.example", "/v2/items/x").await), "default", "a regex matches the whole path");

    let upgrade = get(vip, "filter.example", "/old/page?x=1").await;
    assert_eq!(upgrade.status, 301);
    assert_eq!(upgrade.header("location"), "https://filter.example/old/page?x=1");
    let spice = get(vip, "filter.example", "/paprika/smoked").await;
    assert_eq!(spice.status, 302);
    assert_eq!(spice.header("location"), "http://spices.example:8080/fennel/smoked");

    let rewritten = get(vip, "filter.example", "/prefix/one/two").await;
    assert_eq!(rewritten.status, 200, "the test application serves /pink/two");
    assert_eq!(rewritten.header("x-testapp-path"), "/pink/two");
    assert_eq!(rewritten.header("x-testapp-host"), "elsewhere.example");

    let edited =
        request(vip, "filter.example", "GET", "/headers", &[("x-echo-set", "client"), ("x-echo-remove", "gone")], None)
            .await
            .expect("request");
    assert_eq!(edited.header("x-testapp-echo-set"), "set-by-route");
    assert_eq!(edited.header("x-testapp-echo-add"), "added");
    assert_eq!(edited.header("x-testapp-echo-remove"), "", "removed before reaching the backend");
    assert_eq!(edited.header("x-header-add"), "response-added");
    assert_eq!(edited.header("x-testapp-method"), "", "removed from the response");
    assert!(edited.header("x-testapp-request-headers").contains("x-forwarded-for"), "X-Forwarded-For added");

    // Unmatched host and path: 404 with a short body.
    let unknown = get(vip, "nobody.example", "/").await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.body.len() < 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_answer_502_and_503() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port where connections are refused, and a Service without endpoints.
    let (_closed_socket, closed) = common::refused_port();
    let config = http_gateway("127.0.0.43", 8080)
        + &service("down", closed)
        + "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: empty\nspec:\n  ports: [{port: 80}]\n"
        + &route(
            "failing",
            "  hostnames: [fail.example]\n  rules:\n  - matches: [{path: {value: /down}}]\n    backendRefs: [{name: down, port: 80}]\n  - matches: [{path: {value: /empty}}]\n    backendRefs: [{name: empty, port: 80}]\n  - matches: [{path: {value: /missing}}]\n    backendRefs: [{name: missing, port: 80}]\n",
        );
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    let portico = Portico::start(&[dir.path()], 19943, &[]);
    let vip: SocketAddr = "127.0.0.43:8080".parse().expect("vip");
    assert_eq!(get(vip, "fail.example", "/down").await.status, 502);
    assert_eq!(get(vip, "fail.example", "/empty").await.status, 503);
    assert_eq!(get(vip, "fail.example", "/missing").await.status, 500, "the spec's answer for an invalid backendRef");
    let metrics = portico.admin_get("/metrics");
    assert!(
        metrics.contains("portico_upstream_errors_total{pool=\"default/down:80\",kind=\"connect\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("status=\"503\""), "{metrics}");
    let status = portico.admin_get("/api/status");
    assert!(status.contains("BackendNotFound"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_get_a_copy_and_cors_answers_preflights() {
    let backends = Backends::start(&["main", "shadow"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = http_gateway("127.0.0.44", 8080)
        + &service("main", backends.http_port(0))
        + &service("shadow", backends.http_port(1))
        + &route(
            "mirrored",
            "  hostnames: [mirror.example]\n  rules:\n  - filters:\n    - type: RequestMirror\n      requestMirror: {backendRef: {name: shadow, port: 80}}\n    - type: CORS\n      cors:\n        allowOrigins: [\"https://*.app.example\"]\n        allowMethods: [GET, PUT]\n        allowHeaders: [x-token]\n        exposeHeaders: [x-testapp-instance]\n        maxAge: 600\n    backendRefs: [{name: main, port: 80}]\n",
        );
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    let portico = Portico::start(&[dir.path()], 19944, &[]);
    let vip: SocketAddr = "127.0.0.44:8080".parse().expect("vip");

    for _ in 0..5 {
        let answer = get(vip, "mirror.example", "/blue").await;
        assert_eq!(answer.header("x-testapp-instance"), "main", "the client is answered by the main backend");
    }
    // The shadow backend received copies: Portico's metrics count its requests.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let metrics = portico.admin_get("/metrics");
        let shadow = metrics
            .lines()
            .find(|l| l.starts_with("portico_endpoint_requests_total") && l.contains("default/shadow:80"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if shadow >= 5 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the mirror saw {shadow} of 5 requests:\n{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let preflight = request(
        vip,
        "mirror.example",
        "OPTIONS",
        "/blue",
        &[("origin", "https://web.app.example"), ("access-control-request-method", "PUT")],
        None,
    )
    .await
    .expect("preflight");
    assert_eq!(preflight.status, 200);
    assert_eq!(preflight.header("access-control-allow-origin"), "https://web.app.example");
    assert_eq!(preflight.header("access-control-allow-methods"), "GET, PUT");
    assert_eq!(preflight.header("access-control-max-age"), "600");
    assert_eq!(preflight.header("x-testapp-instance"), "", "a preflight is answered by Portico");
    let actual = request(vip, "mirror.example", "GET", "/blue", &[("origin", "https://web.app.example")], None)
        .await
        .expect("request");
    assert_eq!(actual.header("access-control-allow-origin"), "https://web.app.example");
    assert_eq!(actual.header("access-control-expose-headers"), "x-testapp-instance");
    let foreign = request(vip, "mirror.example", "GET", "/blue", &[("origin", "https://evil.example")], None)
        .await
        .expect("request");
    assert_eq!(foreign.header("access-control-allow-origin"), "", "other origins get no CORS grant");
}
