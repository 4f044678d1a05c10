//! A small REST resource (list, get, create, update, delete) against a local stub.
//!
//! Run with `cargo run --example typed_crud`.

#![allow(clippy::print_stdout)] // an example prints what it does

use resilient_http::{ApiClient, ErrorKind, StatusCode};
use serde::{Deserialize, Serialize};
use wiremock::matchers::{body_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    item: String,
    quantity: u32,
}

#[derive(Debug, Serialize)]
struct NewOrder<'a> {
    item: &'a str,
    quantity: u32,
}

/// A typed wrapper around one resource: what a service would write once.
struct Orders {
    api: ApiClient,
}

impl Orders {
    async fn list(&self, page: u32) -> resilient_http::Result<Vec<Order>> {
        self.api
            .get("orders")
            .query(&[("page", page)])
            .send_json()
            .await
    }

    async fn get(&self, id: u64) -> resilient_http::Result<Option<Order>> {
        match self.api.get_json(format!("orders/{id}")).await {
            Ok(order) => Ok(Some(order)),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn create(&self, new: &NewOrder<'_>, key: &str) -> resilient_http::Result<Order> {
        // The idempotency key makes the POST safe to retry.
        self.api
            .post("orders")
            .json(new)
            .idempotency_key(key)
            .send_json()
            .await
    }

    async fn update(&self, order: &Order) -> resilient_http::Result<Order> {
        self.api
            .put_json(format!("orders/{}", order.id), order)
            .await
    }

    async fn delete(&self, id: u64) -> resilient_http::Result<()> {
        self.api.delete(format!("orders/{id}")).send().await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = stub().await;
    let orders = Orders {
        api: ApiClient::new(format!("{}/v1/", server.uri()))?,
    };

    let list = orders.list(1).await?;
    println!("list      -> {list:?}");
    let one = orders.get(1).await?;
    println!("get 1     -> {one:?}");
    let missing = orders.get(99).await?;
    println!("get 99    -> {missing:?}");
    if list.len() != 1 || one.is_none() || missing.is_some() {
        return Err("unexpected list or get result".into());
    }
    let made = orders
        .create(
            &NewOrder {
                item: "tea",
                quantity: 2,
            },
            "order-tea-2",
        )
        .await?;
    println!("create    -> {made:?}");
    let updated = orders
        .update(&Order {
            quantity: 3,
            ..made.clone()
        })
        .await?;
    println!("update    -> {updated:?}");
    if made.id != 2 || updated.quantity != 3 {
        return Err("unexpected create or update result".into());
    }
    orders.delete(made.id).await?;
    println!("delete {}  -> ok", made.id);

    let empty = NewOrder {
        item: "",
        quantity: 0,
    };
    let Err(err) = orders.create(&empty, "order-empty").await else {
        return Err("an empty order should be refused".into());
    };
    if err.kind() != ErrorKind::Client {
        return Err(format!("an empty order should be a Client error, got {err}").into());
    }
    println!("bad create -> {err}");
    println!("              body: {:?}", err.body_text());
    Ok(())
}

async fn stub() -> MockServer {
    let server = MockServer::start().await;
    let tea = Order {
        id: 2,
        item: "tea".into(),
        quantity: 2,
    };
    let coffee = Order {
        id: 1,
        item: "coffee".into(),
        quantity: 1,
    };
    Mock::given(method("GET"))
        .and(path("/v1/orders"))
        .respond_with(ResponseTemplate::new(200).set_body_json([&coffee]))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/orders/1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(&coffee))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/orders/99"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/orders"))
        .and(body_json(serde_json::json!({"item": "tea", "quantity": 2})))
        .respond_with(ResponseTemplate::new(201).set_body_json(&tea))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/orders"))
        .respond_with(
            ResponseTemplate::new(422).set_body_string(r#"{"error":"item must not be empty"}"#),
        )
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/v1/orders/2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(Order {
            quantity: 3,
            ..tea.clone()
        }))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/v1/orders/2"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    server
}
