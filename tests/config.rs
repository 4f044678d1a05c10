//! Configuration files: `ApiClientConfig` read from TOML, written back, and the
//! clients built from it.
// Helpers outside #[test] fns panic on a failed setup step, like the tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[cfg(feature = "etcd")]
use common::base64;
use common::{RAW_SERVER_MAX_CONNECTIONS, read_request_head, received};
use resilient_http::config::HedgingSection;
use resilient_http::{
    AdaptiveConcurrency, ApiClient, ApiClientBuilder, ApiClientConfig, CircuitBreakerConfig,
    CircuitBreakerSection, ErrorKind, FailureRateSection, Hedging, RateLimit, RateLimitSection,
    RetryBudget, RetryBudgetSection, RetryPolicy, RetrySection, TimeoutPhase,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wiremock::matchers::{any, header, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Every key, each set to something other than its default.
const FULL: &str = r#"
base_url = "http://users.internal:8080/api/"
connect_timeout = "500ms"
read_timeout = "3s"
attempt_timeout = "4s"
total_timeout = "1m"
max_concurrency = 8
user_agent = "orders-service/1.4"
bearer_token = "t0ken"
max_response_bytes = 1048576
max_redirects = 2
pool_max_idle_per_host = 4
pool_idle_timeout = "45s"
tcp_keepalive = "1m"
http2_prior_knowledge = true
tls_danger_accept_invalid_certs = true

[retry]
max_attempts = 4
initial_backoff = "50ms"
max_backoff = "1500ms"
jitter = false
max_retry_after = "20s"
retry_server_errors = true
budget = { ratio = 0.1, min_per_second = 5, window = "20s" }

[circuit_breaker]
consecutive_failures = 3
failure_rate = { threshold = 0.25, window = 40, min_calls = 20 }
open_duration = "30s"
half_open_max_calls = 2

[rate_limit]
per_minute = 600
burst = 20
fail_fast = true

[hedging]
percentile = 0.95
max_hedges = 2

[default_headers]
x-tenant = "acme"
x-api-key = "k-123"
"#;

/// The same settings as [`FULL`], written in code.
fn full_in_code() -> ApiClientConfig {
    let mut budget = RetryBudgetSection::default();
    budget.ratio = Some(0.1);
    budget.min_per_second = Some(5);
    budget.window = Some(Duration::from_secs(20));
    let mut retry = RetrySection::default();
    retry.max_attempts = Some(4);
    retry.initial_backoff = Some(Duration::from_millis(50));
    retry.max_backoff = Some(Duration::from_millis(1500));
    retry.jitter = Some(false);
    retry.max_retry_after = Some(Duration::from_secs(20));
    retry.retry_server_errors = Some(true);
    retry.budget = Some(budget);
    let mut rate = FailureRateSection::default();
    rate.threshold = Some(0.25);
    rate.window = Some(40);
    rate.min_calls = Some(20);
    let mut breaker = CircuitBreakerSection::default();
    breaker.consecutive_failures = Some(3);
    breaker.failure_rate = Some(rate);
    breaker.open_duration = Some(Duration::from_secs(30));
    breaker.half_open_max_calls = Some(2);
    let mut limit = RateLimitSection::default();
    limit.per_minute = Some(600);
    limit.burst = Some(20);
    limit.fail_fast = Some(true);
    let mut hedging = HedgingSection::default();
    hedging.percentile = Some(0.95);
    hedging.max_hedges = Some(2);

    let mut c = ApiClientConfig::default();
    c.base_url = Some("http://users.internal:8080/api/".into());
    c.connect_timeout = Some(Duration::from_millis(500));
    c.read_timeout = Some(Duration::from_secs(3));
    c.attempt_timeout = Some(Duration::from_secs(4));
    c.total_timeout = Some(Duration::from_secs(60));
    c.retry = Some(retry);
    c.circuit_breaker = Some(breaker);
    c.rate_limit = Some(limit);
    c.max_concurrency = Some(8);
    c.hedging = Some(hedging);
    c.default_headers = BTreeMap::from([
        ("x-tenant".into(), "acme".into()),
        ("x-api-key".into(), "k-123".into()),
    ]);
    c.user_agent = Some("orders-service/1.4".into());
    c.bearer_token = Some("t0ken".into());
    c.max_response_bytes = Some(1_048_576);
    c.max_redirects = Some(2);
    c.pool_max_idle_per_host = Some(4);
    c.pool_idle_timeout = Some(Duration::from_secs(45));
    c.tcp_keepalive = Some(Duration::from_secs(60));
    c.http2_prior_knowledge = Some(true);
    c.tls_danger_accept_invalid_certs = Some(true);
    c
}

fn parse(text: &str) -> ApiClientConfig {
    toml::from_str(text).unwrap_or_else(|e| panic!("{text}\n{e}"))
}

/// The error message for a text that must not parse.
fn parse_error(text: &str) -> String {
    match toml::from_str::<ApiClientConfig>(text) {
        Ok(config) => panic!("{text:?} parsed as {config:?}"),
        Err(e) => e.to_string(),
    }
}

/// A config for `server`, plus the `extra` TOML.
fn fast_config(server: &MockServer, extra: &str) -> ApiClientConfig {
    parse(&format!("base_url = \"{}\"\n{extra}", server.uri()))
}

// ---------------------------------------------------------------- reading and writing

#[test]
fn every_key_reads_into_its_field() {
    assert_eq!(parse(FULL), full_in_code());
}

#[test]
fn a_full_config_survives_a_toml_round_trip() {
    let config = full_in_code();
    let text = toml::to_string(&config).unwrap();
    let back: ApiClientConfig = toml::from_str(&text).unwrap();
    assert_eq!(back, config, "{text}");
}

#[test]
#[allow(clippy::duration_suboptimal_units)] // given in small units on purpose
fn durations_are_written_as_humantime_spans() {
    let mut config = ApiClientConfig::default();
    config.connect_timeout = Some(Duration::from_millis(2000));
    config.read_timeout = Some(Duration::from_millis(150));
    config.attempt_timeout = Some(Duration::from_millis(1500));
    config.total_timeout = Some(Duration::from_secs(120));
    config.pool_idle_timeout = Some(Duration::from_micros(500));
    let text = toml::to_string(&config).unwrap();
    for line in [
        r#"connect_timeout = "2s""#,
        r#"read_timeout = "150ms""#,
        r#"attempt_timeout = "1s 500ms""#,
        r#"total_timeout = "2m""#,
        r#"pool_idle_timeout = "500us""#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
}

#[test]
fn switched_off_sections_are_written_as_false_and_read_back() {
    let config = parse(
        r"
        retry = { budget = false }
        circuit_breaker = { failure_rate = false }
        ",
    );
    let text = toml::to_string(&config).unwrap();
    assert!(text.contains("budget = false"), "{text}");
    assert!(text.contains("failure_rate = false"), "{text}");
    assert_eq!(parse(&text), config);

    let off = parse("retry = false\ncircuit_breaker = false");
    assert_eq!(parse(&toml::to_string(&off).unwrap()), off);
    assert_eq!(off.retry_policy(), RetryPolicy::none());
    assert!(off.circuit_breaker_config().is_none());
}

#[test]
fn the_same_config_reads_from_json() {
    let json = r#"{
        "base_url": "http://users.internal:8080/api/",
        "connect_timeout": "500ms",
        "read_timeout": null,
        "retry": {"max_attempts": 4, "budget": false},
        "circuit_breaker": false
    }"#;
    let config: ApiClientConfig = serde_json::from_str(json).unwrap();
    let toml = parse(
        r#"
        base_url = "http://users.internal:8080/api/"
        connect_timeout = "500ms"
        retry = { max_attempts = 4, budget = false }
        circuit_breaker = false
        "#,
    );
    assert_eq!(config, toml);
}

#[test]
fn an_empty_config_means_every_builder_default() {
    let config = parse("");
    assert_eq!(config, ApiClientConfig::default());
    assert_eq!(toml::to_string(&config).unwrap(), "");
    assert_eq!(
        format!("{:?}", ApiClientBuilder::from_config(&config)),
        format!("{:?}", ApiClient::builder())
    );
    assert_eq!(config.retry_policy(), RetryPolicy::exponential());
    assert_eq!(
        format!("{:?}", config.circuit_breaker_config()),
        format!("{:?}", Some(CircuitBreakerConfig::default()))
    );
}

#[test]
fn a_config_gives_the_same_builder_as_the_code_it_stands_for() {
    let from_file = ApiClientBuilder::from_config(&parse(FULL));
    let in_code = ApiClient::builder()
        .base_url("http://users.internal:8080/api/")
        .connect_timeout(Duration::from_millis(500))
        .read_timeout(Duration::from_secs(3))
        .attempt_timeout(Duration::from_secs(4))
        .total_timeout(Duration::from_secs(60))
        .retry(
            RetryPolicy::exponential()
                .max_attempts(4)
                .initial_backoff(Duration::from_millis(50))
                .max_backoff(Duration::from_millis(1500))
                .jitter(false)
                .max_retry_after(Duration::from_secs(20))
                .retry_server_errors(true)
                .budget(
                    RetryBudget::ratio(0.1)
                        .min_per_second(5)
                        .window(Duration::from_secs(20)),
                ),
        )
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(3)
                .failure_rate(0.25, 40, 20)
                .open_duration(Duration::from_secs(30))
                .half_open_max_calls(2),
        )
        .rate_limit(RateLimit::per_minute(600).burst(20).fail_fast())
        .max_concurrency(8)
        .hedging(Hedging::percentile(0.95).max_hedges(2))
        .default_header("x-api-key", "k-123")
        .default_header("x-tenant", "acme")
        .bearer_auth("t0ken")
        .user_agent("orders-service/1.4")
        .max_response_bytes(1_048_576)
        .tls_danger_accept_invalid_certs(true);
    assert_eq!(format!("{from_file:?}"), format!("{in_code:?}"));
}

#[test]
fn adaptive_concurrency_from_the_config_sets_the_limit() {
    let config = parse(
        "base_url = \"http://127.0.0.1:9/\"\nadaptive_concurrency = { initial = 10, floor = 2, ceiling = 50 }",
    );
    assert_eq!(
        format!("{:?}", ApiClientBuilder::from_config(&config)),
        format!(
            "{:?}",
            ApiClient::builder()
                .base_url("http://127.0.0.1:9/")
                .adaptive_concurrency(
                    AdaptiveConcurrency::default()
                        .initial(10)
                        .floor(2)
                        .ceiling(50)
                )
        )
    );
    let client = ApiClient::from_config(&config).unwrap();
    assert_eq!(client.concurrency_limit(), Some(10));
    // The initial limit is kept within floor and ceiling.
    let config =
        parse("base_url = \"http://127.0.0.1:9/\"\nadaptive_concurrency = { ceiling = 5 }");
    assert_eq!(
        ApiClient::from_config(&config).unwrap().concurrency_limit(),
        Some(5)
    );
    assert_eq!(parse(&toml::to_string(&config).unwrap()), config);
}

#[test]
fn a_fixed_hedging_delay_reads_from_the_config() {
    let config = parse("hedging = { delay = \"20ms\" }");
    assert_eq!(
        format!("{:?}", ApiClientBuilder::from_config(&config)),
        format!(
            "{:?}",
            ApiClient::builder().hedging(Hedging::fixed(Duration::from_millis(20)))
        )
    );
    assert_eq!(parse(&toml::to_string(&config).unwrap()), config);
    assert!(parse_error("hedging = { percentil = 0.9 }").contains("percentil"));
}

// ---------------------------------------------------------------- errors while reading

#[test]
fn an_unknown_top_level_key_is_rejected_by_name() {
    let msg = parse_error("conect_timeout = \"1s\"");
    assert!(msg.contains("conect_timeout"), "{msg}");
    assert!(
        msg.contains("connect_timeout"),
        "the known keys are listed: {msg}"
    );
}

#[test]
fn an_unknown_key_in_a_section_is_rejected_by_name() {
    for (text, key) in [
        ("[retry]\nmax_attemps = 3", "max_attemps"),
        (
            "retry = { budget = { ratio = 0.1, windw = \"1s\" } }",
            "windw",
        ),
        ("[retry.budget]\nunlimited = true", "unlimited"),
        ("[circuit_breaker]\nopen_for = \"1s\"", "open_for"),
        ("[circuit_breaker.failure_rate]\ntreshold = 0.5", "treshold"),
        ("[rate_limit]\nper_hour = 5", "per_hour"),
    ] {
        let msg = parse_error(text);
        assert!(msg.contains(key), "{text:?}: {msg}");
    }
}

#[test]
fn an_invalid_duration_is_quoted_with_the_accepted_forms() {
    for (text, bad) in [
        ("connect_timeout = \"2 parsecs\"", "2 parsecs"),
        ("total_timeout = \"10\"", "10"),
        ("[retry]\ninitial_backoff = \"-5ms\"", "-5ms"),
        ("[circuit_breaker]\nopen_duration = \"1x\"", "1x"),
        ("tcp_keepalive = \"\"", "\"\""),
    ] {
        let msg = parse_error(text);
        assert!(msg.contains(bad), "{text:?}: {msg}");
        assert!(
            msg.contains("\"150ms\"") && msg.contains("units: h, m, s, ms, us, ns"),
            "{text:?}: {msg}"
        );
    }
    // Not a string at all: the same forms are named.
    let msg = parse_error("total_timeout = 30");
    assert!(msg.contains("\"150ms\""), "{msg}");
}

#[test]
fn a_section_that_is_neither_a_table_nor_a_boolean_is_rejected() {
    let msg = parse_error("circuit_breaker = 3");
    assert!(msg.contains("`true`, `false` or a table"), "{msg}");
}

// ---------------------------------------------------------------- clients built from a config

#[tokio::test]
async fn max_attempts_from_the_config_bounds_the_attempts() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .expect(4)
        .mount(&server)
        .await;
    let config = fast_config(
        &server,
        r#"
        circuit_breaker = false
        [retry]
        max_attempts = 4
        initial_backoff = "1ms"
        jitter = false
        budget = false
        "#,
    );
    let client = ApiClient::from_config(&config).unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Retryable);
    assert_eq!(err.attempts(), 4);
    assert_eq!(received(&server).await, 4);
}

#[tokio::test]
async fn retry_false_makes_one_attempt() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&server)
        .await;
    let client = ApiClient::from_config(&fast_config(&server, "retry = false")).unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.attempts(), 1);
}

#[tokio::test]
async fn default_headers_user_agent_and_bearer_token_are_sent() {
    let server = MockServer::start().await;
    Mock::given(header("x-tenant", "acme"))
        .and(header("user-agent", "config-test/1.0"))
        .and(header("authorization", "Bearer s3cr3t"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let config = fast_config(
        &server,
        r#"
        user_agent = "config-test/1.0"
        bearer_token = "s3cr3t"
        retry = false
        [default_headers]
        x-tenant = "acme"
        "#,
    );
    let client = ApiClient::from_config(&config).unwrap();

    let resp = client.get("x").send().await;

    assert!(resp.is_ok(), "{resp:?}");
}

#[tokio::test]
async fn the_attempt_timeout_from_the_config_applies() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let config = fast_config(&server, "attempt_timeout = \"100ms\"\nretry = false");
    let client = ApiClient::from_config(&config).unwrap();

    let started = Instant::now();
    let err = client.get("slow").send().await.unwrap_err();

    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Attempt), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn the_circuit_breaker_from_the_config_opens_and_false_turns_it_off() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let tripping = fast_config(
        &server,
        "retry = false\ncircuit_breaker = { consecutive_failures = 2, failure_rate = false }",
    );
    let client = ApiClient::from_config(&tripping).unwrap();
    for _ in 0..2 {
        client.get("x").send().await.unwrap_err();
    }
    let err = client.get("x").send().await.unwrap_err();
    assert!(err.is_circuit_open(), "{err}");
    assert_eq!(received(&server).await, 2);

    let off = fast_config(&server, "retry = false\ncircuit_breaker = false");
    let client = ApiClient::from_config(&off).unwrap();
    for _ in 0..6 {
        let err = client.get("x").send().await.unwrap_err();
        assert!(!err.is_circuit_open(), "{err}");
    }
    assert_eq!(received(&server).await, 2 + 6);
}

#[tokio::test]
async fn the_rate_limit_from_the_config_applies() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let config = fast_config(&server, "rate_limit = { per_minute = 1, fail_fast = true }");
    let client = ApiClient::from_config(&config).unwrap();

    client.get("x").send().await.unwrap();
    let err = client.get("x").send().await.unwrap_err();

    assert!(err.is_rate_limited(), "{err}");
}

#[tokio::test]
async fn max_response_bytes_from_the_config_applies() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_string("x".repeat(100)))
        .mount(&server)
        .await;
    let client = ApiClient::from_config(&fast_config(&server, "max_response_bytes = 10")).unwrap();

    let err = client.get("big").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
}

#[test]
fn invalid_values_are_config_errors_from_build() {
    let base = "base_url = \"http://127.0.0.1:9/\"\n";
    ApiClient::from_config(&parse(base)).expect("the base alone is valid");
    for extra in [
        "rate_limit = { per_second = 0 }",
        "rate_limit = { per_second = 10, burst = 0 }",
        "rate_limit = { burst = 5 }",
        "rate_limit = { per_second = 1, per_minute = 60 }",
        "retry = { max_attempts = 0 }",
        "retry = { budget = { ratio = 1.5 } }",
        "retry = { budget = { window = \"2m\" } }",
        "circuit_breaker = { half_open_max_calls = 0 }",
        "circuit_breaker = { failure_rate = { threshold = 1.5 } }",
        "circuit_breaker = { failure_rate = { window = 20, min_calls = 30 } }",
        "circuit_breaker = { failure_rate = { window = 20, time_window = \"30s\" } }",
        "circuit_breaker = { failure_rate = { time_window = \"0s\" } }",
        "max_concurrency = 0",
        "adaptive_concurrency = { floor = 0 }",
        "adaptive_concurrency = { floor = 9, ceiling = 8 }",
        "max_concurrency = 4\nadaptive_concurrency = { floor = 1 }",
        "hedging = { percentile = 1.5 }",
        "hedging = { max_hedges = 1 }",
        "hedging = { percentile = 0.9, delay = \"5ms\" }",
        "hedging = { delay = \"5ms\", max_hedges = 0 }",
        "connect_timeout = \"0s\"",
        "user_agent = \"bad\\nagent\"",
        "bearer_token = \"bad\\ntoken\"",
        "[default_headers]\n\"bad header\" = \"x\"",
    ] {
        let config = parse(&format!("{base}{extra}"));
        let err = ApiClient::from_config(&config).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{extra}: {err}");
    }
    let err = ApiClient::from_config(&parse("base_url = \"ftp://example.invalid/\"")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

// ---------------------------------------------------------------- secrets

#[test]
fn debug_never_shows_the_bearer_token_or_other_secrets() {
    let config = parse(
        r#"
        base_url = "http://svc:pw-s3cret@users.internal/api/"
        bearer_token = "tok-s3cret"
        [default_headers]
        x-api-key = "key-s3cret"
        x-tenant = "acme"
        "#,
    );

    let shown = format!("{config:?} {config:#?}");

    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(
        shown.contains("bearer_token: Some(\"REDACTED\")"),
        "{shown}"
    );
    assert!(shown.contains("acme"), "ordinary values are shown: {shown}");
    let builder = format!("{:?}", ApiClientBuilder::from_config(&config));
    assert!(!builder.contains("s3cret"), "{builder}");
    let client = format!("{:?}", ApiClient::from_config(&config).unwrap());
    assert!(!client.contains("s3cret"), "{client}");
}

#[cfg(feature = "etcd")]
#[test]
fn debug_never_shows_the_password_of_the_etcd_url() {
    let config = parse(
        r#"
        [etcd]
        url = "http://root:pw-s3cret@127.0.0.1:2379"
        prefix = "/services/orders/"
        "#,
    );

    let shown = format!("{config:?} {config:#?}");

    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("127.0.0.1:2379"), "{shown}");
}

#[test]
fn debug_hides_a_base_url_that_does_not_parse() {
    let config = parse("base_url = \"http://svc:pw-s3cret@[bad/\"");
    let shown = format!("{config:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
}

// ---------------------------------------------------------------- shipped examples

#[test]
fn the_example_file_builds_a_client() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/client.toml"))
            .unwrap();
    let config = parse(&text);
    assert!(config.retry.is_some() && config.rate_limit.is_some());
    ApiClient::from_config(&config).unwrap();
}

#[test]
fn the_readme_configuration_example_builds_a_client() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Configuration"))
        .expect("README has a Configuration section");
    let blocks: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap())
        .collect();
    assert!(!blocks.is_empty(), "the section has a TOML example");
    for block in blocks {
        ApiClient::from_config(&parse(block)).unwrap();
    }
}

#[test]
fn endpoints_and_load_balance_come_from_the_config() {
    let cfg = parse(
        r#"
        endpoints = ["http://10.0.0.1:8080/api/", { url = "http://10.0.0.2:8080/api/", weight = 3 }]
        load_balance = "weighted_round_robin"
        resolver_refresh = "2s"
        "#,
    );
    assert_eq!(
        cfg.load_balance,
        Some(resilient_http::LoadBalance::WeightedRoundRobin)
    );
    assert_eq!(cfg.resolver_refresh, Some(Duration::from_secs(2)));
    let text = toml::to_string(&cfg).unwrap();
    assert_eq!(parse(&text), cfg, "round trip through {text}");
    let client = ApiClient::from_config(&cfg).unwrap();
    let weights: Vec<u32> = client.endpoints().iter().map(|e| e.weight).collect();
    assert_eq!(weights, [1, 3]);
    assert!(parse_error(r#"load_balance = "random""#).contains("random"));
    let both = parse(
        r#"
        base_url = "http://10.0.0.1/"
        endpoints = ["http://10.0.0.2/"]
        "#,
    );
    let err = ApiClient::from_config(&both).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[cfg(feature = "etcd")]
#[test]
fn an_etcd_section_names_the_registry() {
    let cfg = parse(
        r#"
        resolver_refresh = "5s"
        [etcd]
        url = "http://127.0.0.1:2379"
        prefix = "/services/orders/"
        "#,
    );
    let etcd = cfg.etcd.as_ref().unwrap();
    assert_eq!(etcd.prefix, "/services/orders/");
    let client = ApiClient::from_config(&cfg).unwrap();
    assert!(
        client.endpoints().is_empty(),
        "nothing resolved before the first call"
    );
    assert!(
        parse_error("[etcd]\nurl = \"http://h:2379\"\nprefix = \"/p/\"\nttl = 3").contains("ttl")
    );
}

#[cfg(feature = "dns")]
#[test]
fn a_dns_section_names_either_a_name_and_port_or_srv_records() {
    let cfg = parse(
        r#"
        [dns]
        name = "orders.internal"
        port = 8080
        "#,
    );
    let client = ApiClient::from_config(&cfg).unwrap();
    assert!(
        client.endpoints().is_empty(),
        "nothing resolved before the first call"
    );
    ApiClient::from_config(&parse("[dns]\nsrv = \"_http._tcp.orders.internal\"")).unwrap();
    for wrong in [
        "[dns]\nname = \"orders.internal\"",
        "[dns]\nport = 8080",
        "[dns]\nname = \"o.internal\"\nport = 1\nsrv = \"_http._tcp.o.internal\"",
        "[dns]\nhttps = true",
    ] {
        let err = ApiClient::from_config(&parse(wrong)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{wrong}");
    }
    assert!(parse_error("[dns]\nsrv = \"_x._tcp.o\"\nttl = 3").contains("ttl"));
    assert!(parse_error("[dns]\nsrv = \"_x._tcp.o\"\nnameserver = \"dns\"").contains("nameserver"));
}

#[cfg(all(feature = "dns", feature = "etcd"))]
#[test]
fn a_dns_and_an_etcd_section_together_are_a_config_error() {
    let cfg = parse(
        r#"
        [dns]
        srv = "_http._tcp.orders.internal"
        [etcd]
        url = "http://127.0.0.1:2379"
        prefix = "/services/orders/"
        "#,
    );
    let err = ApiClient::from_config(&cfg).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

// ---------------------------------------------------------------- every key reaches the client
//
// `Debug` of a builder leaves some options out (header values, redirects,
// pool, keepalive, HTTP/2, certificates, resolver refresh), so each key below
// is observed through what the client does with it.

/// Every key [`FULL_WITH_ENDPOINTS`] sets (as `section.key` paths), and the test
/// that watches it reach the client. A key added to the config without a
/// test here fails [`every_config_key_is_checked_by_a_test`].
#[cfg(feature = "etcd")]
const CHECKED_KEYS: &[(&str, &str)] = &[
    (
        "base_url",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "connect_timeout",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "read_timeout",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "attempt_timeout",
        "the_attempt_timeout_from_the_config_applies",
    ),
    (
        "total_timeout",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "max_concurrency",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "adaptive_concurrency.initial",
        "adaptive_concurrency_from_the_config_sets_the_limit",
    ),
    (
        "adaptive_concurrency.floor",
        "adaptive_concurrency_from_the_config_sets_the_limit",
    ),
    (
        "adaptive_concurrency.ceiling",
        "adaptive_concurrency_from_the_config_sets_the_limit",
    ),
    (
        "hedging.percentile",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "hedging.max_hedges",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "default_headers",
        "default_headers_user_agent_and_bearer_token_are_sent",
    ),
    (
        "user_agent",
        "default_headers_user_agent_and_bearer_token_are_sent",
    ),
    (
        "bearer_token",
        "default_headers_user_agent_and_bearer_token_are_sent",
    ),
    (
        "max_response_bytes",
        "max_response_bytes_from_the_config_applies",
    ),
    (
        "max_redirects",
        "max_redirects_from_the_config_bounds_the_redirects_followed",
    ),
    (
        "pool_max_idle_per_host",
        "pool_max_idle_per_host_zero_from_the_config_opens_a_connection_per_call",
    ),
    (
        "pool_idle_timeout",
        "pool_idle_timeout_from_the_config_closes_idle_connections",
    ),
    (
        "tcp_keepalive",
        "tcp_keepalive_from_the_config_arms_the_sockets_keepalive_timer",
    ),
    (
        "http2_prior_knowledge",
        "http2_prior_knowledge_from_the_config_speaks_http2_at_once",
    ),
    (
        "tls_danger_accept_invalid_certs",
        "security.rs: danger_accept_invalid_certs_from_a_config_reaches_the_client",
    ),
    (
        "endpoints",
        "endpoints_and_load_balance_come_from_the_config",
    ),
    (
        "load_balance",
        "load_balance_from_the_config_orders_the_endpoints_calls_go_to",
    ),
    (
        "resolver_refresh",
        "resolver_refresh_and_load_balance_from_the_config_drive_an_etcd_resolver",
    ),
    (
        "etcd.url",
        "resolver_refresh_and_load_balance_from_the_config_drive_an_etcd_resolver",
    ),
    (
        "etcd.prefix",
        "resolver_refresh_and_load_balance_from_the_config_drive_an_etcd_resolver",
    ),
    (
        "etcd.base_path",
        "resolver_refresh_and_load_balance_from_the_config_drive_an_etcd_resolver",
    ),
    (
        "retry.max_attempts",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "retry.initial_backoff",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "retry.max_backoff",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "retry.jitter",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "retry.max_retry_after",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "retry.retry_server_errors",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "retry.budget.ratio",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "retry.budget.min_per_second",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "retry.budget.window",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "circuit_breaker.consecutive_failures",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "circuit_breaker.failure_rate.threshold",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "circuit_breaker.failure_rate.window",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "circuit_breaker.failure_rate.min_calls",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "circuit_breaker.open_duration",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "circuit_breaker.half_open_max_calls",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "rate_limit.per_minute",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "rate_limit.burst",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "rate_limit.fail_fast",
        "a_config_gives_the_same_builder_as_the_code_it_stands_for",
    ),
];

/// The `rate_limit.shared` keys (feature `redis`), watched by a test that
/// needs a real Redis.
#[cfg(all(feature = "etcd", feature = "redis"))]
const SHARED_KEYS: &[(&str, &str)] = &[
    (
        "rate_limit.shared.url",
        "redis.rs: a_shared_limit_from_the_config_reaches_redis",
    ),
    (
        "rate_limit.shared.key",
        "redis.rs: a_shared_limit_from_the_config_reaches_redis",
    ),
    (
        "rate_limit.shared.timeout",
        "redis.rs: a_shared_limit_from_the_config_reaches_redis",
    ),
    (
        "rate_limit.shared.connect_timeout",
        "redis.rs: a_shared_limit_from_the_config_reaches_redis",
    ),
    (
        "rate_limit.shared.open_duration",
        "redis.rs: a_shared_limit_from_the_config_reaches_redis",
    ),
    (
        "rate_limit.shared.lease",
        "redis.rs: a_shared_limit_from_the_config_reaches_redis",
    ),
    (
        "rate_limit.shared.on_store_error.local",
        "redis.rs: a_shared_limit_from_the_config_reaches_redis",
    ),
];
#[cfg(all(feature = "etcd", not(feature = "redis")))]
const SHARED_KEYS: &[(&str, &str)] = &[];

/// The `dns` keys (feature `dns`), watched by tests of tests/dns.rs.
#[cfg(all(feature = "etcd", feature = "dns"))]
const DNS_KEYS: &[(&str, &str)] = &[
    (
        "dns.name",
        "dns.rs: a_dns_section_in_the_config_drives_a_dns_resolver",
    ),
    (
        "dns.port",
        "dns.rs: a_dns_section_in_the_config_drives_a_dns_resolver",
    ),
    (
        "dns.nameserver",
        "dns.rs: a_dns_section_in_the_config_drives_a_dns_resolver",
    ),
    (
        "dns.base_path",
        "dns.rs: a_dns_section_in_the_config_drives_a_dns_resolver",
    ),
    (
        "dns.srv",
        "dns.rs: an_srv_dns_section_in_the_config_drives_a_dns_resolver",
    ),
    (
        "dns.https",
        "tls.rs: dns_endpoints_keep_the_service_name_for_sni_and_the_certificate",
    ),
];
#[cfg(all(feature = "etcd", not(feature = "dns")))]
const DNS_KEYS: &[(&str, &str)] = &[];

/// Every key of `dns` (one resolver section is allowed at a time: these are
/// only written out, never built).
#[cfg(all(feature = "etcd", feature = "dns"))]
const FULL_DNS: &str = r#"
[dns]
name = "orders.internal"
port = 8080
srv = "_http._tcp.orders.internal"
nameserver = "127.0.0.1:5353"
https = true
base_path = "/api/"
"#;
/// Every key of the `cache` section (feature `cache`).
#[cfg(feature = "cache")]
const FULL_CACHE: &str = r#"
[cache]
max_entries = 500
max_bytes = 1048576
stale_if_error = "5m"
stale_while_revalidate = "30s"
store_credentialed = true
"#;

/// The `cache` keys, watched by one test.
#[cfg(all(feature = "etcd", feature = "cache"))]
const CACHE_KEYS: &[(&str, &str)] = &[
    (
        "cache.max_entries",
        "a_cache_section_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "cache.max_bytes",
        "a_cache_section_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "cache.stale_if_error",
        "a_cache_section_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "cache.stale_while_revalidate",
        "a_cache_section_gives_the_same_builder_as_the_code_it_stands_for",
    ),
    (
        "cache.store_credentialed",
        "a_cache_section_gives_the_same_builder_as_the_code_it_stands_for",
    ),
];
#[cfg(all(feature = "etcd", not(feature = "cache")))]
const CACHE_KEYS: &[(&str, &str)] = &[];

#[cfg(feature = "cache")]
#[test]
fn a_cache_section_gives_the_same_builder_as_the_code_it_stands_for() {
    let config = parse(FULL_CACHE);
    assert_eq!(
        format!("{:?}", ApiClientBuilder::from_config(&config)),
        format!(
            "{:?}",
            ApiClient::builder().cache(
                resilient_http::Cache::in_memory(500)
                    .max_bytes(1_048_576)
                    .stale_if_error(Duration::from_secs(300))
                    .stale_while_revalidate(Duration::from_secs(30))
                    .store_credentialed(true)
            )
        )
    );
    assert_eq!(parse(&toml::to_string(&config).unwrap()), config);
    // An empty section is a cache of 10,000 entries.
    assert_eq!(
        format!("{:?}", ApiClientBuilder::from_config(&parse("[cache]"))),
        format!(
            "{:?}",
            ApiClient::builder().cache(resilient_http::Cache::in_memory(10_000))
        )
    );
    assert!(parse_error("cache = { max_entrie = 5 }").contains("max_entrie"));
}

/// Every key of `rate_limit.shared`.
#[cfg(all(feature = "etcd", feature = "redis"))]
const FULL_SHARED: &str = r#"
[rate_limit]
per_second = 1
shared = { url = "redis://127.0.0.1:6379/", key = "k", timeout = "5ms", connect_timeout = "1s", open_duration = "2s", lease = 1, on_store_error = { local = 0.5 } }
"#;

/// [`FULL`] plus the keys that exclude `base_url` or need a feature.
#[cfg(feature = "etcd")]
const FULL_WITH_ENDPOINTS: &str = r#"
adaptive_concurrency = { initial = 10, floor = 2, ceiling = 50 }
endpoints = ["http://10.0.0.1:8080/api/"]
load_balance = "round_robin"
resolver_refresh = "2s"
[etcd]
url = "http://127.0.0.1:2379"
prefix = "/services/orders/"
base_path = "/api/"
"#;

/// The `section.key` paths of every value in `value` (tables are walked,
/// their own keys are not listed).
#[cfg(feature = "etcd")]
fn key_paths(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
    if let toml::Value::Table(table) = value {
        for (key, inner) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            // `default_headers` is a map of names, not keys of the config.
            if path != "default_headers" && inner.is_table() {
                key_paths(&path, inner, out);
            } else {
                out.push(path);
            }
        }
    }
}

#[cfg(feature = "etcd")]
#[test]
fn every_config_key_is_checked_by_a_test() {
    let mut config = parse(FULL);
    let extra = parse(FULL_WITH_ENDPOINTS);
    config.endpoints = extra.endpoints;
    config.load_balance = extra.load_balance;
    config.resolver_refresh = extra.resolver_refresh;
    config.etcd = extra.etcd;
    #[cfg(feature = "redis")]
    {
        let shared = parse(FULL_SHARED).rate_limit.unwrap().shared;
        config.rate_limit.as_mut().unwrap().shared = shared;
    }
    #[cfg(feature = "dns")]
    {
        config.dns = parse(FULL_DNS).dns;
    }
    #[cfg(feature = "cache")]
    {
        config.cache = parse(FULL_CACHE).cache;
    }
    let checked: Vec<&(&str, &str)> = CHECKED_KEYS
        .iter()
        .chain(SHARED_KEYS)
        .chain(DNS_KEYS)
        .chain(CACHE_KEYS)
        .collect();
    config.adaptive_concurrency = extra.adaptive_concurrency;
    // Written out, every field that is set shows as a key.
    let written = toml::Value::try_from(&config).unwrap();
    let mut keys = Vec::new();
    key_paths("", &written, &mut keys);

    let unchecked: Vec<&String> = keys
        .iter()
        .filter(|k| !checked.iter().any(|(c, _)| c == k))
        .collect();
    let stale: Vec<&str> = checked
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| !keys.iter().any(|k| k == c))
        .collect();

    assert!(keys.len() >= checked.len(), "{keys:?}");
    assert!(
        unchecked.is_empty(),
        "config keys no test watches reach the client: {unchecked:?}"
    );
    assert!(stale.is_empty(), "keys the config no longer has: {stale:?}");
}

/// A server on 127.0.0.1 that answers every request with `200 ok` on a
/// kept-alive HTTP/1.1 connection, and counts the connections it accepts.
/// The peer address of each connection goes to `peers`.
async fn counting_server() -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<SocketAddr>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let peers = Arc::new(Mutex::new(Vec::new()));
    let (count, seen) = (Arc::clone(&accepted), Arc::clone(&peers));
    tokio::spawn(async move {
        // Bounded: a test makes a few connections.
        for _ in 0..RAW_SERVER_MAX_CONNECTIONS {
            let Ok((mut stream, peer)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            seen.lock().unwrap().push(peer);
            tokio::spawn(async move {
                while read_request_head(&mut stream).await {
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, accepted, peers)
}

#[tokio::test]
async fn max_redirects_from_the_config_bounds_the_redirects_followed() {
    let server = MockServer::start().await;
    for n in 1..=3 {
        Mock::given(path(format!("/r/{n}")))
            .respond_with(
                ResponseTemplate::new(302).insert_header("location", format!("/r/{}", n - 1)),
            )
            .mount(&server)
            .await;
    }
    Mock::given(path("/r/0"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let client =
        ApiClient::from_config(&fast_config(&server, "max_redirects = 2\nretry = false")).unwrap();

    let two = client.get("r/2").send().await;
    let three = client.get("r/3").send().await.unwrap_err();

    assert!(two.is_ok(), "two redirects are allowed: {two:?}");
    assert_eq!(three.kind(), ErrorKind::Client, "{three}");
}

#[tokio::test]
async fn pool_max_idle_per_host_zero_from_the_config_opens_a_connection_per_call() {
    let (url, accepted, _) = counting_server().await;
    let config = parse(&format!(
        "base_url = \"{url}\"\npool_max_idle_per_host = 0\nretry = false"
    ));
    let client = ApiClient::from_config(&config).unwrap();

    for _ in 0..3 {
        client.get("x").send().await.unwrap();
    }

    // With the default pool the three calls would share one connection.
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn pool_idle_timeout_from_the_config_closes_idle_connections() {
    let (url, accepted, _) = counting_server().await;
    let config = parse(&format!(
        "base_url = \"{url}\"\npool_idle_timeout = \"10ms\"\nretry = false"
    ));
    let client = ApiClient::from_config(&config).unwrap();

    client.get("x").send().await.unwrap();
    // Idle far longer than the timeout (the default keeps it 90 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.get("x").send().await.unwrap();

    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// The keepalive timer of the client socket whose local port is `port`, in
/// seconds, from `/proc/net/tcp` (`tr` 2 is "keepalive or another timer").
#[cfg(target_os = "linux")]
fn keepalive_timer_secs(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) {
            return None;
        }
        let (timer, when) = fields.get(5)?.split_once(':')?;
        // `when` is in USER_HZ ticks (100 per second).
        (timer == "02").then(|| u64::from_str_radix(when, 16).ok().map(|t| t / 100))?
    })
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn tcp_keepalive_from_the_config_arms_the_sockets_keepalive_timer() {
    let (url, _, peers) = counting_server().await;
    let config = parse(&format!(
        "base_url = \"{url}\"\ntcp_keepalive = \"1h\"\nretry = false"
    ));
    let client = ApiClient::from_config(&config).unwrap();

    client.get("x").send().await.unwrap();
    let peer = peers.lock().unwrap()[0];
    // Right after a call the socket's timer may still be a delayed ACK's:
    // wait (bounded) for the idle socket's keepalive timer to show.
    let an_hour = |t: Option<u64>| t.is_some_and(|s| (3000..=3600).contains(&s));
    let mut timer = keepalive_timer_secs(peer.port());
    for _ in 0..100 {
        if an_hour(timer) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        timer = keepalive_timer_secs(peer.port());
    }

    // The idle connection waits about an hour before its first probe
    // (without the option the socket has no keepalive timer at all).
    assert!(
        an_hour(timer),
        "keepalive timer of the client socket: {timer:?} s"
    );
}

#[tokio::test]
async fn http2_prior_knowledge_from_the_config_speaks_http2_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let first_bytes = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut preface = [0u8; 14];
        stream.read_exact(&mut preface).await.unwrap();
        preface
    });
    let config = parse(&format!(
        "base_url = \"{url}\"\nhttp2_prior_knowledge = true\nretry = false\ntotal_timeout = \"2s\""
    ));
    let client = ApiClient::from_config(&config).unwrap();

    // The server never answers: only what the client sent first matters.
    let _ = client.get("x").send().await;
    let preface = first_bytes.await.unwrap();

    assert_eq!(&preface, b"PRI * HTTP/2.0", "HTTP/2 connection preface");
}

#[tokio::test]
async fn load_balance_from_the_config_orders_the_endpoints_calls_go_to() {
    let (a, b) = (named_server("a").await, named_server("b").await);
    let config = parse(&format!(
        r#"
        endpoints = ["{}", {{ url = "{}", weight = 3 }}]
        load_balance = "weighted_round_robin"
        retry = false
        "#,
        a.uri(),
        b.uri()
    ));
    let client = ApiClient::from_config(&config).unwrap();

    let order = served_in_turn(&client, 40).await;

    // Smooth weighted round robin of weights 1 and 3; the default strategy
    // would draw at random.
    assert_eq!(order, "babb".repeat(10));
}

/// A server that answers every request with `name`.
async fn named_server(name: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_string(name))
        .mount(&server)
        .await;
    server
}

/// The names of the servers that answered `calls` calls, in order.
async fn served_in_turn(client: &ApiClient, calls: usize) -> String {
    let mut order = String::new();
    for _ in 0..calls {
        order.push_str(&client.get("x").send().await.unwrap().text().unwrap());
    }
    order
}

#[cfg(feature = "etcd")]
#[tokio::test]
async fn resolver_refresh_and_load_balance_from_the_config_drive_an_etcd_resolver() {
    // A stand-in for etcd's JSON gateway: two instances under the prefix,
    // one as `host:port` (which gets the configured base path).
    let (a, b) = (named_server("a").await, named_server("b").await);
    let etcd = MockServer::start().await;
    let kv = |key: &str, value: &str| serde_json::json!({ "key": base64(key.as_bytes()), "value": base64(value.as_bytes()) });
    let b_addr = b.address().to_string();
    Mock::given(wiremock::matchers::method("POST"))
        .and(path("/v3/kv/range"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "kvs": [kv("/services/orders/a", &a.uri()), kv("/services/orders/b", &b_addr)]
        })))
        .mount(&etcd)
        .await;
    let config = parse(&format!(
        r#"
        resolver_refresh = "50ms"
        load_balance = "round_robin"
        retry = false
        [etcd]
        url = "{}"
        prefix = "/services/orders/"
        base_path = "/api/"
        "#,
        etcd.uri()
    ));
    let client = ApiClient::from_config(&config).unwrap();

    let order = served_in_turn(&client, 20).await;
    // Refreshed in the background every 50 ms (the default is 10 s): wait,
    // within a bound far above that, for two more lookups.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while received(&etcd).await < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no background refresh within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Round robin alternates; the default strategy would draw at random.
    assert!(
        order == "ab".repeat(10) || order == "ba".repeat(10),
        "{order}"
    );
    let paths: Vec<String> = b
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.url.path().to_owned())
        .collect();
    assert!(paths.iter().all(|p| p == "/api/x"), "base_path: {paths:?}");
}

// ---------------------------------------------------------------- README's Defaults table
//
// The README's table is the one user-facing copy of the defaults; each test
// reads a value from it and checks the code has the same.

/// The value cell of the README Defaults row whose option cell starts with `option`.
fn readme_default(option: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Defaults\n"))
        .expect("README has a Defaults section");
    let row = section
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .find(|l| l.starts_with(option))
        .unwrap_or_else(|| panic!("no Defaults row for {option}"));
    let cells: Vec<&str> = row.split(" | ").collect();
    assert_eq!(cells.len(), 2, "{row}");
    cells[1].trim_end_matches(" |").trim().to_owned()
}

/// The whole number just before `suffix` in `text`.
fn number_before(text: &str, suffix: &str) -> u64 {
    let at = text
        .find(suffix)
        .unwrap_or_else(|| panic!("{suffix:?} not in {text:?}"));
    let digits: String = text[..at]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number before {suffix:?} in {text:?}"))
}

/// A README duration cell such as `2 s`.
fn readme_seconds(option: &str) -> Duration {
    let cell = readme_default(option);
    assert!(cell.ends_with(" s"), "{option}: {cell}");
    Duration::from_secs(number_before(&cell, " s"))
}

fn default_builder_debug() -> String {
    format!("{:?}", ApiClient::builder())
}

#[test]
fn the_readme_connect_timeout_default_is_the_codes() {
    let readme = readme_seconds("`connect_timeout`");
    assert_eq!(resilient_http::DEFAULT_CONNECT_TIMEOUT, readme);
    assert!(default_builder_debug().contains(&format!("connect_timeout: {readme:?},")));
}

#[test]
fn the_readme_read_timeout_default_is_the_codes() {
    let readme = readme_seconds("`read_timeout`");
    assert_eq!(resilient_http::DEFAULT_READ_TIMEOUT, readme);
    assert!(default_builder_debug().contains(&format!("read_timeout: {readme:?},")));
}

#[test]
fn the_readme_attempt_timeout_default_is_the_codes() {
    let readme = readme_seconds("`attempt_timeout`");
    assert_eq!(resilient_http::DEFAULT_ATTEMPT_TIMEOUT, readme);
    assert!(default_builder_debug().contains(&format!("attempt_timeout: {readme:?},")));
}

#[test]
fn the_readme_total_timeout_default_is_the_codes() {
    let readme = readme_seconds("`total_timeout`");
    assert_eq!(resilient_http::DEFAULT_TOTAL_TIMEOUT, readme);
    assert!(default_builder_debug().contains(&format!("total_timeout: {readme:?},")));
}

#[test]
fn the_readme_max_response_bytes_default_is_the_codes() {
    let mib = number_before(&readme_default("`max_response_bytes`"), " MiB");
    let bytes = usize::try_from(mib).unwrap() * 1024 * 1024;
    assert_eq!(resilient_http::DEFAULT_MAX_RESPONSE_BYTES, bytes);
    assert!(default_builder_debug().contains(&format!("max_response_bytes: {bytes}")));
}

#[test]
fn the_readme_max_redirects_default_is_the_codes() {
    let cell = readme_default("redirects");
    let n = cell
        .strip_prefix("followed, at most ")
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{cell}"));
    assert_eq!(
        resilient_http::DEFAULT_MAX_REDIRECTS,
        usize::try_from(n).unwrap()
    );
}

#[test]
fn the_readme_retry_max_attempts_default_is_the_codes() {
    let n = number_before(&readme_default("retry |"), " attempts");
    let n = u32::try_from(n).unwrap();
    assert_eq!(
        RetryPolicy::exponential(),
        RetryPolicy::exponential().max_attempts(n)
    );
    assert!(default_builder_debug().contains(&format!("retry: {:?}", RetryPolicy::exponential())));
}

#[test]
fn the_readme_backoff_defaults_are_the_codes() {
    let cell = readme_default("retry |");
    let initial = Duration::from_millis(number_before(&cell, " ms initial backoff"));
    let cap = Duration::from_secs(number_before(&cell, " s cap"));
    let retry_after = Duration::from_secs(number_before(&cell, " s, server errors"));
    assert!(cell.contains("full jitter"), "{cell}");
    assert!(
        cell.contains("server errors (500...) not retried"),
        "{cell}"
    );
    assert_eq!(
        RetryPolicy::exponential(),
        RetryPolicy::exponential()
            .initial_backoff(initial)
            .max_backoff(cap)
            .max_retry_after(retry_after)
            .jitter(true)
            .retry_server_errors(false)
    );
}

#[test]
fn the_readme_retry_budget_floor_and_window_are_the_codes() {
    let cell = readme_default("retry budget");
    let window = Duration::from_secs(number_before(&cell, " s, plus a floor"));
    let floor = u32::try_from(number_before(&cell, " retries per second")).unwrap();
    assert_eq!(
        RetryBudget::default(),
        RetryBudget::default().min_per_second(floor).window(window)
    );
    assert_eq!(
        RetryPolicy::exponential(),
        RetryPolicy::exponential().budget(RetryBudget::default())
    );
}

#[test]
fn the_readme_circuit_breaker_open_duration_is_the_codes() {
    let cell = readme_default("circuit breaker");
    let open = Duration::from_secs(number_before(&cell, " s; "));
    assert!(
        cell.contains(&format!("open {} s", open.as_secs())),
        "{cell}"
    );
    assert_eq!(
        format!("{:?}", CircuitBreakerConfig::default()),
        format!("{:?}", CircuitBreakerConfig::default().open_duration(open))
    );
    assert!(default_builder_debug().contains(&format!(
        "circuit_breaker: Some({:?})",
        CircuitBreakerConfig::default()
    )));
}

#[test]
fn the_readme_rate_limit_and_concurrency_defaults_are_off() {
    assert_eq!(readme_default("rate limit / max concurrency"), "off / off");
    let debug = default_builder_debug();
    assert!(debug.contains("rate_limit: None,"), "{debug}");
    assert!(debug.contains("max_concurrency: None,"), "{debug}");
}

#[tokio::test]
async fn the_readme_user_agent_default_is_sent() {
    let agent = readme_default("`user_agent`")
        .trim_matches('`')
        .replace("<version>", env!("CARGO_PKG_VERSION"));
    let server = MockServer::start().await;
    Mock::given(header("user-agent", agent.as_str()))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let client = ApiClient::new(server.uri()).unwrap();

    let resp = client.get("x").send().await;

    assert!(resp.is_ok(), "user agent {agent}: {resp:?}");
}

// ---------------------------------------------------------------- bodies

#[tokio::test]
async fn a_body_that_cannot_be_serialized_is_a_config_error_and_nothing_is_sent() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let client = ApiClient::new(server.uri()).unwrap();
    // JSON object keys must be strings.
    let body = BTreeMap::from([((1, 2), "pair as a key")]);

    let err = client.post("x").json(&body).send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert_eq!(err.attempts(), 0, "{err}");
}
