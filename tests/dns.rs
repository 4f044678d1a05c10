//! `DnsResolver` against a DNS server the tests run (tests/common/dns.rs) on
//! 127.0.0.1, with HTTP servers on several 127.0.0.x addresses (Linux routes
//! all of 127/8 to the loopback interface) answering for `orders.test`.
#![cfg(feature = "dns")]
// Helpers outside #[test] fns panic on a failed setup step, like the tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::dns::{DnsServer, Srv};
use hickory_proto::op::ResponseCode;
use resilient_http::{
    ApiClient, ApiClientBuilder, ApiClientConfig, CircuitBreakerConfig, CircuitState, DnsResolver,
    ErrorKind, LoadBalance,
};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

const NAME: &str = "orders.test";

/// Long enough for a loaded machine; a test that passes never waits it out.
const PATIENCE: Duration = Duration::from_secs(10);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// An HTTP server on `address` that answers every request with 200, or
/// with `status`.
async fn server_at(address: SocketAddr, status: u16) -> MockServer {
    let listener = std::net::TcpListener::bind(address).unwrap();
    let server = MockServer::builder().listener(listener).start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(status))
        .mount(&server)
        .await;
    server
}

/// Servers on one port at each of `addresses` (as the A records of a
/// headless service give them): the port, and the servers in order.
async fn servers_on_one_port(addresses: &[Ipv4Addr]) -> (u16, Vec<MockServer>) {
    'port: for _ in 0..20 {
        let first = std::net::TcpListener::bind((addresses[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for &ip in &addresses[1..] {
            match std::net::TcpListener::bind((ip, port)) {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'port,
            }
        }
        let mut servers = Vec::new();
        for listener in listeners {
            let server = MockServer::builder().listener(listener).start().await;
            Mock::given(any())
                .respond_with(ResponseTemplate::new(200))
                .mount(&server)
                .await;
            servers.push(server);
        }
        return (port, servers);
    }
    panic!("no port free on every address");
}

/// A headless service: HTTP servers on one port at 127.0.0.x for each x of
/// `lasts`, and a DNS server (records living `ttl` seconds) giving [`NAME`]
/// all their addresses.
async fn headless(lasts: &[u8], ttl: u32) -> (u16, Vec<MockServer>, DnsServer) {
    let addresses: Vec<Ipv4Addr> = lasts.iter().map(|&x| ip(x)).collect();
    let (port, servers) = servers_on_one_port(&addresses).await;
    let dns = DnsServer::start(ttl).await;
    dns.set_a(NAME, &addresses);
    (port, servers, dns)
}

fn builder(resolver: DnsResolver) -> ApiClientBuilder {
    ApiClient::builder()
        .resolver(resolver)
        .load_balance(LoadBalance::RoundRobin)
        .no_retry()
        .total_timeout(PATIENCE)
}

async fn counts(servers: &[MockServer]) -> Vec<usize> {
    let mut out = Vec::new();
    for s in servers {
        out.push(s.received_requests().await.unwrap_or_default().len());
    }
    out
}

/// The addresses of the client's endpoints, sorted.
fn addresses(client: &ApiClient) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = client
        .endpoints()
        .iter()
        .map(|e| e.address.unwrap())
        .collect();
    out.sort();
    out
}

fn at(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from((ip(last), port))
}

async fn call_many(client: &ApiClient, n: usize) {
    for _ in 0..n {
        client.get("orders").send().await.unwrap();
    }
}

// ------------------------------------------------------------ A records

#[tokio::test]
async fn calls_spread_over_every_address_while_the_host_stays_the_name() {
    let (port, servers, dns) = headless(&[2, 3, 4], 60).await;
    let client = builder(DnsResolver::new(NAME, port).nameserver(dns.addr))
        .build()
        .unwrap();

    call_many(&client, 30).await;

    assert_eq!(counts(&servers).await, [10, 10, 10]);
    assert_eq!(addresses(&client), [at(2, port), at(3, port), at(4, port)]);
    for ep in client.endpoints() {
        assert_eq!(ep.url.as_str(), format!("http://{NAME}:{port}/"));
    }
    for server in &servers {
        for request in server.received_requests().await.unwrap() {
            let host = request.headers.get("host").unwrap().to_str().unwrap();
            assert_eq!(host, format!("{NAME}:{port}"));
            assert_eq!(request.url.path(), "/orders");
        }
    }
}

#[tokio::test]
async fn records_changing_between_refreshes_change_the_endpoints() {
    // With an hour's TTL and refresh, only `refresh_endpoints` asks again.
    let (port, servers, dns) = headless(&[2, 3, 4], 3600).await;
    dns.set_a(NAME, &[ip(2), ip(3)]);
    let client = builder(DnsResolver::new(NAME, port).nameserver(dns.addr))
        .circuit_breaker(CircuitBreakerConfig::default().consecutive_failures(1))
        .resolver_refresh(Duration::from_secs(3600))
        .build()
        .unwrap();
    // .3 fails once (the first call waits for the first lookup; round
    // robin sends the second to .3): its breaker opens.
    servers[1].reset().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .mount(&servers[1])
        .await;
    call_many_allowing_failures(&client, 2).await;
    assert_eq!(addresses(&client), [at(2, port), at(3, port)]);
    let state_of = |client: &ApiClient, address: SocketAddr| {
        client
            .endpoints()
            .iter()
            .find(|e| e.address == Some(address))
            .map(|e| e.state)
    };
    assert_eq!(state_of(&client, at(3, port)), Some(CircuitState::Open));

    dns.set_a(NAME, &[ip(3), ip(4)]);
    assert_eq!(client.refresh_endpoints().await.unwrap(), 2);

    assert_eq!(addresses(&client), [at(3, port), at(4, port)]);
    // The endpoint that stayed kept its breaker: calls go to .4 only.
    assert_eq!(
        state_of(&client, at(3, port)),
        Some(CircuitState::Open),
        "the endpoint that stayed keeps its state"
    );
    let before = counts(&servers).await;
    call_many(&client, 5).await;
    let after = counts(&servers).await;
    assert_eq!(
        [
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2]
        ],
        [0, 0, 5]
    );
}

async fn call_many_allowing_failures(client: &ApiClient, n: usize) {
    for _ in 0..n {
        let _ = client.get("orders").send().await;
    }
}

#[tokio::test]
async fn a_failing_or_empty_dns_answer_keeps_the_last_good_list() {
    let (port, servers, dns) = headless(&[2, 3], 3600).await;
    let client = builder(DnsResolver::new(NAME, port).nameserver(dns.addr))
        .resolver_refresh(Duration::from_secs(3600))
        .build()
        .unwrap();
    assert_eq!(client.refresh_endpoints().await.unwrap(), 2);

    dns.fail_with(Some(ResponseCode::ServFail));
    let asked = dns.answered();
    let err = client.refresh_endpoints().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert!(dns.answered() > asked, "the failure came from the server");
    assert_eq!(addresses(&client), [at(2, port), at(3, port)]);

    dns.fail_with(None);
    dns.set_a(NAME, &[]);
    let asked = dns.answered();
    let err = client.refresh_endpoints().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert!(
        dns.answered() > asked,
        "the empty answer came from the server"
    );
    assert_eq!(addresses(&client), [at(2, port), at(3, port)]);

    call_many(&client, 4).await;
    assert_eq!(counts(&servers).await, [2, 2]);
}

#[tokio::test]
async fn a_ttl_shorter_than_the_refresh_interval_brings_the_next_lookup_forward() {
    let (port, servers, dns) = headless(&[2, 3], 1).await;
    dns.set_a(NAME, &[ip(2)]);
    let client = builder(DnsResolver::new(NAME, port).nameserver(dns.addr))
        .resolver_refresh(Duration::from_secs(3600))
        .build()
        .unwrap();
    // The first call starts the background refresh and waits for its answer.
    call_many(&client, 1).await;
    assert_eq!(addresses(&client), [at(2, port)]);

    // With a refresh interval of an hour, only the 1 s TTL can bring the
    // next lookup within the test's patience.
    dns.set_a(NAME, &[ip(3)]);
    let asked = dns.answered();
    assert!(
        dns.answered_more_than(asked, PATIENCE).await,
        "no lookup after the TTL ran out"
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while addresses(&client) != [at(3, port)] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new records were not applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    call_many(&client, 2).await;
    assert_eq!(counts(&servers).await, [1, 2]);
}

#[tokio::test]
async fn an_absolute_url_on_the_service_is_balanced_with_failover() {
    let (port, servers, dns) = headless(&[2, 3], 60).await;
    // The first address fails everything.
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .with_priority(1)
        .mount(&servers[0])
        .await;
    let client = builder(DnsResolver::new(NAME, port).nameserver(dns.addr))
        .retry(
            resilient_http::RetryPolicy::exponential()
                .max_attempts(2)
                .initial_backoff(Duration::from_millis(1))
                .jitter(false),
        )
        .circuit_breaker(resilient_http::CircuitBreakerConfig::default().consecutive_failures(1))
        .build()
        .unwrap();
    client.refresh_endpoints().await.unwrap();

    for _ in 0..6 {
        let resp = client
            .get(format!("http://{NAME}:{port}/next?page=2"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    // Every call answered by the second address, and the query kept.
    let answered = servers[1].received_requests().await.unwrap();
    assert_eq!(answered.len(), 6);
    assert!(
        answered
            .iter()
            .all(|r| r.url.path() == "/next" && r.url.query() == Some("page=2"))
    );
    // The first address's breaker is open, the second's closed: calls to
    // the URL still go through, and its state says so.
    let url = format!("http://{NAME}:{port}/next").parse().unwrap();
    assert_eq!(
        client.circuit_state_of(&url),
        resilient_http::CircuitState::Closed
    );
}

#[tokio::test]
async fn an_absolute_url_on_the_service_goes_through_one_of_its_endpoints() {
    let (port, servers, dns) = headless(&[2, 3], 60).await;
    let client = builder(DnsResolver::new(NAME, port).nameserver(dns.addr))
        .build()
        .unwrap();
    client.refresh_endpoints().await.unwrap();

    // `orders.test` is in no DNS the system knows: the call can only reach
    // an address the resolver found.
    let resp = client
        .get(format!("http://{NAME}:{port}/next?page=2"))
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status(), 200);
    assert_eq!(counts(&servers).await.iter().sum::<usize>(), 1);
    // A path that starts with `//` (which a join would read as a host) is
    // sent as it is.
    let resp = client
        .get(format!("http://{NAME}:{port}//bucket/key"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(counts(&servers).await.iter().sum::<usize>(), 2);
}

// ------------------------------------------------------------ SRV records

#[tokio::test]
async fn an_srv_weight_is_split_over_its_addresses_in_address_order() {
    // Weight 10 over three addresses: 4, 3, 3. The answer lists them out
    // of order, as a DNS server that shuffles would; the extra weight goes
    // to the lowest address, whatever the order, so that no endpoint
    // changes between refreshes.
    let dns = DnsServer::start(60).await;
    dns.set_a("a.orders.test", &[ip(9), ip(7), ip(8)]);
    dns.set_srv(
        "_http._tcp.orders.test",
        &[Srv {
            priority: 10,
            weight: 10,
            port: 8080,
            target: "a.orders.test",
        }],
    );
    let client = builder(DnsResolver::srv("_http._tcp.orders.test").nameserver(dns.addr))
        .build()
        .unwrap();

    assert_eq!(client.refresh_endpoints().await.unwrap(), 3);

    let mut weights: Vec<(SocketAddr, u32)> = client
        .endpoints()
        .iter()
        .map(|e| (e.address.unwrap(), e.weight))
        .collect();
    weights.sort();
    let at = |last| SocketAddr::new(ip(last).into(), 8080);
    assert_eq!(weights, [(at(7), 4), (at(8), 3), (at(9), 3)]);
}

#[tokio::test]
async fn srv_records_give_each_endpoint_its_port_and_weight() {
    let a = server_at(at(2, 0), 200).await;
    let b = server_at(at(3, 0), 200).await;
    let backup = server_at(at(4, 0), 200).await;
    let (pa, pb, pc) = (
        a.address().port(),
        b.address().port(),
        backup.address().port(),
    );
    let dns = DnsServer::start(60).await;
    dns.set_a("a.orders.test", &[ip(2)]);
    dns.set_a("b.orders.test", &[ip(3)]);
    dns.set_a("c.orders.test", &[ip(4)]);
    let srv = |priority, weight, port, target| Srv {
        priority,
        weight,
        port,
        target,
    };
    dns.set_srv(
        "_http._tcp.orders.test",
        &[
            srv(10, 3, pa, "a.orders.test"),
            srv(10, 1, pb, "b.orders.test"),
            // A backup, used only when no record of priority 10 is left.
            srv(20, 5, pc, "c.orders.test"),
        ],
    );
    let client = builder(DnsResolver::srv("_http._tcp.orders.test").nameserver(dns.addr))
        .load_balance(LoadBalance::WeightedRoundRobin)
        .build()
        .unwrap();

    // The first call waits for the first lookup; the next comes after
    // `resolver_refresh` (10 s), so one list serves every call.
    call_many(&client, 40).await;

    let mut seen: Vec<(String, u32, SocketAddr)> = client
        .endpoints()
        .iter()
        .map(|e| (e.url.to_string(), e.weight, e.address.unwrap()))
        .collect();
    seen.sort_by_key(|(_, w, _)| std::cmp::Reverse(*w));
    assert_eq!(
        seen,
        [
            (format!("http://{NAME}:{pa}/"), 3, at(2, pa)),
            (format!("http://{NAME}:{pb}/"), 1, at(3, pb)),
        ]
    );
    let servers = [a, b, backup];
    assert_eq!(counts(&servers).await, [30, 10, 0]);
    let request = &servers[0].received_requests().await.unwrap()[0];
    assert_eq!(
        request.headers.get("host").unwrap(),
        &format!("{NAME}:{pa}")
    );
}

#[tokio::test]
async fn an_srv_records_weight_is_split_across_its_targets_addresses() {
    // Target a: three addresses on one port; target b: one address. Same
    // record weight, so the same share each.
    let (pa, a_servers) = servers_on_one_port(&[ip(2), ip(3), ip(4)]).await;
    let b = server_at(at(5, 0), 200).await;
    let pb = b.address().port();
    let dns = DnsServer::start(60).await;
    dns.set_a("a.orders.test", &[ip(2), ip(3), ip(4)]);
    dns.set_a("b.orders.test", &[ip(5)]);
    let srv = |weight, port, target| Srv {
        priority: 10,
        weight,
        port,
        target,
    };
    dns.set_srv(
        "_http._tcp.orders.test",
        &[srv(3, pa, "a.orders.test"), srv(3, pb, "b.orders.test")],
    );
    let client = builder(DnsResolver::srv("_http._tcp.orders.test").nameserver(dns.addr))
        .load_balance(LoadBalance::WeightedRoundRobin)
        .build()
        .unwrap();

    call_many(&client, 60).await;

    let mut weights: Vec<(SocketAddr, u32)> = client
        .endpoints()
        .iter()
        .map(|e| (e.address.unwrap(), e.weight))
        .collect();
    weights.sort();
    assert_eq!(
        weights,
        [
            (at(2, pa), 1),
            (at(3, pa), 1),
            (at(4, pa), 1),
            (at(5, pb), 3)
        ]
    );
    let mut servers = a_servers;
    servers.push(b);
    assert_eq!(counts(&servers).await, [10, 10, 10, 30]);
}

#[tokio::test]
async fn srv_backups_are_used_in_priority_order_when_the_first_have_no_address() {
    let backup = server_at(at(4, 0), 200).await;
    let last = server_at(at(5, 0), 200).await;
    let (pc, pd) = (backup.address().port(), last.address().port());
    let dns = DnsServer::start(3600).await;
    // The targets of priority 10 are gone (empty answers).
    dns.set_a("a.orders.test", &[]);
    dns.set_a("b.orders.test", &[]);
    dns.set_a("c.orders.test", &[ip(4)]);
    dns.set_a("d.orders.test", &[ip(5)]);
    let srv = |priority, port, target| Srv {
        priority,
        weight: 1,
        port,
        target,
    };
    dns.set_srv(
        "_http._tcp.orders.test",
        &[
            srv(30, pd, "d.orders.test"),
            srv(10, pc, "a.orders.test"),
            srv(20, pc, "c.orders.test"),
            srv(10, pd, "b.orders.test"),
        ],
    );
    let client = builder(DnsResolver::srv("_http._tcp.orders.test").nameserver(dns.addr))
        .resolver_refresh(Duration::from_secs(3600))
        .build()
        .unwrap();

    call_many(&client, 4).await;

    assert_eq!(addresses(&client), [at(4, pc)]);
    assert_eq!(counts(&[backup, last]).await, [4, 0]);
    // A target of priority 10 back: the backups are left.
    dns.set_a("b.orders.test", &[ip(5)]);
    assert_eq!(client.refresh_endpoints().await.unwrap(), 1);
    assert_eq!(addresses(&client), [at(5, pd)]);
}

// ------------------------------------------------------------ refreshes and balancing

#[tokio::test]
async fn weighted_round_robin_carries_on_across_refreshes() {
    let (port, servers, dns) = headless(&[2, 3, 4], 3600).await;
    let client = builder(DnsResolver::new(NAME, port).nameserver(dns.addr))
        .load_balance(LoadBalance::WeightedRoundRobin)
        .resolver_refresh(Duration::from_secs(3600))
        .build()
        .unwrap();
    assert_eq!(client.refresh_endpoints().await.unwrap(), 3);

    // Fewer calls per refresh (one) than the weights' sum (three).
    for _ in 0..30 {
        call_many(&client, 1).await;
        assert_eq!(client.refresh_endpoints().await.unwrap(), 3);
    }

    assert_eq!(counts(&servers).await, [10, 10, 10]);
}

// ------------------------------------------------------------ failures

#[tokio::test]
async fn a_name_without_addresses_fails_the_first_call_as_rejected() {
    let dns = DnsServer::start(0).await;
    let client = builder(DnsResolver::new(NAME, 80).nameserver(dns.addr))
        .total_timeout(Duration::from_secs(2))
        .build()
        .unwrap();

    let err = client.get("orders").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert_eq!(err.attempts(), 0);
    assert!(client.endpoints().is_empty());
}

// ------------------------------------------------------------ configuration

#[tokio::test]
async fn a_dns_section_in_the_config_drives_a_dns_resolver() {
    let (port, servers, dns) = headless(&[2, 3], 60).await;
    let config: ApiClientConfig = toml::from_str(&format!(
        r#"
        load_balance = "round_robin"
        [dns]
        name = "{NAME}"
        port = {port}
        nameserver = "{}"
        base_path = "/api/"
        "#,
        dns.addr
    ))
    .unwrap();
    let client = ApiClient::from_config(&config).unwrap();

    call_many(&client, 4).await;

    assert_eq!(counts(&servers).await, [2, 2]);
    for server in &servers {
        for request in server.received_requests().await.unwrap() {
            assert_eq!(request.url.path(), "/api/orders");
        }
    }
}

#[tokio::test]
async fn an_srv_dns_section_in_the_config_drives_a_dns_resolver() {
    let server = server_at(at(2, 0), 200).await;
    let port = server.address().port();
    let dns = DnsServer::start(60).await;
    dns.set_a("a.orders.test", &[ip(2)]);
    dns.set_srv(
        "_http._tcp.orders.test",
        &[Srv {
            priority: 0,
            weight: 7,
            port,
            target: "a.orders.test",
        }],
    );
    let config: ApiClientConfig = toml::from_str(&format!(
        "[dns]\nsrv = \"_http._tcp.orders.test\"\nnameserver = \"{}\"\n",
        dns.addr
    ))
    .unwrap();
    let client = ApiClient::from_config(&config).unwrap();

    client.get("orders").send().await.unwrap();

    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    let endpoints = client.endpoints();
    assert_eq!(
        (endpoints[0].url.as_str(), endpoints[0].weight),
        (format!("http://{NAME}:{port}/").as_str(), 7)
    );
}
