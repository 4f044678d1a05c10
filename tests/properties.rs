//! Properties of every parser of untrusted input, through the public API:
//! `Retry-After` values, request paths joined onto the base URL, header names
//! and values, credential and agent strings, and base URLs. Whatever the input,
//! the client never panics, and it answers with the documented kind and a
//! value consistent with the input.
//!
//! Cases that would do I/O talk only to 127.0.0.1: a wiremock server for
//! `Retry-After`, and otherwise a loopback port that refuses connections, so a
//! request that gets past every parser ends as a connect error at once.

// Helpers outside #[test] fns panic on a failed setup step, like the tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::fmt::Debug;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use resilient_http::{
    ApiClient, ApiClientBuilder, ErrorKind, HeaderName, HeaderValue, RetryBudget, RetryPolicy,
    StatusCode, Url,
};
use tokio::net::TcpSocket;
use wiremock::matchers::any as any_request;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Cases of a property whose every case is an HTTP exchange.
const HTTP_CASES: u32 = 96;
/// Cases of a property that does no I/O (or only a refused connect).
const LOCAL_CASES: u32 = 256;

/// The request header whose value the Retry-After server echoes back.
const ECHO: &str = "x-echo-retry-after";
/// The longest Retry-After the client waits for in the Retry-After property.
const MAX_RETRY_AFTER: Duration = Duration::from_millis(20);
/// How far an HTTP-date's delay may be from the one computed here (the two
/// clocks are read at different moments; dates have one-second resolution).
const DATE_SLACK: Duration = Duration::from_secs(2);

/// Runs `test` on `cases` inputs from `strategy`; panics with the smallest
/// failing input. Nothing is written to disk.
fn check<S>(cases: u32, strategy: &S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(failure) = runner.run(strategy, test) {
        panic!("{failure}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A loopback port that refuses connections: the socket is bound, so no one
/// else gets the port while it lives, but it does not listen.
fn refused_port() -> (TcpSocket, u16) {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

/// One attempt, no breaker (it would turn connect errors into rejections),
/// short timeouts.
fn offline_builder(base: &str) -> ApiClientBuilder {
    ApiClient::builder()
        .base_url(base)
        .connect_timeout(Duration::from_secs(1))
        .attempt_timeout(Duration::from_secs(2))
        .total_timeout(Duration::from_secs(3))
        .no_retry()
        .no_circuit_breaker()
}

/// Whether an error is what a request to the refused port must end with.
fn is_refused(err: &resilient_http::Error) -> bool {
    err.kind() == ErrorKind::Retryable && err.is_connect()
}

// ---------------------------------------------------------------------------
// Retry-After
// ---------------------------------------------------------------------------

/// Answers 503 with `Retry-After` set to the value of the request's [`ECHO`]
/// header (no `Retry-After` when the request has none).
struct EchoRetryAfter;

impl Respond for EchoRetryAfter {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let template = ResponseTemplate::new(503);
        match request.headers.get(ECHO) {
            Some(value) => template.insert_header("retry-after", value.clone()),
            None => template,
        }
    }
}

/// What the client must make of a `Retry-After` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    /// Ignored: not delta-seconds, not an HTTP-date.
    Nothing,
    /// Delta-seconds: exactly this long (saturating).
    Exactly(Duration),
    /// An HTTP-date: this long from now (zero if past), give or take the clock.
    About(Duration),
}

/// RFC 9110 §10.2.3 as the contract reads: delta-seconds (digits only,
/// saturating) or an HTTP-date (a past one means now); anything else is ignored.
fn expected_retry_after(raw: &[u8], now: SystemTime) -> Expected {
    // A value that is not visible ASCII cannot be read as either form.
    let value = HeaderValue::from_bytes(raw).unwrap();
    let Ok(text) = value.to_str().map(str::trim) else {
        return Expected::Nothing;
    };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let secs = text.parse::<u64>().unwrap_or(u64::MAX);
        return Expected::Exactly(Duration::from_secs(secs));
    }
    match httpdate::parse_http_date(text) {
        Ok(when) => Expected::About(when.duration_since(now).unwrap_or(Duration::ZERO)),
        Err(_) => Expected::Nothing,
    }
}

/// The three HTTP-date forms (IMF-fixdate, RFC 850, asctime) of `secs` after
/// the epoch, plus a few near-misses.
fn http_dates(secs: u64) -> Vec<String> {
    let fixdate = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let parts: Vec<&str> = fixdate.split_whitespace().collect();
    let (weekday, day, month, year, time) = (
        parts[0].trim_end_matches(','),
        parts[1],
        parts[2],
        parts[3],
        parts[4],
    );
    let long_weekday = match weekday {
        "Mon" => "Monday",
        "Tue" => "Tuesday",
        "Wed" => "Wednesday",
        "Thu" => "Thursday",
        "Fri" => "Friday",
        "Sat" => "Saturday",
        _ => "Sunday",
    };
    let short_year = &year[year.len().saturating_sub(2)..];
    let day_padded = format!("{:>2}", day.trim_start_matches('0'));
    vec![
        fixdate.clone(),
        format!("{long_weekday}, {day}-{month}-{short_year} {time} GMT"),
        format!("{weekday} {month} {day_padded} {time} {year}"),
        fixdate.replace("GMT", "UTC"),
        fixdate.to_lowercase(),
        fixdate.replace(' ', "  "),
        fixdate.trim_end_matches(" GMT").to_owned(),
    ]
}

/// `Retry-After` values: numbers of every shape, dates of every form, near
/// and far, visible-ASCII garbage and bytes that are not ASCII at all.
fn retry_after_values() -> impl Strategy<Value = Vec<u8>> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let dates = |range: std::ops::RangeInclusive<u64>| {
        (range, any::<prop::sample::Index>()).prop_map(|(secs, pick)| {
            let forms = http_dates(secs);
            forms[pick.index(forms.len())].clone().into_bytes()
        })
    };
    prop_oneof![
        // delta-seconds, small to far past u64::MAX
        1 => "[0-9]{1,3}".prop_map(String::into_bytes),
        1 => "[0-9]{15,30}".prop_map(String::into_bytes),
        // negative and almost-numbers
        1 => "-[0-9]{1,20}".prop_map(String::into_bytes),
        1 => "[ +]{0,2}[0-9]{1,6}(\\.[0-9]{1,3}|e[0-9]{1,3}|s| ms|,[0-9])?[ ]{0,2}"
            .prop_map(String::into_bytes),
        1 => Just(b"18446744073709551615".to_vec()),
        1 => Just(b"18446744073709551616".to_vec()),
        1 => Just(b"0".to_vec()),
        1 => Just(Vec::new()),
        // HTTP-dates: around now, anywhere from 1970 to 9999
        3 => dates(now.saturating_sub(120)..=now + 120),
        3 => dates(0..=253_402_300_799),
        // visible ASCII and a few bytes beyond
        1 => "[ -~]{0,40}".prop_map(String::into_bytes),
        1 => prop::collection::vec(
            prop_oneof![0x20u8..=0x7e, 0x80u8..=0xff, Just(b'\t')],
            0..24
        ),
    ]
}

#[test]
fn any_retry_after_value_ends_in_a_retryable_error_that_reads_it_as_the_rfc_says() {
    let rt = runtime();
    let (server, client) = rt.block_on(async {
        let server = MockServer::start().await;
        Mock::given(any_request())
            .respond_with(EchoRetryAfter)
            .mount(&server)
            .await;
        let client = ApiClient::builder()
            .base_url(server.uri())
            .attempt_timeout(Duration::from_secs(2))
            .total_timeout(Duration::from_secs(5))
            .retry(
                RetryPolicy::exponential()
                    .max_attempts(2)
                    .initial_backoff(Duration::from_millis(1))
                    .jitter(false)
                    .max_retry_after(MAX_RETRY_AFTER)
                    .budget(RetryBudget::unlimited()),
            )
            .no_circuit_breaker()
            .build()
            .unwrap();
        (server, client)
    });

    // What the cases covered: ignored, delta-seconds, dates; retried or not.
    let seen: [Cell<u32>; 5] = Default::default();
    check(HTTP_CASES, &retry_after_values(), |raw| {
        let value = HeaderValue::from_bytes(&raw).unwrap();
        let expected = expected_retry_after(&raw, SystemTime::now());
        let result = rt.block_on(client.get("ra").header(ECHO, value).send());

        let err = match result {
            Ok(resp) => return Err(TestCaseError::fail(format!("503 gave Ok: {resp:?}"))),
            Err(err) => err,
        };
        prop_assert_eq!(err.kind(), ErrorKind::Retryable, "{:?}", err);
        prop_assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        let got = err.retry_after();
        match expected {
            Expected::Nothing => prop_assert_eq!(got, None),
            Expected::Exactly(d) => prop_assert_eq!(got, Some(d)),
            Expected::About(d) => {
                let got = got.ok_or_else(|| TestCaseError::fail("an HTTP-date was ignored"))?;
                let off = got.abs_diff(d);
                prop_assert!(
                    off <= DATE_SLACK,
                    "date read as {:?}, expected {:?}",
                    got,
                    d
                );
            }
        }
        // A Retry-After within max_retry_after replaces the backoff and the
        // call is retried (as it is without one); a longer one ends the call
        // at once.
        let too_long = got.is_some_and(|d| d > MAX_RETRY_AFTER);
        let kind = match expected {
            Expected::Nothing => 0,
            Expected::Exactly(_) => 1,
            Expected::About(_) => 2,
        };
        for i in [kind, if too_long { 3 } else { 4 }] {
            seen[i].set(seen[i].get() + 1);
        }
        prop_assert_eq!(err.attempts(), if too_long { 1 } else { 2 });
        Ok(())
    });

    let seen = seen.map(Cell::into_inner);
    assert!(
        seen.iter().all(|&n| n > 0),
        "cases covered ignored/seconds/date/too long/retried: {seen:?}"
    );
    drop(server);
}

// ---------------------------------------------------------------------------
// URL joining
// ---------------------------------------------------------------------------

/// Request paths: concatenations of fragments that trip URL parsers, absolute
/// URLs (to the refused port, or to places no test may go), and unicode.
fn request_paths(port: u16) -> impl Strategy<Value = String> {
    let fragments = prop::sample::select(vec![
        "",
        ".",
        "..",
        "/",
        "//",
        "///",
        "%",
        "%2",
        "%2e",
        "%2E%2e",
        "%2f",
        "%zz",
        "%00",
        "%ff",
        "?",
        "#",
        "?q=1&r=%",
        "#frag",
        " ",
        "\t",
        "\n",
        "\r\n",
        "\0",
        "\u{7f}",
        "\\",
        "@",
        ":",
        "::",
        "[",
        "]",
        "[::1]",
        ";",
        "~",
        "|",
        "{}",
        "é",
        "日本",
        "🦀",
        "\u{202e}",
        "\u{feff}",
        "users",
        "a b",
        "mailto:x",
        "http:",
        "https:",
        "http://",
        "HTTP://",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "data:,x",
        "ftp://h/",
        "localhost",
        "127.0.0.1",
        "u:p@",
    ]);
    let local = vec![
        format!("http://127.0.0.1:{port}/x"),
        format!("//127.0.0.1:{port}/y"),
        format!("HTTP://u:p@127.0.0.1:{port}/z?q#f"),
    ];
    // Absolute and scheme-relative URLs elsewhere: built, never sent.
    let elsewhere = prop::sample::select(vec![
        "http://example.invalid/",
        "//example.invalid",
        "https://[::1]/",
        "//localhost:1/",
        "http://0x7f.1/",
    ]);
    let fragment = prop_oneof![
        6 => fragments.prop_map(str::to_owned),
        1 => prop::sample::select(local),
        1 => elsewhere.prop_map(str::to_owned),
        1 => "\\PC{0,6}",
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(fragment, 0..8).prop_map(|parts| parts.concat())
}

/// Where a joined URL points, as the `url` crate sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Not a URL, or not http(s): a `Config` error before any I/O.
    Invalid,
    /// The refused port: the request may be sent, and is refused.
    Refused,
    /// Some other host or port: never sent from a test.
    Elsewhere,
}

/// Where `path` goes from a client that allows path escapes: where
/// `Url::join` sends it, except for the text the client always refuses
/// (control characters, outer spaces, a fragment in a relative path), which
/// the URL parser would otherwise change silently.
fn target_of(base: &Url, path: &str, port: u16) -> Target {
    let absolute = path.split_once("://").is_some_and(|(scheme, _)| {
        scheme
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    if path.bytes().any(|b| b.is_ascii_control())
        || path.starts_with(' ')
        || path.ends_with(' ')
        || (!absolute && path.contains('#'))
    {
        return Target::Invalid;
    }
    match base.join(path) {
        Err(_) => Target::Invalid,
        Ok(url) if !matches!(url.scheme(), "http" | "https") => Target::Invalid,
        Ok(url) if url.host_str() == Some("127.0.0.1") && url.port() == Some(port) => {
            Target::Refused
        }
        Ok(_) => Target::Elsewhere,
    }
}

#[test]
fn any_request_path_joins_to_a_sendable_url_or_is_a_config_error() {
    let rt = runtime();
    let (_socket, port) = refused_port();
    let bases = [
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}/api"),
        format!("http://127.0.0.1:{port}/api/v1/"),
        format!("http://user:pw@127.0.0.1:{port}/a/b"),
    ];
    // Escapes allowed: the plain RFC 3986 join is the property here (the
    // default refusal of paths that leave the base is tested in paths.rs).
    let clients: Vec<ApiClient> = bases
        .iter()
        .map(|base| {
            offline_builder(base)
                .allow_path_escape(true)
                .build()
                .unwrap()
        })
        .collect();
    let strategy = (0..clients.len(), request_paths(port));

    // How many cases were invalid, refused and elsewhere.
    let seen: [Cell<u32>; 3] = Default::default();
    check(LOCAL_CASES, &strategy, |(which, path)| {
        let client = &clients[which];
        let base = client.base_url().unwrap();
        let target = target_of(base, &path, port);
        let request = client.get(&path);
        let slot = &seen[target as usize];
        slot.set(slot.get() + 1);
        if target == Target::Elsewhere {
            // Building it did not panic; sending it would leave the machine.
            drop(request);
            return Ok(());
        }
        let err = match rt.block_on(request.send()) {
            Ok(resp) => return Err(TestCaseError::fail(format!("refused port gave {resp:?}"))),
            Err(err) => err,
        };
        if target == Target::Invalid {
            prop_assert_eq!(err.kind(), ErrorKind::Config, "{:?}", err);
            return Ok(());
        }
        // `Url::join` makes a URL to the refused port of it: the request is
        // sent there, to the very URL `Url::join` gives (the error's URL is
        // redacted, so its password and query are not compared).
        prop_assert!(is_refused(&err), "{:?}", err);
        let joined = base.join(&path).unwrap();
        let sent = err.url().unwrap();
        prop_assert_eq!(
            (sent.scheme(), sent.host_str(), sent.port(), sent.path()),
            (
                joined.scheme(),
                joined.host_str(),
                joined.port(),
                joined.path()
            ),
            "{:?} joined onto {}",
            path,
            base
        );
        prop_assert_eq!(sent.query().is_some(), joined.query().is_some());
        Ok(())
    });

    let seen = seen.map(Cell::into_inner);
    eprintln!("paths: invalid/refused/elsewhere {seen:?}");
    assert!(seen.iter().all(|&n| n > 0), "cases covered {seen:?}");
}

// ---------------------------------------------------------------------------
// Headers, credentials, user agent
// ---------------------------------------------------------------------------

fn header_names() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,24}".prop_map(String::into_bytes),
        prop::sample::select(vec![
            "authorization",
            "Proxy-Authorization",
            "x-api-key",
            "cookie",
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "idempotency-key",
            ":path",
            "",
            " ",
            "x y",
            "x:y",
            "x\r\ny",
            "é",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        "\\PC{0,12}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..24),
    ]
}

fn header_values() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[ -~]{0,40}".prop_map(String::into_bytes),
        prop::sample::select(vec![
            "",
            " x",
            "x ",
            "a\r\nb: c",
            "a\nb",
            "\0",
            "\u{7f}",
            "Bearer t0k",
            "chunked",
            "-1",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        "\\PC{0,20}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

/// Whether `http` accepts the pair (the client must agree).
fn valid_header(name: &[u8], value: &[u8]) -> bool {
    HeaderName::from_bytes(name).is_ok() && HeaderValue::from_bytes(value).is_ok()
}

#[test]
fn any_default_header_builds_a_working_client_or_is_a_config_error() {
    let rt = runtime();
    let (_socket, port) = refused_port();
    let base = format!("http://127.0.0.1:{port}/");
    let strategy = (header_names(), header_values(), any::<bool>());

    check(LOCAL_CASES, &strategy, |(name, value, as_text)| {
        let valid = valid_header(&name, &value);
        // Both the byte and the text conversions, as users may pass either.
        let built = match (
            as_text,
            String::from_utf8(name.clone()),
            String::from_utf8(value.clone()),
        ) {
            (true, Ok(n), Ok(v)) => offline_builder(&base).default_header(n, v).build(),
            _ => offline_builder(&base)
                .default_header(name.as_slice(), value.as_slice())
                .build(),
        };
        let client = match built {
            Ok(client) => client,
            Err(err) => {
                prop_assert_eq!(err.kind(), ErrorKind::Config, "{:?}", err);
                prop_assert!(!valid, "a valid header was refused: {:?}", err);
                return Ok(());
            }
        };
        prop_assert!(valid, "an invalid header was accepted");
        let err = rt
            .block_on(client.get("x").send())
            .expect_err("the port refuses connections");
        prop_assert!(is_refused(&err), "{:?}", err);
        Ok(())
    });
}

#[test]
fn any_request_header_is_sent_or_is_a_config_error() {
    let rt = runtime();
    let (_socket, port) = refused_port();
    let client = offline_builder(&format!("http://127.0.0.1:{port}/"))
        .build()
        .unwrap();
    let strategy = (header_names(), header_values(), any::<bool>());

    check(LOCAL_CASES, &strategy, |(name, value, as_text)| {
        let valid = valid_header(&name, &value);
        let request = match (
            as_text,
            String::from_utf8(name.clone()),
            String::from_utf8(value.clone()),
        ) {
            (true, Ok(n), Ok(v)) => client.get("x").header(n, v),
            _ => client.get("x").header(name.as_slice(), value.as_slice()),
        };
        let err = rt
            .block_on(request.send())
            .expect_err("the port refuses connections");
        if valid {
            prop_assert!(is_refused(&err), "{:?}", err);
        } else {
            prop_assert_eq!(err.kind(), ErrorKind::Config, "{:?}", err);
        }
        Ok(())
    });
}

#[test]
fn any_token_agent_or_idempotency_key_is_sent_or_is_a_config_error() {
    let rt = runtime();
    let (_socket, port) = refused_port();
    let base = format!("http://127.0.0.1:{port}/");
    let texts = prop_oneof!["[ -~]{0,40}", "\\PC{0,20}", any::<String>()];
    let strategy = (texts.clone(), texts.clone(), texts);

    check(LOCAL_CASES, &strategy, |(token, agent, key)| {
        let text_ok = |s: &str| HeaderValue::from_str(s).is_ok();
        let builder_ok = text_ok(&format!("Bearer {token}")) && text_ok(&agent);
        let built = offline_builder(&base)
            .bearer_auth(&token)
            .user_agent(&agent)
            .build();
        let client = match built {
            Ok(client) => client,
            Err(err) => {
                prop_assert_eq!(err.kind(), ErrorKind::Config, "{:?}", err);
                prop_assert!(!builder_ok, "a valid token or agent was refused: {:?}", err);
                return Ok(());
            }
        };
        prop_assert!(builder_ok, "an invalid token or agent was accepted");
        let request_ok = text_ok(&format!("Bearer {token}")) && text_ok(&key);
        let err = rt
            .block_on(
                client
                    .post("x")
                    .bearer_auth(&token)
                    .idempotency_key(&key)
                    .send(),
            )
            .expect_err("the port refuses connections");
        if request_ok {
            prop_assert!(is_refused(&err), "{:?}", err);
        } else {
            prop_assert_eq!(err.kind(), ErrorKind::Config, "{:?}", err);
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// base_url
// ---------------------------------------------------------------------------

/// Base URL candidates: assembled from scheme, userinfo, host, port and path
/// pieces that each trip a parser somewhere, plus arbitrary text.
fn base_urls() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(vec![
        "http://", "https://", "HTTP://", "HtTpS://", "ftp://", "file://", "ws://", "mailto:",
        "http:", "http:/", "http:///", "//", "data:", "",
    ]);
    let userinfo = prop::sample::select(vec!["", "u@", "u:p@", ":@", "@", "a@b@", "%zz@"]);
    let host = prop_oneof![
        4 => prop::sample::select(vec![
            "127.0.0.1", "localhost", "[::1]", "[::1", "::1", "example.com", "", " ",
            "ex ample.com", "xn--", "xn--zz", "日本.jp", "%41", "%zz", "a..b", "256.0.0.1",
            "0x7f.1", "1.2.3", "[v1.x]", "*", "\u{feff}", "a\tb", "a\nb",
        ]).prop_map(str::to_owned),
        1 => "\\PC{0,8}",
    ];
    let port = prop::sample::select(vec![
        "",
        ":",
        ":0",
        ":80",
        ":65535",
        ":65536",
        ":-1",
        ":abc",
        ":99999999999",
    ]);
    let path = prop::sample::select(vec![
        "", "/", "/api", "/api/", "/a b", "/%zz", "/../..", "?q=1", "#f", "/é", "\\x", "//",
        "/a?b#c",
    ]);
    prop_oneof![
        4 => (scheme, userinfo, host, port, path)
            .prop_map(|(s, u, h, p, a)| format!("{s}{u}{h}{p}{a}")),
        1 => "\\PC{0,40}",
        1 => any::<String>(),
    ]
}

/// Whether the contract accepts `raw` as a base URL: an http(s) URL with a
/// host, and no query or fragment (request paths would drop them).
fn valid_base(raw: &str) -> bool {
    Url::parse(raw).is_ok_and(|url| {
        matches!(url.scheme(), "http" | "https")
            && !url.cannot_be_a_base()
            && url.host_str().is_some_and(|h| !h.is_empty())
            && url.query().is_none()
            && url.fragment().is_none()
    })
}

#[test]
fn any_base_url_builds_a_client_or_is_a_config_error() {
    check(LOCAL_CASES, &base_urls(), |raw| {
        let valid = valid_base(&raw);
        match ApiClient::builder().base_url(&raw).build() {
            Ok(client) => {
                prop_assert!(valid, "an invalid base URL was accepted");
                let base = client.base_url().expect("the base URL is kept");
                prop_assert!(matches!(base.scheme(), "http" | "https"));
                prop_assert!(base.path().ends_with('/'), "{}", base);
            }
            Err(err) => {
                prop_assert_eq!(err.kind(), ErrorKind::Config, "{:?}", err);
                prop_assert!(!valid, "a valid base URL was refused: {:?}", err);
            }
        }
        Ok(())
    });
}
