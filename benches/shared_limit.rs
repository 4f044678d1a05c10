//! The cost of one rate-limit permit: local (governor) against shared (Redis
//! on loopback), without and with leasing. Starts its own `redis-server` on
//! a free 127.0.0.1 port; without the binary it prints a notice and exits.
//!
//! `cargo bench --bench shared_limit --features redis,bench-internals`
//! (20,000 permits per case, after 2,000 to warm up). Under `cargo test`
//! (no `--bench` argument) it takes 200 permits per case, as a smoke test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use resilient_http::__bench::{Permits, SharedPermits};

struct Redis {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_redis() -> Option<Redis> {
    let path = std::env::var_os("PATH")?;
    let binary = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())?;
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("resilient-http-bench-redis-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let redis = Redis {
        child,
        dir,
        url: format!("redis://127.0.0.1:{port}/"),
    };
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        if up.is_ok() {
            return Some(redis);
        }
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// p50, p99 and mean of `samples`, in microseconds.
fn summary(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    #[allow(clippy::cast_precision_loss)]
    let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64 * 1e6;
    (at(0.5), at(0.99), mean)
}

async fn measure<F, Fut>(n: usize, mut permit: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        assert!(permit().await, "permit refused");
        samples.push(start.elapsed());
    }
    samples
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (warm, n) = if full { (2_000, 20_000) } else { (20, 200) };
    let Some(redis) = start_redis() else {
        println!("NOTICE: no redis-server on PATH; shared_limit bench skipped");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!(
            "{:<26} {:>9} {:>9} {:>9}",
            "permit", "p50 µs", "p99 µs", "mean µs"
        );
        let local = Permits::default();
        measure(warm, || local.rate()).await;
        let mut s = measure(n, || local.rate()).await;
        let (p50, p99, mean) = summary(&mut s);
        println!(
            "{:<26} {p50:>9.2} {p99:>9.2} {mean:>9.2}",
            "local (governor)"
        );
        for lease in [1, 10, 100] {
            let shared = SharedPermits::new(&redis.url, &format!("bench-{lease}"), lease).unwrap();
            measure(warm, || shared.permit()).await;
            let mut s = measure(n, || shared.permit()).await;
            let (p50, p99, mean) = summary(&mut s);
            let name = if lease == 1 {
                "shared (Redis), no lease".to_owned()
            } else {
                format!("shared, lease({lease})")
            };
            println!("{name:<26} {p50:>9.2} {p99:>9.2} {mean:>9.2}");
        }
    });
}
