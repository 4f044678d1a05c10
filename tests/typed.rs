//! Typed helpers, the request builder, URL joining and response decoding.

mod common;

use resilient_http::{
    ApiClient, CircuitBreakerConfig, CircuitState, ErrorKind, Method, StatusCode,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncWriteExt as _;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use common::{Sequence, client_for, fast_builder, raw_server, received, until_peer_closes};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

fn ada() -> User {
    User {
        id: 42,
        name: "Ada".to_owned(),
    }
}

// ---------------------------------------------------------------- typed helpers

#[tokio::test]
async fn get_json_decodes_the_body_into_the_asked_type() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/users/42"))
        .respond_with(ResponseTemplate::new(200).set_body_json(ada()))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server);

    let user: User = client.get_json("users/42").await.unwrap();

    assert_eq!(user, ada());
}

#[tokio::test]
async fn an_answer_without_a_body_decodes_as_null() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let client = client_for(&server);

    let (): () = client.post_json("jobs", &json!({"run": 1})).await.unwrap();
    let none: Option<User> = client.post_json("jobs", &json!({"run": 2})).await.unwrap();
    let err = client
        .post_json::<_, User>("jobs", &json!({"run": 3}))
        .await
        .unwrap_err();

    assert_eq!(none, None);
    assert_eq!(err.kind(), resilient_http::ErrorKind::Decode);
}

#[tokio::test]
async fn post_json_sends_the_body_as_json_and_decodes_the_answer() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/users"))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({"id": 0, "name": "Grace"})))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 43, "name": "Grace"})))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server);
    let new_user = User {
        id: 0,
        name: "Grace".to_owned(),
    };

    let made: User = client.post_json("users", &new_user).await.unwrap();

    assert_eq!(made.id, 43);
    assert_eq!(made.name, "Grace");
}

#[tokio::test]
async fn put_json_sends_the_body_as_json_and_decodes_the_answer() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/users/42"))
        .and(header("content-type", "application/json"))
        .and(body_json(ada()))
        .respond_with(ResponseTemplate::new(200).set_body_json(ada()))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server);

    let stored: User = client.put_json("users/42", &ada()).await.unwrap();

    assert_eq!(stored, ada());
}

#[tokio::test]
async fn patch_json_sends_the_body_as_json_and_decodes_the_answer() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path("/users/42"))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({"name": "Ada L."})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 42, "name": "Ada L."})))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server);

    let patched: User = client
        .patch_json("users/42", &json!({"name": "Ada L."}))
        .await
        .unwrap();

    assert_eq!(patched.name, "Ada L.");
}

// ------------------------------------------------------------- request builder

#[tokio::test]
async fn request_builder_sends_every_method_to_its_path() {
    let server = MockServer::start().await;
    for verb in ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] {
        Mock::given(method(verb))
            .and(path("/items/7"))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
    }
    let client = client_for(&server);
    let calls = [
        (Method::GET, client.get("items/7")),
        (Method::POST, client.post("items/7")),
        (Method::PUT, client.put("items/7")),
        (Method::PATCH, client.patch("items/7")),
        (Method::DELETE, client.delete("items/7")),
        (Method::HEAD, client.head("items/7")),
        (Method::OPTIONS, client.request(Method::OPTIONS, "items/7")),
    ];

    for (verb, call) in calls {
        let resp = call.send().await.unwrap();

        assert_eq!(resp.status(), StatusCode::OK, "{verb}");
        assert_eq!(resp.attempts(), 1, "{verb}");
    }
    assert_eq!(received(&server).await, 7);
}

#[tokio::test]
async fn send_returns_status_headers_and_body_of_a_2xx() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/things"))
        .respond_with(
            ResponseTemplate::new(201)
                .insert_header("x-thing-id", "t-1")
                .set_body_string("created"),
        )
        .mount(&server)
        .await;
    let client = client_for(&server);

    let resp = client.post("things").body("payload").send().await.unwrap();

    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["x-thing-id"], "t-1");
    assert_eq!(resp.text().unwrap(), "created");
    assert_eq!(&resp.bytes()[..], b"created");
}

#[tokio::test]
async fn query_parameters_and_headers_reach_the_server() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/users"))
        .and(query_param("page", "2"))
        .and(query_param("sort", "name asc"))
        .and(header("x-request-id", "abc"))
        .respond_with(ResponseTemplate::new(200).set_body_json(vec![ada()]))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server);

    let resp = client
        .get("users")
        .query(&[("page", "2"), ("sort", "name asc")])
        .header("x-request-id", "abc")
        .send()
        .await
        .unwrap();

    let users: Vec<User> = resp.json().unwrap();
    assert_eq!(users, vec![ada()]);
}

// ----------------------------------------------------------------- URL joining

/// A server answering 200 once, on `expected_path` only, and the base URL
/// made of its address and `base_path`.
async fn join_case(base_path: &str, expected_path: &str) -> (MockServer, String) {
    let server = MockServer::start().await;
    Mock::given(path(expected_path.to_owned()))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let base = format!("{}{base_path}", server.uri());
    (server, base)
}

#[tokio::test]
async fn base_url_without_trailing_slash_joins_paths_under_it() {
    let (server, base) = join_case("/api", "/api/users").await;
    let client = fast_builder(&base).build().unwrap();

    let resp = client.get("users").send().await.unwrap();

    assert_eq!(resp.url().path(), "/api/users");
    assert_eq!(received(&server).await, 1);
}

#[tokio::test]
async fn base_url_with_trailing_slash_joins_paths_under_it() {
    let (server, base) = join_case("/api/", "/api/users").await;
    let client = fast_builder(&base).build().unwrap();

    let resp = client.get("users").send().await.unwrap();

    assert_eq!(resp.url().path(), "/api/users");
    assert_eq!(client.base_url().unwrap().path(), "/api/");
    assert_eq!(received(&server).await, 1);
}

#[tokio::test]
async fn nested_paths_join_under_the_base_path() {
    let (server, base) = join_case("/api/", "/api/v1/users/42/orders").await;
    let client = fast_builder(&base).build().unwrap();

    let resp = client.get("v1/users/42/orders").send().await.unwrap();

    assert_eq!(resp.url().path(), "/api/v1/users/42/orders");
    assert_eq!(received(&server).await, 1);
}

#[tokio::test]
async fn leading_slash_path_replaces_the_base_path() {
    let (server, base) = join_case("/api/", "/health").await;
    let client = fast_builder(&base).build().unwrap();

    let resp = client.get("/health").send().await.unwrap();

    assert_eq!(resp.url().path(), "/health");
    assert_eq!(received(&server).await, 1);
}

#[tokio::test]
async fn absolute_url_passes_through_unchanged() {
    let base = MockServer::start().await;
    let other = MockServer::start().await;
    Mock::given(path("/elsewhere/x"))
        .respond_with(ResponseTemplate::new(200).set_body_string("other"))
        .expect(1)
        .mount(&other)
        .await;
    let client = fast_builder(&format!("{}/api/", base.uri()))
        .no_retry()
        .build()
        .unwrap();
    let absolute = format!("{}/elsewhere/x", other.uri());

    let resp = client.get(&absolute).send().await.unwrap();

    assert_eq!(resp.url().as_str(), absolute);
    assert_eq!(resp.text().unwrap(), "other");
    assert_eq!(received(&base).await, 0);
}

// ----------------------------------------------------------- errors and decode

#[tokio::test]
async fn non_2xx_response_gives_its_status_and_body_text() {
    let server = MockServer::start().await;
    Mock::given(path("/users/9"))
        .respond_with(ResponseTemplate::new(404).set_body_string("no such user"))
        .expect(2)
        .mount(&server)
        .await;
    let client = client_for(&server);

    let sent = client.get("users/9").send().await.unwrap_err();
    let typed = client.get_json::<User>("users/9").await.unwrap_err();

    for err in [sent, typed] {
        assert_eq!(err.kind(), ErrorKind::Client);
        assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
        assert_eq!(err.body_text(), Some("no such user"));
        assert_eq!(err.attempts(), 1);
    }
}

#[tokio::test]
async fn malformed_json_is_a_decode_error() {
    let server = MockServer::start().await;
    Mock::given(path("/users/42"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw("{\"id\": 42, \"name\":", "application/json"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server);

    let err = client.get_json::<User>("users/42").await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Decode);
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn json_of_the_wrong_shape_is_a_decode_error() {
    let server = MockServer::start().await;
    Mock::given(path("/users/42"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "not a number"})))
        .mount(&server)
        .await;
    let client = client_for(&server);

    let err = client.get_json::<User>("users/42").await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Decode);
}

#[tokio::test]
async fn body_larger_than_max_response_bytes_with_content_length_is_a_decode_error() {
    let server = MockServer::start().await;
    Mock::given(path("/big"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![b'x'; 1025]))
        .expect(1)
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri())
        .max_response_bytes(1024)
        .build()
        .unwrap();

    let err = client.get("big").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Decode);
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn body_of_exactly_max_response_bytes_is_accepted() {
    let server = MockServer::start().await;
    Mock::given(path("/fits"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![b'x'; 1024]))
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri())
        .max_response_bytes(1024)
        .build()
        .unwrap();

    let resp = client.get("fits").send().await.unwrap();

    assert_eq!(resp.bytes().len(), 1024);
}

/// A chunked 200 whose chunks add up to `chunks * chunk_len` bytes.
async fn chunked_server(chunks: usize, chunk_len: usize) -> String {
    raw_server(move |mut stream| async move {
        let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..chunks {
            out.extend_from_slice(format!("{chunk_len:x}\r\n").as_bytes());
            out.extend(std::iter::repeat_n(b'y', chunk_len));
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        if stream.write_all(&out).await.is_ok() {
            until_peer_closes(stream).await;
        }
    })
    .await
}

#[tokio::test]
async fn chunked_body_larger_than_max_response_bytes_is_a_decode_error() {
    let uri = chunked_server(4, 300).await;
    let client = fast_builder(&uri).max_response_bytes(1000).build().unwrap();

    let err = client.get("stream").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Decode);
    assert_eq!(err.attempts(), 1);
}

#[tokio::test]
async fn chunked_body_within_max_response_bytes_is_buffered_whole() {
    let uri = chunked_server(3, 300).await;
    let client = fast_builder(&uri).max_response_bytes(1000).build().unwrap();

    let resp = client.get("stream").send().await.unwrap();

    assert_eq!(resp.bytes().len(), 900);
}

#[tokio::test]
async fn text_of_a_non_utf8_body_is_a_decode_error() {
    let server = MockServer::start().await;
    Mock::given(path("/latin1"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![0x63, 0x61, 0x66, 0xe9]))
        .mount(&server)
        .await;
    let client = client_for(&server);

    let resp = client.get("latin1").send().await.unwrap();
    let err = resp.text().unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Decode);
    assert_eq!(&resp.bytes()[..], &[0x63, 0x61, 0x66, 0xe9]);
}

// --------------------------------------------------------- client-wide headers

#[tokio::test]
async fn default_header_bearer_auth_and_user_agent_reach_the_server() {
    let server = MockServer::start().await;
    Mock::given(path("/me"))
        .and(header("x-api-key", "k-123"))
        .and(header("authorization", "Bearer t-456"))
        .and(header("user-agent", "orders-service/1.4"))
        .respond_with(ResponseTemplate::new(200))
        .expect(2)
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri())
        .default_header("x-api-key", "k-123")
        .bearer_auth("t-456")
        .user_agent("orders-service/1.4")
        .build()
        .unwrap();

    let first = client.get("me").send().await.unwrap();
    let second = client
        .get("me")
        .header("x-request-id", "r-2")
        .send()
        .await
        .unwrap();

    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
}

#[tokio::test]
async fn default_user_agent_names_the_crate() {
    let server = MockServer::start().await;
    Mock::given(path("/ua"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let client = client_for(&server);

    client.get("ua").send().await.unwrap();

    let requests = server.received_requests().await.unwrap();
    let agent = requests[0].headers["user-agent"].to_str().unwrap();
    assert!(agent.starts_with("resilient-http/"), "{agent}");
}

// ------------------------------------------------------------- sharing a client

const _: () = {
    const fn assert_clone_send_sync<T: Clone + Send + Sync + 'static>() {}
    assert_clone_send_sync::<ApiClient>();
};

#[tokio::test]
async fn clones_share_the_circuit_breaker() {
    let server = MockServer::start().await;
    let replies = Sequence::statuses(&[503]);
    Mock::given(path("/flaky"))
        .respond_with(replies.clone())
        .mount(&server)
        .await;
    let first = fast_builder(&server.uri())
        .no_retry()
        .circuit_breaker(CircuitBreakerConfig::default().consecutive_failures(2))
        .build()
        .unwrap();
    let second = first.clone();

    for _ in 0..2 {
        let err = first.get("flaky").send().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Retryable);
    }
    let refused = second.get("flaky").send().await.unwrap_err();

    assert_eq!(second.circuit_state(), CircuitState::Open);
    assert_eq!(refused.kind(), ErrorKind::Rejected);
    assert!(refused.is_circuit_open());
    assert_eq!(replies.served(), 2);
}

#[tokio::test]
async fn clones_can_be_used_from_other_tasks() {
    let server = MockServer::start().await;
    Mock::given(path("/users/42"))
        .respond_with(ResponseTemplate::new(200).set_body_json(ada()))
        .expect(4)
        .mount(&server)
        .await;
    let client = client_for(&server);

    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get_json::<User>("users/42").await })
        })
        .collect();

    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), ada());
    }
}

#[tokio::test]
async fn two_chunks_that_together_pass_max_response_bytes_are_a_decode_error() {
    // Each chunk fits on its own; the first two together do not.
    let uri = chunked_server(2, 600).await;
    let client = fast_builder(&uri).max_response_bytes(1000).build().unwrap();

    let err = client.get("stream").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Decode);
}

#[tokio::test]
async fn a_chunked_body_with_broken_framing_is_a_server_error() {
    let uri = raw_server(|mut stream| async move {
        let out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
        if stream.write_all(out).await.is_ok() {
            until_peer_closes(stream).await;
        }
    })
    .await;
    let client = fast_builder(&uri).build().unwrap();

    let err = client.get("broken").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Server, "{err:?}");
    assert_eq!(err.attempts(), 1, "a broken peer is not retried");
}
