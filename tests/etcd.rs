//! `EtcdResolver` against a real etcd: the test starts `etcd` on 127.0.0.1
//! with a temporary data dir, registers instances, removes one, and checks
//! the client follows. Skipped with a notice when no `etcd` binary is found,
//! unless `RESILIENT_HTTP_REQUIRE_ETCD=1` (set by `.ci/run`) makes that a failure.
#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{base64, find_binary, free_port};
use resilient_http::{ApiClient, ErrorKind, EtcdResolver, LoadBalance};
use serde_json::json;
use tokio::time::Instant;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

const PREFIX: &str = "/services/orders/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_instances_registered_in_etcd() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let a = instance("a").await;
    let b = instance("b").await;
    let c = instance("c").await;
    etcd.put(&format!("{PREFIX}a"), &a.uri()).await;
    // The JSON form, with a weight.
    let b_value = json!({ "url": b.uri(), "weight": 2 }).to_string();
    etcd.put(&format!("{PREFIX}b"), &b_value).await;
    // Outside the prefix: not an instance of this service.
    etcd.put("/services/payments/x", &c.uri()).await;

    // Round robin, whose turn survives a refresh: two instances share calls
    // exactly, so the counts below are not left to chance.
    let client = ApiClient::builder()
        .resolver(EtcdResolver::new(&etcd.url, PREFIX))
        .resolver_refresh(Duration::from_millis(100))
        .load_balance(LoadBalance::RoundRobin)
        .build()
        .unwrap();
    assert_eq!(client.refresh_endpoints().await.unwrap(), 2);
    assert_eq!(ports(&client), BTreeSet::from([port(&a), port(&b)]));
    let weights: Vec<u32> = client.endpoints().iter().map(|e| e.weight).collect();
    assert_eq!(weights.iter().sum::<u32>(), 3, "{weights:?}");
    assert_eq!(served_by(&client, 20).await, counts([("a", 10), ("b", 10)]));

    // An instance comes, another goes: the background refresh follows.
    etcd.put(&format!("{PREFIX}c"), &c.uri()).await;
    etcd.delete(&format!("{PREFIX}a")).await;
    let want = BTreeSet::from([port(&b), port(&c)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ports(&client) != want {
        assert!(Instant::now() < deadline, "still {:?}", client.endpoints());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served_by(&client, 20).await, counts([("b", 10), ("c", 10)]));

    // etcd goes away: the refresh fails, the last list stays and serves.
    drop(etcd);
    let err = client.refresh_endpoints().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    assert_eq!(ports(&client), want);
    assert_eq!(served_by(&client, 10).await, counts([("b", 5), ("c", 5)]));
}

/// A stub instance that answers with its name.
async fn instance(name: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_string(name))
        .mount(&server)
        .await;
    server
}

fn port(server: &MockServer) -> u16 {
    server.address().port()
}

fn ports(client: &ApiClient) -> BTreeSet<u16> {
    client
        .endpoints()
        .iter()
        .map(|e| e.url.port().unwrap())
        .collect()
}

/// How many of `calls` calls each instance served.
async fn served_by(client: &ApiClient, calls: usize) -> BTreeMap<String, usize> {
    let mut served = BTreeMap::new();
    for _ in 0..calls {
        let resp = client.get("orders").send().await.unwrap();
        assert_eq!(resp.attempts(), 1, "no instance fails");
        *served.entry(resp.text().unwrap()).or_default() += 1;
    }
    served
}

fn counts<const N: usize>(pairs: [(&str, usize); N]) -> BTreeMap<String, usize> {
    pairs.into_iter().map(|(k, n)| (k.to_owned(), n)).collect()
}

/// An etcd server on 127.0.0.1, stopped and its data removed on drop.
struct Etcd {
    child: Child,
    dir: PathBuf,
    url: String,
    client: ApiClient,
}

impl Etcd {
    /// Starts etcd and waits until it answers, or returns `None` (with a
    /// notice) when there is no etcd binary.
    async fn start() -> Option<Self> {
        let Some(binary) = find_binary("etcd") else {
            assert!(
                std::env::var("RESILIENT_HTTP_REQUIRE_ETCD").as_deref() != Ok("1"),
                "no etcd binary found, and RESILIENT_HTTP_REQUIRE_ETCD=1"
            );
            eprintln!("NOTICE: skipping the etcd test: no `etcd` binary on PATH");
            return None;
        };
        let (client_port, peer_port) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!(
            "resilient-http-etcd-{}-{client_port}",
            std::process::id()
        ));
        let url = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new(binary)
            .args(["--name", "test", "--data-dir"])
            .arg(&dir)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let client = ApiClient::builder()
            .base_url(&url)
            .total_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let etcd = Self {
            child,
            dir,
            url,
            client,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match etcd.client.get("health").send().await {
                Ok(resp) if resp.text().unwrap_or_default().contains("true") => break,
                _ => {
                    assert!(Instant::now() < deadline, "etcd did not become healthy");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Some(etcd)
    }

    async fn put(&self, key: &str, value: &str) {
        let body = json!({ "key": base64(key.as_bytes()), "value": base64(value.as_bytes()) });
        self.client
            .post("v3/kv/put")
            .json(&body)
            .send()
            .await
            .expect("etcd put");
    }

    async fn delete(&self, key: &str) {
        let body = json!({ "key": base64(key.as_bytes()) });
        self.client
            .post("v3/kv/deleterange")
            .json(&body)
            .send()
            .await
            .expect("etcd delete");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
