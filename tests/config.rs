//! Configuration files: `ApiClientConfig` read from TOML, written back, and the
//! clients built from it.
// Helpers outside #[test] fns panic on a failed setup step, like the tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::received;
use resilient_http::{
    ApiClient, ApiClientBuilder, ApiClientConfig, CircuitBreakerConfig, CircuitBreakerSection,
    ErrorKind, FailureRateSection, RateLimit, RateLimitSection, RetryBudget, RetryBudgetSection,
    RetryPolicy, RetrySection, TimeoutPhase,
};
use wiremock::matchers::{any, header};
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
danger_accept_invalid_certs = true

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
        .default_header("x-api-key", "k-123")
        .default_header("x-tenant", "acme")
        .bearer_auth("t0ken")
        .user_agent("orders-service/1.4")
        .max_response_bytes(1_048_576)
        .tls_danger_accept_invalid_certs(true);
    assert_eq!(format!("{from_file:?}"), format!("{in_code:?}"));
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
