//! Distribution and stickiness of every algorithm, persistence, passive health and `update`, on the request
//! path alone (no sockets).
//!
//! Tolerances: round robin and least connections are deterministic (exact counts); consistent hashing uses a
//! stable hash, so its counts are deterministic too (bounds are still stated as shares); random and
//! power-of-two-choices are checked within +-10% of the expected share over 30 000 picks (more than 10 standard
//! deviations).

use http::HeaderMap;
use http::header::{COOKIE, HeaderValue};
use portico_balance::{Algorithm, BalanceConfig, HashKey, Outcome, PassiveHealth, Persistence, PoolState, RequestInfo};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn endpoint(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 8080))
}

fn endpoints(n: u8) -> Vec<SocketAddr> {
    (1..=n).map(endpoint).collect()
}

fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 + i))
}

fn config(algorithm: Algorithm) -> BalanceConfig {
    BalanceConfig { algorithm, ..BalanceConfig::default() }
}

/// Picks `n` times from one client without headers, dropping each guard at once.
fn tally(pool: &PoolState, n: usize) -> HashMap<SocketAddr, usize> {
    let headers = HeaderMap::new();
    let request = RequestInfo { client_ip: client(1), headers: &headers };
    let mut counts = HashMap::new();
    for _ in 0..n {
        let pick = pool.pick(&request).expect("a healthy endpoint");
        *counts.entry(pick.endpoint).or_insert(0) += 1;
    }
    counts
}

fn pick_from(pool: &PoolState, ip: IpAddr, headers: &HeaderMap) -> Option<SocketAddr> {
    pool.pick(&RequestInfo { client_ip: ip, headers }).map(|p| p.endpoint)
}

/// Ejects an endpoint for `ejection` through passive health (the pool must have `consecutive_errors: 1`).
fn eject(pool: &PoolState, address: SocketAddr) {
    pool.report(address, Outcome::ConnectError);
    assert!(!healthy(pool, address), "{address} should be ejected");
}

fn healthy(pool: &PoolState, address: SocketAddr) -> bool {
    pool.health().iter().any(|h| h.endpoint == address && h.healthy)
}

fn eject_quickly(algorithm: Algorithm, ejection: Duration) -> BalanceConfig {
    BalanceConfig { passive: Some(PassiveHealth { consecutive_errors: 1, ejection }), ..config(algorithm) }
}

fn within(count: usize, expected: usize, percent: usize) -> bool {
    count.abs_diff(expected) * 100 <= expected * percent
}

#[test]
fn round_robin_is_exactly_fair_across_healthy_endpoints() {
    let pool = PoolState::new("rr", endpoints(3), eject_quickly(Algorithm::RoundRobin, Duration::from_secs(3600)));
    let counts = tally(&pool, 3000);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![1000; 3], "{counts:?}");

    eject(&pool, endpoint(2));
    let counts = tally(&pool, 3000);
    assert_eq!(counts.get(&endpoint(1)), Some(&1500), "{counts:?}");
    assert_eq!(counts.get(&endpoint(3)), Some(&1500), "{counts:?}");
    assert_eq!(counts.get(&endpoint(2)), None);
}

#[test]
fn weights_are_honoured_by_round_robin_and_interleaved() {
    let weighted = vec![(endpoint(1), 1), (endpoint(2), 2), (endpoint(3), 3), (endpoint(4), 0)];
    let pool = PoolState::new_weighted("w", weighted, BalanceConfig::default());
    let counts = tally(&pool, 6000);
    assert_eq!(counts.get(&endpoint(1)), Some(&1000));
    assert_eq!(counts.get(&endpoint(2)), Some(&2000));
    assert_eq!(counts.get(&endpoint(3)), Some(&3000));
    assert_eq!(counts.get(&endpoint(4)), None, "weight 0 gets nothing");
    // Interleaved: the heaviest endpoint never gets more than two in a row.
    let headers = HeaderMap::new();
    let sequence: Vec<_> = (0..60).filter_map(|_| pick_from(&pool, client(1), &headers)).collect();
    assert!(sequence.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])), "{sequence:?}");
}

#[test]
fn random_spreads_evenly_and_by_weight() {
    let pool = PoolState::new("random", endpoints(3), config(Algorithm::Random));
    let counts = tally(&pool, 30_000);
    for e in endpoints(3) {
        assert!(within(counts[&e], 10_000, 10), "{counts:?}");
    }
    let pool = PoolState::new_weighted("random-w", vec![(endpoint(1), 1), (endpoint(2), 3)], config(Algorithm::Random));
    let counts = tally(&pool, 20_000);
    assert!(within(counts[&endpoint(1)], 5000, 10), "{counts:?}");
    assert!(within(counts[&endpoint(2)], 15_000, 10), "{counts:?}");
}

#[test]
fn power_of_two_choices_spreads_evenly_and_avoids_the_loaded_endpoint() {
    let pool = PoolState::new("p2c", endpoints(3), config(Algorithm::PowerOfTwoChoices));
    let counts = tally(&pool, 30_000);
    for e in endpoints(3) {
        assert!(within(counts[&e], 10_000, 10), "{counts:?}");
    }
    // Hold a request on endpoint 1: any pair holding it also holds an idle endpoint, which wins.
    let headers = HeaderMap::new();
    let request = RequestInfo { client_ip: client(1), headers: &headers };
    let _held = (0..10_000)
        .filter_map(|_| pool.pick(&request))
        .find(|pick| pick.endpoint == endpoint(1))
        .expect("endpoint 1 is picked at some point");
    let counts = tally(&pool, 1000);
    assert_eq!(counts.get(&endpoint(1)), None, "{counts:?}");
    assert!(within(counts[&endpoint(2)], 500, 20) && within(counts[&endpoint(3)], 500, 20), "{counts:?}");
}

#[test]
fn least_connections_favours_the_idle_endpoint() {
    let pool = PoolState::new("lc", endpoints(2), config(Algorithm::LeastConnections));
    // Idle pool: ties rotate.
    let counts = tally(&pool, 100);
    assert_eq!((counts[&endpoint(1)], counts[&endpoint(2)]), (50, 50));

    // A request held on endpoint 1: every new request goes to endpoint 2 while that one is idle.
    let headers = HeaderMap::new();
    let request = RequestInfo { client_ip: client(1), headers: &headers };
    let first = (0..10).filter_map(|_| pool.pick(&request)).find(|p| p.endpoint == endpoint(1)).expect("pick");
    let mut held = vec![first.guard];
    let counts = tally(&pool, 100);
    assert_eq!(counts.get(&endpoint(2)), Some(&100), "{counts:?}");

    // Held requests even out: the next goes to endpoint 2, then they alternate.
    for _ in 0..15 {
        held.push(pool.pick(&request).expect("pick").guard);
    }
    let in_flight: Vec<usize> = pool.health().iter().map(|h| h.in_flight).collect();
    assert!(in_flight[0].abs_diff(in_flight[1]) <= 1, "{in_flight:?}");
    drop(held);
    assert!(pool.health().iter().all(|h| h.in_flight == 0));
}

#[test]
fn least_connections_loads_endpoints_in_proportion_to_weight() {
    let pool =
        PoolState::new_weighted("lc-w", vec![(endpoint(1), 1), (endpoint(2), 3)], config(Algorithm::LeastConnections));
    let headers = HeaderMap::new();
    let request = RequestInfo { client_ip: client(1), headers: &headers };
    let held: Vec<_> = (0..400).map(|_| pool.pick(&request).expect("pick").guard).collect();
    let health = pool.health();
    assert!(health[0].in_flight.abs_diff(100) <= 2 && health[1].in_flight.abs_diff(300) <= 2, "{health:?}");
    drop(held);
}

/// Endpoint of each of `keys` clients.
fn assignments(pool: &PoolState, keys: u32) -> Vec<SocketAddr> {
    let headers = HeaderMap::new();
    (0..keys).map(|k| pick_from(pool, client(k), &headers).expect("pick")).collect()
}

#[test]
fn consistent_hash_sticks_and_moves_only_the_keys_of_a_leaving_endpoint() {
    let hashed = Algorithm::ConsistentHash(HashKey::SourceIp);
    let pool = PoolState::new("ch", endpoints(5), eject_quickly(hashed.clone(), Duration::from_millis(200)));
    let before = assignments(&pool, 2000);
    assert_eq!(assignments(&pool, 2000), before, "every key sticks");
    // Shares: 20% expected each; at least 15% and at most 25% (deterministic for the stable hash).
    for e in endpoints(5) {
        let share = before.iter().filter(|&&a| a == e).count();
        assert!((300..=500).contains(&share), "{e}: {share}");
    }

    // An endpoint leaves: only its keys move.
    let mut four = endpoints(5);
    four.retain(|&e| e != endpoint(3));
    pool.update(four, eject_quickly(hashed.clone(), Duration::from_millis(200)));
    let after = assignments(&pool, 2000);
    for (b, a) in before.iter().zip(&after) {
        if *b == endpoint(3) {
            assert_ne!(*a, endpoint(3));
        } else {
            assert_eq!(a, b, "a key of a staying endpoint moved");
        }
    }

    // It comes back: exactly the old assignment again.
    pool.update(endpoints(5), eject_quickly(hashed.clone(), Duration::from_millis(200)));
    assert_eq!(assignments(&pool, 2000), before);

    // An endpoint becomes unhealthy: only its keys move, and they return when it recovers.
    eject(&pool, endpoint(1));
    let ejected = assignments(&pool, 2000);
    for (b, a) in before.iter().zip(&ejected) {
        assert_eq!(*b == endpoint(1), a != b);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthy(&pool, endpoint(1)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(assignments(&pool, 2000), before);

    // A new endpoint takes keys only for itself.
    pool.update(endpoints(6), config(hashed));
    let grown = assignments(&pool, 2000);
    let moved = before.iter().zip(&grown).filter(|(b, a)| b != a).count();
    assert!(before.iter().zip(&grown).all(|(b, a)| a == b || *a == endpoint(6)));
    assert!((200..=470).contains(&moved), "about a sixth of the keys move: {moved}");
}

#[test]
fn consistent_hash_by_header_and_cookie() {
    let pool =
        PoolState::new("ch-h", endpoints(4), config(Algorithm::ConsistentHash(HashKey::Header("x-user".into()))));
    let mut headers = HeaderMap::new();
    headers.insert("x-user", HeaderValue::from_static("alice"));
    let alice = pick_from(&pool, client(1), &headers).expect("pick");
    for k in 0..200 {
        assert_eq!(pick_from(&pool, client(k), &headers), Some(alice), "the header decides, not the client");
    }
    // Without the header, the source address is the key.
    let none = HeaderMap::new();
    let spread: std::collections::HashSet<_> = (0..200).filter_map(|k| pick_from(&pool, client(k), &none)).collect();
    assert_eq!(spread.len(), 4);

    let pool = PoolState::new("ch-c", endpoints(4), config(Algorithm::ConsistentHash(HashKey::Cookie("sid".into()))));
    let mut headers = HeaderMap::new();
    headers.insert(COOKIE, HeaderValue::from_static("theme=dark; sid=42"));
    let first = pick_from(&pool, client(1), &headers).expect("pick");
    for k in 0..200 {
        assert_eq!(pick_from(&pool, client(k), &headers), Some(first));
    }
    let users: std::collections::HashSet<_> = (0..200)
        .filter_map(|k| {
            let mut h = HeaderMap::new();
            h.insert(COOKIE, HeaderValue::from_str(&format!("sid=user{k}")).expect("value"));
            pick_from(&pool, client(1), &h)
        })
        .collect();
    assert_eq!(users.len(), 4, "different cookies spread");
}

#[test]
fn weighted_consistent_hash_follows_weights() {
    let pool = PoolState::new_weighted(
        "ch-w",
        vec![(endpoint(1), 1), (endpoint(2), 3)],
        config(Algorithm::ConsistentHash(HashKey::SourceIp)),
    );
    let assigned = assignments(&pool, 4000);
    let light = assigned.iter().filter(|&&a| a == endpoint(1)).count();
    assert!((800..=1200).contains(&light), "about a quarter: {light}");
}

fn cookie_pool(ttl: Option<Duration>) -> Arc<PoolState> {
    PoolState::new(
        "cookie",
        endpoints(3),
        BalanceConfig {
            persistence: Some(Persistence::Cookie { name: "portico-session".into(), ttl }),
            passive: Some(PassiveHealth { consecutive_errors: 1, ejection: Duration::from_secs(3600) }),
            ..BalanceConfig::default()
        },
    )
}

fn with_cookie(set_cookie: &str) -> HeaderMap {
    let pair = set_cookie.split(';').next().expect("name=value");
    let mut headers = HeaderMap::new();
    headers.insert(COOKIE, HeaderValue::from_str(&format!("other=1; {pair}")).expect("value"));
    headers
}

#[test]
fn cookie_persistence_pins_a_client_while_its_endpoint_is_healthy() {
    let pool = cookie_pool(None);
    let none = HeaderMap::new();
    let first = pool.pick(&RequestInfo { client_ip: client(1), headers: &none }).expect("pick");
    let set_cookie = first.set_cookie.clone().expect("a new client gets a cookie");
    let value = set_cookie.split(';').next().and_then(|p| p.strip_prefix("portico-session=")).expect("value");
    assert_eq!(value.len(), 16, "{set_cookie}");
    assert!(!set_cookie.contains("10.0.0") && !set_cookie.contains("8080"), "no address in {set_cookie}");
    assert!(set_cookie.ends_with("; Path=/; HttpOnly"), "{set_cookie}");

    // Round robin would rotate; the cookie pins every request, from any address, and sets nothing new.
    let headers = with_cookie(&set_cookie);
    for k in 0..50 {
        let pick = pool.pick(&RequestInfo { client_ip: client(k), headers: &headers }).expect("pick");
        assert_eq!(pick.endpoint, first.endpoint);
        assert_eq!(pick.set_cookie, None);
    }
    // Other clients are still balanced.
    let spread: std::collections::HashSet<_> = (0..30).filter_map(|_| pick_from(&pool, client(9), &none)).collect();
    assert_eq!(spread.len(), 3);

    // The same endpoint has the same cookie in another pool or Portico instance.
    let twin = cookie_pool(None);
    assert_eq!(pick_from(&twin, client(1), &headers), Some(first.endpoint));

    // The pinned endpoint fails: the client moves, with a new cookie that pins it to its new endpoint.
    eject(&pool, first.endpoint);
    let moved = pool.pick(&RequestInfo { client_ip: client(1), headers: &headers }).expect("pick");
    assert_ne!(moved.endpoint, first.endpoint);
    let new_cookie = moved.set_cookie.clone().expect("a new cookie");
    let headers = with_cookie(&new_cookie);
    for _ in 0..20 {
        assert_eq!(pick_from(&pool, client(1), &headers), Some(moved.endpoint));
    }

    // A forged or stale value is treated as no cookie.
    for forged in ["portico-session=10.0.0.1:8080", "portico-session=0123456789abcdef", "portico-session="] {
        let pick = pool.pick(&RequestInfo { client_ip: client(1), headers: &with_cookie(forged) }).expect("pick");
        assert!(pick.set_cookie.is_some(), "{forged}");
    }
    // After an update that removes the endpoint, its cookie no longer pins.
    pool.update(
        vec![endpoint(1), endpoint(2), endpoint(3)].into_iter().filter(|&e| e != moved.endpoint).collect(),
        pool.config(),
    );
    let pick = pool.pick(&RequestInfo { client_ip: client(1), headers: &headers }).expect("pick");
    assert_ne!(pick.endpoint, moved.endpoint);
    assert!(pick.set_cookie.is_some());
}

#[test]
fn cookie_ttl_becomes_max_age() {
    let pool = cookie_pool(Some(Duration::from_secs(3600)));
    let none = HeaderMap::new();
    let pick = pool.pick(&RequestInfo { client_ip: client(1), headers: &none }).expect("pick");
    assert!(pick.set_cookie.expect("cookie").ends_with("; Path=/; HttpOnly; Max-Age=3600"));
}

#[test]
fn source_ip_persistence_pins_each_client() {
    let pool = PoolState::new(
        "ip",
        endpoints(3),
        BalanceConfig { persistence: Some(Persistence::SourceIp), ..BalanceConfig::default() },
    );
    let none = HeaderMap::new();
    let mut seen = std::collections::HashSet::new();
    for k in 0..100 {
        let first = pick_from(&pool, client(k), &none).expect("pick");
        seen.insert(first);
        for _ in 0..10 {
            let pick = pool.pick(&RequestInfo { client_ip: client(k), headers: &none }).expect("pick");
            assert_eq!(pick.endpoint, first);
            assert_eq!(pick.set_cookie, None);
        }
    }
    assert_eq!(seen.len(), 3, "clients spread over the endpoints");
}

#[test]
fn no_healthy_endpoint_means_none() {
    let algorithms = [
        Algorithm::RoundRobin,
        Algorithm::LeastConnections,
        Algorithm::Random,
        Algorithm::PowerOfTwoChoices,
        Algorithm::ConsistentHash(HashKey::SourceIp),
    ];
    let none = HeaderMap::new();
    for algorithm in algorithms {
        let pool = PoolState::new("down", endpoints(3), eject_quickly(algorithm.clone(), Duration::from_secs(3600)));
        for e in endpoints(3) {
            eject(&pool, e);
        }
        assert_eq!(pick_from(&pool, client(1), &none), None, "{algorithm:?}");
        let empty = PoolState::new("empty", Vec::new(), config(algorithm.clone()));
        assert_eq!(pick_from(&empty, client(1), &none), None, "{algorithm:?}");
        let zero = PoolState::new_weighted("zero", vec![(endpoint(1), 0)], config(algorithm.clone()));
        assert_eq!(pick_from(&zero, client(1), &none), None, "{algorithm:?}");
    }
    let persistent = cookie_pool(None);
    for e in endpoints(3) {
        eject(&persistent, e);
    }
    assert!(persistent.pick(&RequestInfo { client_ip: client(1), headers: &none }).is_none());
}

#[test]
fn passive_health_ejects_after_consecutive_errors_and_returns_after_the_ejection() {
    let ejection = Duration::from_millis(300);
    let pool = PoolState::new(
        "passive",
        endpoints(2),
        BalanceConfig { passive: Some(PassiveHealth { consecutive_errors: 3, ejection }), ..BalanceConfig::default() },
    );
    let bad = endpoint(1);
    // Two errors, a success, two errors: never three in a row.
    for outcome in
        [Outcome::ConnectError, Outcome::Status5xx, Outcome::Success, Outcome::Timeout, Outcome::ConnectError]
    {
        pool.report(bad, outcome);
    }
    assert!(healthy(&pool, bad));
    assert_eq!(pool.health()[0].consecutive_errors, 2);
    let ejected_at = Instant::now();
    pool.report(bad, Outcome::Status5xx);
    let health = pool.health()[0].clone();
    assert!(!health.healthy && health.checked_up, "{health:?}");
    assert!(health.ejected_for.is_some_and(|d| d <= ejection), "{health:?}");
    assert_eq!(health.failed_requests, 5);
    let counts = tally(&pool, 100);
    assert_eq!(counts.get(&bad), None);
    // Late answers of requests sent before the ejection do not extend it.
    pool.report(bad, Outcome::ConnectError);

    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthy(&pool, bad) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(healthy(&pool, bad), "back after the ejection");
    assert!(ejected_at.elapsed() >= ejection - Duration::from_millis(5));
    let counts = tally(&pool, 100);
    assert_eq!(counts.get(&bad), Some(&50));

    // Without passive health, errors are counted but never eject.
    let plain = PoolState::new("plain", endpoints(1), BalanceConfig::default());
    for _ in 0..100 {
        plain.report(endpoint(1), Outcome::ConnectError);
    }
    assert!(healthy(&plain, endpoint(1)));
    assert_eq!(plain.health()[0].consecutive_errors, 100);
    // Reports for unknown endpoints are ignored.
    plain.report(endpoint(9), Outcome::ConnectError);
}

#[test]
fn update_keeps_the_state_of_endpoints_that_stay() {
    let passive = PassiveHealth { consecutive_errors: 1, ejection: Duration::from_secs(3600) };
    let first = BalanceConfig { passive: Some(passive.clone()), ..BalanceConfig::default() };
    let pool = PoolState::new("update", endpoints(2), first);
    let none = HeaderMap::new();
    let mut held = None;
    for _ in 0..4 {
        let pick = pool.pick(&RequestInfo { client_ip: client(1), headers: &none }).expect("pick");
        if pick.endpoint == endpoint(1) {
            held = Some(pick.guard);
        }
    }
    let held = held.expect("a guard on endpoint 1");
    eject(&pool, endpoint(2));

    let second =
        BalanceConfig { algorithm: Algorithm::LeastConnections, passive: Some(passive), ..BalanceConfig::default() };
    pool.update(vec![endpoint(3), endpoint(1), endpoint(2)], second.clone());
    assert_eq!(pool.endpoints(), vec![endpoint(3), endpoint(1), endpoint(2)]);
    assert_eq!(pool.config(), second);
    let health = pool.health();
    assert_eq!((health[1].endpoint, health[1].in_flight, health[1].requests), (endpoint(1), 1, 2));
    assert!(!health[2].healthy && health[2].ejected_for.is_some(), "the ejection is kept: {health:?}");
    assert!(health[0].healthy && health[0].requests == 0);
    // Least connections sees the held request: endpoint 3 (idle) gets the next one.
    assert_eq!(pick_from(&pool, client(1), &none), Some(endpoint(3)));

    // Removing an endpoint with a request in flight: the guard outlives it harmlessly.
    pool.update(vec![endpoint(3)], second);
    assert_eq!(held.endpoint(), endpoint(1));
    drop(held);
    assert_eq!(pool.health().len(), 1);
    pool.report(endpoint(1), Outcome::ConnectError);
}

#[test]
fn concurrent_picks_leave_no_request_in_flight() {
    for algorithm in [Algorithm::LeastConnections, Algorithm::PowerOfTwoChoices, Algorithm::RoundRobin] {
        let pool = PoolState::new("threads", endpoints(4), config(algorithm));
        std::thread::scope(|scope| {
            for t in 0..4 {
                let pool = &pool;
                scope.spawn(move || {
                    let headers = HeaderMap::new();
                    for _ in 0..5000 {
                        let pick = pool.pick(&RequestInfo { client_ip: client(t), headers: &headers });
                        assert!(pick.is_some());
                    }
                });
            }
        });
        let health = pool.health();
        assert!(health.iter().all(|h| h.in_flight == 0), "{health:?}");
        assert_eq!(health.iter().map(|h| h.requests).sum::<u64>(), 20_000);
    }
}

#[test]
fn health_serialises_for_the_admin_api() {
    let pool = PoolState::new("json", endpoints(1), eject_quickly(Algorithm::RoundRobin, Duration::from_secs(60)));
    eject(&pool, endpoint(1));
    let json = serde_json::to_value(pool.health()).expect("serialises");
    let entry = &json[0];
    assert_eq!(entry["endpoint"], "10.0.0.1:8080");
    assert_eq!(entry["healthy"], false);
    assert_eq!(entry["inFlight"], 0);
    let left = entry["ejectedFor"].as_str().and_then(|s| portico_balance::duration_format::parse(s).ok());
    assert!(left.is_some_and(|d| d <= Duration::from_secs(60) && d >= Duration::from_secs(50)), "{entry}");
}
