//! Attestation attacks on a real agent (issue 18, build 2): 10,000 mixed tries by callers
//! that must get nothing (no entry, wrong uid or gid, no security header, a connector that
//! exits, forks and exits, leaves its PID to a registered process, drops to another uid,
//! execs, or hands its connection to another uid), interleaved with a registered caller
//! that must be served every time. Nothing but the registered caller may receive an
//! SVID or a private key, and the agent's attestation counters must say why each was
//! refused. The callers are made in [`crate::attackers`].
//!
//! `KEYCARD_ATTACK_TRIES` sets another number of tries (the default is 10,000); the
//! per-kind table is printed with `-- --nocapture`:
//!
//! ```text
//! cargo test --test integration attacks -- --nocapture
//! ```

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use keycard_workload_api::proto::{
    JwtsvidRequest, SECURITY_HEADER, SECURITY_HEADER_VALUE, SpiffeWorkloadApiClient,
    X509svidRequest,
};
use tonic::transport::Endpoint;
use tonic::{Code, Request};

use crate::agent::{PATIENCE, Setup};
use crate::attackers::{self, Kind, REGISTERED_GID, REGISTERED_UID};
use crate::procs::{is_root, metric, metrics};

/// Callers working side by side (each a thread forking its own processes).
const WORKERS: usize = 4;
/// Relative frequency of each kind in the mix (same order as [`Kind::ALL`]): equal, as
/// every kind costs about the same (a fork or two and one call: 10,000 take ~30 s).
const WEIGHTS: [usize; 11] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];

/// What one try got.
#[derive(Debug)]
enum Outcome {
    /// A response: how many SVIDs it carried and how many private keys.
    Served { svids: usize, keys: usize },
    /// A gRPC error (or a transport failure, as `Unknown`).
    Refused(Code),
}

/// The figures of one kind.
#[derive(Debug, Default)]
struct Tally {
    tries: usize,
    jwt: usize,
    served: usize,
    codes: BTreeMap<String, usize>,
    svids: usize,
    keys: usize,
    pid_reused: usize,
}

/// Asks for an X.509-SVID (or, with `jwt`, a JWT-SVID) over a connection made by the
/// caller's connector, within 20 s.
async fn ask(conn: UnixStream, header: bool, jwt: bool) -> Outcome {
    conn.set_nonblocking(true).unwrap();
    let slot = Arc::new(Mutex::new(Some(conn)));
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let conn = slot.lock().unwrap().take();
            async move {
                let conn = conn.ok_or_else(|| std::io::Error::other("connection used"))?;
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::from_std(conn)?))
            }
        }))
        .await;
    let Ok(channel) = channel else { return Outcome::Refused(Code::Unknown) };
    let mut client = SpiffeWorkloadApiClient::new(channel);
    fn request<T>(msg: T, header: bool) -> Request<T> {
        let mut req = Request::new(msg);
        if header {
            req.metadata_mut().insert(SECURITY_HEADER, SECURITY_HEADER_VALUE.parse().unwrap());
        }
        req
    }
    let answer = async {
        if jwt {
            let msg = JwtsvidRequest { audience: vec!["db".into()], spiffe_id: String::new() };
            let svids = client.fetch_jwtsvid(request(msg, header)).await?.into_inner().svids;
            let tokens = svids.iter().filter(|s| !s.svid.is_empty()).count();
            return Ok(Outcome::Served { svids: tokens, keys: 0 });
        }
        let mut stream =
            client.fetch_x509svid(request(X509svidRequest {}, header)).await?.into_inner();
        let Some(msg) = stream.message().await? else { return Err(tonic::Status::unknown("")) };
        let keys = msg.svids.iter().filter(|s| !s.x509_svid_key.is_empty()).count();
        Ok(Outcome::Served { svids: msg.svids.len(), keys })
    };
    match tokio::time::timeout(Duration::from_secs(20), answer).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(status)) => Outcome::Refused(status.code()),
        Err(_) => panic!("no answer within 20 s"),
    }
}

/// One try of `kind`: its caller set up, its request answered, its processes reaped.
fn attempt(kind: Kind, socket: &Path, jwt: bool, runtime: &tokio::runtime::Runtime) -> Tally {
    let attempt = attackers::prepare(kind, socket).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    let conn = attempt.conn.try_clone().unwrap();
    let outcome = runtime.block_on(ask(conn, kind.sends_header(), jwt));
    let mut tally = Tally { tries: 1, jwt: usize::from(jwt), ..Tally::default() };
    tally.pid_reused = usize::from(attempt.pid_reused == Some(true));
    match outcome {
        Outcome::Served { svids, keys } => {
            tally.served = 1;
            tally.svids = svids;
            tally.keys = keys;
        }
        Outcome::Refused(code) => *tally.codes.entry(format!("{code:?}")).or_default() += 1,
    }
    tally
}

fn add(into: &mut Tally, one: Tally) {
    into.tries += one.tries;
    into.jwt += one.jwt;
    into.served += one.served;
    into.svids += one.svids;
    into.keys += one.keys;
    into.pid_reused += one.pid_reused;
    for (code, n) in one.codes {
        *into.codes.entry(code).or_default() += n;
    }
}

/// `tries` kinds in a fixed pseudo-random order, in the proportions of [`WEIGHTS`].
fn schedule(tries: usize) -> Vec<Kind> {
    let total: usize = WEIGHTS.iter().sum();
    let mut kinds: Vec<Kind> = (0..tries).map(|i| weighted(i % total)).collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..kinds.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        kinds.swap(i, (state % (i as u64 + 1)) as usize);
    }
    kinds
}

fn weighted(mut slot: usize) -> Kind {
    for (kind, weight) in Kind::ALL.into_iter().zip(WEIGHTS) {
        if slot < weight {
            return kind;
        }
        slot -= weight;
    }
    unreachable!("slot beyond the weights")
}

/// Makes this process the reaper of the orphans of its children (the holder left by a
/// connector that forks and exits), for as long as it lives.
struct Subreaper;

impl Subreaper {
    fn start() -> Subreaper {
        // SAFETY: prctl with integer arguments only.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
        Subreaper
    }
}

impl Drop for Subreaper {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0) };
    }
}

fn print_table(tallies: &BTreeMap<Kind, Tally>, elapsed: Duration) {
    println!(
        "kind                  tries    jwt  served  refused (code: count)        SVIDs  keys"
    );
    for (kind, t) in tallies {
        let codes: Vec<String> = t.codes.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        let mut note = codes.join(", ");
        if *kind == Kind::PidReuse {
            note += &format!(" (PID taken over: {})", t.pid_reused);
        }
        println!(
            "{:<20} {:>6} {:>6} {:>7}  {:<28} {:>6} {:>5}",
            format!("{kind:?}"),
            t.tries,
            t.jwt,
            t.served,
            note,
            t.svids,
            t.keys
        );
    }
    let tries: usize = tallies.values().map(|t| t.tries).sum();
    println!("{tries} tries in {:.1} s", elapsed.as_secs_f64());
}

#[test]
fn ten_thousand_attestation_attacks_get_nothing_while_a_registered_caller_is_served() {
    if !is_root() {
        println!("note: not root, the callers cannot change uid; attack test skipped");
        return;
    }
    let tries = std::env::var("KEYCARD_ATTACK_TRIES").ok().and_then(|v| v.parse().ok());
    let tries: usize = tries.unwrap_or(10_000);
    let setup = Setup::start("127.0.0.1:0");
    let exe = std::env::current_exe().unwrap();
    setup.entry_selecting(
        "registered",
        &[
            format!("unix:uid:{REGISTERED_UID}"),
            format!("unix:gid:{REGISTERED_GID}"),
            format!("unix:path:{}", exe.display()),
        ],
    );
    let agent = setup.agent("health_address = \"127.0.0.1:0\"\n");
    let health = agent.health.clone().unwrap();
    let socket = agent.socket.clone();
    let _subreaper = Subreaper::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // The registered caller is served once the agent has its SVID.
    let deadline = Instant::now() + PATIENCE;
    while attempt(Kind::Registered, &socket, false, &runtime).served == 0 {
        assert!(Instant::now() < deadline, "the registered caller was never served");
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = metrics(&health);

    let kinds = schedule(tries);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let tallies = Mutex::new(BTreeMap::<Kind, Tally>::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let failing = scopeguard(&failed);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= kinds.len() || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let one = attempt(kinds[i], &socket, i % 2 == 1, &runtime);
                    let mut all = tallies.lock().unwrap();
                    add(all.entry(kinds[i]).or_default(), one);
                }
                failing.disarm();
            });
        }
    });
    let elapsed = started.elapsed();
    let tallies = tallies.into_inner().unwrap();
    print_table(&tallies, elapsed);
    assert!(!failed.load(Ordering::Relaxed), "a worker failed; its panic is above");

    // Nothing for any attacker; the registered caller served every time, one SVID each.
    for (kind, t) in &tallies {
        if *kind == Kind::Registered {
            assert_eq!((t.served, t.svids), (t.tries, t.tries), "{kind:?}: {t:?}");
            assert_eq!(t.keys, t.tries - t.jwt, "{kind:?}: every X.509-SVID with its key");
            continue;
        }
        assert_eq!((t.served, t.svids, t.keys), (0, 0, 0), "{kind:?} got something: {t:?}");
        let code = if kind.sends_header() { "PermissionDenied" } else { "InvalidArgument" };
        assert_eq!(t.codes.get(code), Some(&t.tries), "{kind:?}: {t:?}");
    }
    assert_eq!(tallies.values().map(|t| t.tries).sum::<usize>(), tries);
    let reused = tallies.get(&Kind::PidReuse).map_or(0, |t| t.pid_reused);
    assert!(tries < 1000 || reused > 0, "no registered process ever took a connector's PID");

    // The agent's own counts agree: the attestation of every caller whose connector is
    // gone or changed failed; the others were attested and matched no entry.
    let after = metrics(&health);
    let count = |text: &str, result: &str| {
        let name = format!("keycard_agent_workload_attestations_total{{result=\"{result}\"}}");
        metric(text, &name).unwrap_or(0)
    };
    let attested = |fails: bool| -> usize {
        let of = |t: (&Kind, &Tally)| t.0.sends_header() && t.0.fails_attestation() == fails;
        tallies.iter().filter(|t| of(*t)).map(|t| t.1.tries).sum()
    };
    let errors = count(&after, "error") - count(&before, "error");
    let oks = count(&after, "ok") - count(&before, "ok");
    assert_eq!(errors as usize, attested(true), "failed attestations:\n{after}");
    assert_eq!(oks as usize, attested(false), "attestations:\n{after}");
    println!(
        "agent: {oks} callers attested (and matched no entry but the registered), {errors} refused at attestation"
    );
    // The wait loop's connection lives on this runtime: close it before stopping.
    drop(runtime);
    agent.stop();
}

/// Marks the run failed if the worker thread unwinds before [`Armed::disarm`].
struct Armed<'a>(Option<&'a AtomicBool>);

fn scopeguard(flag: &AtomicBool) -> Armed<'_> {
    Armed(Some(flag))
}

impl Armed<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        if let Some(flag) = self.0 {
            flag.store(true, Ordering::Relaxed);
        }
    }
}
