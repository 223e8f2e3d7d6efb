//! The baseline of target 3: a raw tonic Workload API server on a Unix socket, answering
//! with bytes captured from keycard's agent in the same run. It does nothing else (no
//! attestation, no cache, no header check), so keycard / raw is the cost of everything
//! keycard adds to the same gRPC stack and payload. Like the agent, it runs in a process
//! of its own ([`RawServer::spawn`]: this bench binary started again with
//! `--raw-server`, on tokio's default multi-thread runtime as the agent is): a server in
//! the bench process would share the callers' runtime and skip the wake-ups between
//! processes that every real Workload API call pays.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use prost::Message as _;

use keycard_workload_api::proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, SpiffeWorkloadApi,
    SpiffeWorkloadApiServer, ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest,
    X509BundlesResponse, X509svidRequest, X509svidResponse,
};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One message, then the stream stays open (as a Workload API stream does until the
/// next rotation).
fn one_then_open<T: Send + 'static>(message: T) -> Answers<T> {
    Box::pin(tokio_stream::once(Ok(message)).chain(tokio_stream::pending()))
}

/// The captured answers the raw server gives every caller.
#[derive(Clone)]
pub struct RawApi {
    /// What keycard's FetchX509SVID sent first.
    pub x509: X509svidResponse,
    /// What keycard's FetchJWTSVID answered.
    pub jwt: JwtsvidResponse,
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for RawApi {
    type FetchX509SVIDStream = Answers<X509svidResponse>;
    type FetchX509BundlesStream = Answers<X509BundlesResponse>;
    type FetchJWTBundlesStream = Answers<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        Ok(Response::new(one_then_open(self.x509.clone())))
    }

    async fn fetch_x509_bundles(
        &self,
        _request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("not measured"))
    }

    async fn fetch_jwtsvid(
        &self,
        _request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        Ok(Response::new(self.jwt.clone()))
    }

    async fn fetch_jwt_bundles(
        &self,
        _request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("not measured"))
    }

    async fn validate_jwtsvid(
        &self,
        _request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("not measured"))
    }
}

/// Serves `api` on a new Unix socket at `path` in the current tokio runtime until the
/// runtime ends.
fn serve(api: RawApi, path: &Path) {
    let listener = tokio::net::UnixListener::bind(path)
        .unwrap_or_else(|e| panic!("raw baseline: cannot bind {}: {e}", path.display()));
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(api))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            eprintln!("raw baseline server stopped: {e}");
        }
    });
}

/// The argument that makes this binary the raw server: `--raw-server SOCKET DIR`.
pub const RAW_SERVER_ARG: &str = "--raw-server";

/// The raw server's process; killed (and reaped) when dropped.
pub struct RawServer {
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
}

impl RawServer {
    /// Writes `api`'s answers to `dir`, starts the raw server on `dir/raw.sock` and waits
    /// (up to 10 s) until the socket accepts.
    pub fn spawn(api: &RawApi, dir: &Path) -> RawServer {
        std::fs::write(dir.join("x509.pb"), api.x509.encode_to_vec()).expect("x509.pb written");
        std::fs::write(dir.join("jwt.pb"), api.jwt.encode_to_vec()).expect("jwt.pb written");
        let socket = dir.join("raw.sock");
        let exe = std::env::current_exe().expect("the bench binary's path");
        let child = Command::new(exe)
            .arg(RAW_SERVER_ARG)
            .arg(&socket)
            .arg(dir)
            .spawn()
            .expect("the raw server started");
        let server = RawServer { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&server.socket).is_err() {
            assert!(Instant::now() < deadline, "the raw server did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The raw server process's main: serves the answers in `dir` on `socket` until killed,
/// or until the bench that started it dies.
pub fn serve_process(socket: &Path, dir: &Path) {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number takes no pointers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let read = |name: &str| std::fs::read(dir.join(name)).expect("a captured answer");
    let api = RawApi {
        x509: X509svidResponse::decode(read("x509.pb").as_slice()).expect("x509.pb decodes"),
        jwt: JwtsvidResponse::decode(read("jwt.pb").as_slice()).expect("jwt.pb decodes"),
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        serve(api, socket);
        std::future::pending::<()>().await
    });
}
