//! A small DNS server for tests, on a free UDP port of 127.0.0.1: it answers
//! A and SRV questions from records the test sets (and changes) as it goes,
//! and can be told to fail. AAAA questions get an empty answer.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// An SRV record: priority, weight, port and target.
#[derive(Debug, Clone)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: &'static str,
}

/// What the server answers.
#[derive(Debug, Clone, Default)]
struct Zone {
    a: HashMap<String, Vec<Ipv4Addr>>,
    srv: HashMap<String, Vec<Srv>>,
    /// The TTL of every record, in seconds.
    ttl: u32,
    /// Answer every question with this code and no record.
    fail: Option<ResponseCode>,
}

/// A running test DNS server; stops when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    /// Questions answered so far.
    answered: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DnsServer {
    /// A server with no records, whose records live `ttl` seconds.
    pub async fn start(ttl: u32) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone {
            ttl,
            ..Zone::default()
        }));
        let (tx, answered) = watch::channel(0usize);
        let shared = Arc::clone(&zone);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let zone = shared.lock().unwrap().clone();
                let reply = answer(&query, &zone).to_vec().unwrap();
                // Counted before it is sent: once a lookup returns, its
                // questions are counted.
                tx.send_modify(|n| *n += 1);
                let _ = socket.send_to(&reply, from).await;
            }
        });
        Self {
            addr,
            zone,
            answered,
            task,
        }
    }

    /// `name` has these IPv4 addresses (none: an empty answer).
    pub fn set_a(&self, name: &str, addresses: &[Ipv4Addr]) {
        self.zone
            .lock()
            .unwrap()
            .a
            .insert(key(name), addresses.to_vec());
    }

    /// `name` has these SRV records.
    pub fn set_srv(&self, name: &str, records: &[Srv]) {
        self.zone
            .lock()
            .unwrap()
            .srv
            .insert(key(name), records.to_vec());
    }

    /// Every answer from now on fails with `code` (`None`: answer again).
    pub fn fail_with(&self, code: Option<ResponseCode>) {
        self.zone.lock().unwrap().fail = code;
    }

    /// The questions answered so far.
    pub fn answered(&self) -> usize {
        *self.answered.borrow()
    }

    /// Waits until more than `count` questions were answered, at most
    /// `within`; whether they were.
    pub async fn answered_more_than(&self, count: usize, within: Duration) -> bool {
        let mut rx = self.answered.clone();
        tokio::time::timeout(within, rx.wait_for(|n| *n > count))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// A zone key: lower case, without the final dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The reply to `query` from `zone`.
fn answer(query: &Message, zone: &Zone) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(query.queries.iter().cloned());
    if let Some(code) = zone.fail {
        reply.metadata.response_code = code;
        return reply;
    }
    for q in &query.queries {
        let name = key(&q.name.to_ascii());
        let owner = q.name.clone();
        match q.query_type {
            RecordType::A => {
                for ip in zone.a.get(&name).into_iter().flatten() {
                    let data = RData::A(A(*ip));
                    reply.add_answer(Record::from_rdata(owner.clone(), zone.ttl, data));
                }
            }
            RecordType::SRV => {
                for srv in zone.srv.get(&name).into_iter().flatten() {
                    let target = Name::from_ascii(format!("{}.", srv.target)).unwrap();
                    let data = RData::SRV(SRV::new(srv.priority, srv.weight, srv.port, target));
                    reply.add_answer(Record::from_rdata(owner.clone(), zone.ttl, data));
                }
            }
            _ => {}
        }
    }
    reply
}
