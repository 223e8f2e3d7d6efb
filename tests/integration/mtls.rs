//! Two workloads doing mutual TLS with SVIDs from a real agent, through the rustls configs
//! of `keycard_workload_api::tls`, while their SVIDs rotate several times.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keycard_workload_api::tls::{Authorizer, client_config, peer_spiffe_id, server_config};
use keycard_workload_api::{SpiffeId, X509Source};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::agent::{FAST_ROTATION, PATIENCE, Setup};

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

#[test]
fn an_mtls_pair_keeps_working_while_both_svids_rotate() {
    let setup = Setup::start_with("127.0.0.1:0", FAST_ROTATION);
    setup.entry("front");
    setup.entry("back");
    let agent = setup.agent("");
    let endpoint = format!("unix://{}", agent.socket.display());
    let (front, back) =
        (id("spiffe://example.org/workload/front"), id("spiffe://example.org/workload/back"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let source = tokio::time::timeout(PATIENCE, X509Source::new(Some(&endpoint)))
            .await
            .unwrap()
            .unwrap();
        let mut updates = source.updated();
        tokio::time::timeout(PATIENCE, updates.wait_for(|c| c.svids.len() == 2))
            .await
            .unwrap()
            .unwrap();

        // JwtSource: a token from the agent, validated locally against the JWT bundles.
        let jwt = keycard_workload_api::JwtSource::new(Some(&endpoint)).await.unwrap();
        let token = jwt.fetch_jwt_svid(&["db".to_owned()], Some(&front)).await.unwrap();
        assert_eq!(jwt.validate(&token.token, "db").unwrap().spiffe_id, front);
        assert!(jwt.validate(&token.token, "other").is_err());

        // "back" serves and accepts only "front"; "front" connects and accepts only "back".
        let server =
            server_config(&source, Some(back.clone()), Authorizer::Exact(front.clone())).unwrap();
        let client =
            client_config(&source, Some(front.clone()), Authorizer::Exact(back.clone())).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let seen_by_server = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
        let server_task = tokio::spawn({
            let seen = seen_by_server.clone();
            async move {
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let (acceptor, seen) = (acceptor.clone(), seen.clone());
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                        let (_, conn) = tls.get_ref();
                        let peer = peer_spiffe_id(conn).map(|i| i.to_string()).unwrap_or_default();
                        let leaf = conn.peer_certificates().unwrap()[0].to_vec();
                        seen.lock().unwrap().insert((peer, leaf));
                        let mut buf = [0u8; 4];
                        if tls.read_exact(&mut buf).await.is_ok() {
                            let _ = tls.write_all(&buf).await;
                            let _ = tls.shutdown().await;
                        }
                    });
                }
            }
        });

        let connector = TlsConnector::from(Arc::new(client));
        let (mut handshakes, mut failures) = (0, Vec::new());
        let mut server_leaves = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(14);
        while Instant::now() < deadline {
            let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
            let name = ServerName::try_from("back").unwrap();
            handshakes += 1;
            match connector.connect(name, tcp).await {
                Ok(mut tls) => {
                    let (_, conn) = tls.get_ref();
                    assert_eq!(peer_spiffe_id(conn).as_ref(), Some(&back));
                    server_leaves.insert(conn.peer_certificates().unwrap()[0].to_vec());
                    tls.write_all(b"ping").await.unwrap();
                    let mut echo = [0u8; 4];
                    tls.read_exact(&mut echo).await.unwrap();
                    assert_eq!(&echo, b"ping");
                }
                Err(e) => failures.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server_task.abort();
        assert!(
            failures.is_empty(),
            "{} of {handshakes} handshakes failed: {failures:?}",
            failures.len()
        );
        assert!(
            server_leaves.len() >= 3,
            "the server's SVID rotated only {} times",
            server_leaves.len() - 1
        );
        let seen = seen_by_server.lock().unwrap();
        assert!(
            seen.iter().all(|(peer, _)| *peer == front.to_string()),
            "{:?}",
            seen.iter().map(|s| &s.0).collect::<Vec<_>>()
        );
        assert!(seen.len() >= 3, "the client's SVID rotated only {} times", seen.len() - 1);
        println!(
            "{handshakes} handshakes, 0 failed; server SVIDs seen: {}, client SVIDs seen: {}",
            server_leaves.len(),
            seen.len()
        );
    });
    agent.stop();
}
