//! A real TCP proxy between an agent and the server that a test can misbehave with: forward
//! everything, swallow what the server sends (a reply lost on the way), stall (hold every
//! byte, in both directions, with the connections left open: a peer that stops
//! answering), and cut every open connection, or stall the open ones for good (half-open
//! connections) while new ones are forwarded.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways.
    Forward,
    /// Forwards the agent's bytes; drops the server's.
    SwallowReplies,
    /// Forwards nothing, reads nothing: both peers wait forever.
    Stall,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    mode: Mode,
    /// Connections numbered below this close ([`Proxy::cut`]).
    cut_below: u64,
    /// Connections numbered below this stall whatever the mode ([`Proxy::stall_open`]).
    stall_below: u64,
    /// The number the next accepted connection gets.
    next: u64,
}

/// A proxy listening on `addr` and forwarding to the server; stops when dropped.
pub struct Proxy {
    /// Where agents connect.
    pub addr: SocketAddr,
    state: watch::Sender<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `server` on a free loopback port, forwarding.
    pub async fn start(server: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let start = State { mode: Mode::Forward, cut_below: 0, stall_below: 0, next: 0 };
        let (state, watch) = watch::channel(start);
        let numbering = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((agent, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(server).await else { continue };
                let mut number = 0;
                numbering.send_modify(|s| {
                    number = s.next;
                    s.next += 1;
                });
                tokio::spawn(relay(number, agent, upstream, watch.clone()));
            }
        });
        Proxy { addr, state, task }
    }

    /// Switches every connection, open or future, to `mode`.
    pub fn set(&self, mode: Mode) {
        self.state.send_modify(|s| s.mode = mode);
    }

    /// Closes every open connection (new ones are accepted as before).
    pub fn cut(&self) {
        self.state.send_modify(|s| s.cut_below = s.next);
    }

    /// Stalls every open connection for good, as if its peer had vanished without a word;
    /// connections made from now on are treated by the mode.
    pub fn stall_open(&self) {
        self.state.send_modify(|s| s.stall_below = s.next);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    number: u64,
    agent: TcpStream,
    server: TcpStream,
    mut watch: watch::Receiver<State>,
) {
    let (mut agent_rx, mut agent_tx) = agent.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        let state = *watch.borrow_and_update();
        if number < state.cut_below {
            return;
        }
        let reading = state.mode != Mode::Stall && number >= state.stall_below;
        tokio::select! {
            changed = watch.changed() => if changed.is_err() { return },
            n = agent_rx.read(&mut up), if reading => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if server_tx.write_all(&up[..n]).await.is_err() { return },
            },
            n = server_rx.read(&mut down), if reading => match n {
                Ok(0) | Err(_) => return,
                Ok(_) if state.mode == Mode::SwallowReplies => {}
                Ok(n) => if agent_tx.write_all(&down[..n]).await.is_err() { return },
            },
        }
    }
}
