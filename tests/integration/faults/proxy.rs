//! A TCP proxy on loopback that can stop answering: while stalled it forwards nothing in
//! either direction and accepts connections it never serves; when it resumes, only
//! connections accepted afterwards are served (the stalled ones stay silent for good, as a
//! peer that vanished without closing would).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Whether a connection may forward: not while stalled, and never again once it saw a stall.
#[derive(Debug, Default)]
struct Gate {
    stalled: AtomicBool,
    /// Connections numbered below this one were open during a stall: silent for good.
    dead_below: AtomicU64,
    next: AtomicU64,
}

impl Gate {
    fn open_for(&self, id: u64) -> bool {
        !self.stalled.load(Ordering::SeqCst) && id >= self.dead_below.load(Ordering::SeqCst)
    }
}

/// See the module documentation; runs on its own runtime until dropped.
pub struct Proxy {
    runtime: Option<tokio::runtime::Runtime>,
    gate: Arc<Gate>,
    /// The address to give clients, `127.0.0.1:port`.
    pub address: String,
}

impl Proxy {
    /// A proxy to `upstream`, forwarding.
    pub fn start(upstream: &str) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let gate = Arc::new(Gate::default());
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (upstream, accept_gate) = (upstream.to_owned(), gate.clone());
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = accept_gate.next.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(relay(client, upstream.clone(), id, accept_gate.clone()));
            }
        });
        Proxy { runtime: Some(runtime), gate, address }
    }

    /// Stops answering on every connection, open or new.
    pub fn stall(&self) {
        self.gate.stalled.store(true, Ordering::SeqCst);
    }

    /// Serves new connections again; those opened so far stay silent.
    pub fn resume(&self) {
        let next = self.gate.next.load(Ordering::SeqCst);
        self.gate.dead_below.store(next, Ordering::SeqCst);
        self.gate.stalled.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Connects to `upstream` (once the gate lets this connection through) and copies both ways.
async fn relay(client: TcpStream, upstream: String, id: u64, gate: Arc<Gate>) {
    wait_open(&gate, id).await;
    let Ok(server) = TcpStream::connect(&upstream).await else { return };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::spawn(pump(client_read, server_write, id, gate.clone()));
    pump(server_read, client_write, id, gate).await;
}

/// Copies one direction, holding every chunk read while the gate is shut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    gate: Arc<Gate>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        wait_open(&gate, id).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Returns once connection `id` may forward (never, for one that saw a stall).
async fn wait_open(gate: &Gate, id: u64) {
    while !gate.open_for(id) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
