use super::*;

#[test]
fn the_list_goes_round() {
    let mut s = ServerAddresses::new(vec!["a:1".into(), "b:1".into(), "c:1".into()]).unwrap();
    assert_eq!(s.current(), "a:1");
    let order: Vec<String> = (0..3).map(|_| s.advance().to_owned()).collect();
    assert_eq!(order, ["b:1", "c:1", "a:1"]);
    assert_eq!(s.len(), 3);
    assert!(ServerAddresses::new(Vec::new()).is_none());
    let mut one = ServerAddresses::one("a:1");
    assert_eq!(one.advance(), "a:1");
}

#[test]
fn only_a_server_gone_moves_the_client() {
    let gone = [
        ClientError::Timeout { call: "SyncEntries", after: Duration::from_secs(1) },
        ClientError::Connect { addr: "a:1".into(), reason: "refused".into() },
        ClientError::Rpc(tonic::Status::unavailable("tcp connect error")),
        ClientError::Rpc(tonic::Status::from_error(Box::new(std::io::Error::other("reset")))),
        ClientError::Rpc(tonic::Status::internal("h2 protocol error: stream reset")),
    ];
    for e in &gone {
        assert!(failover_reason(e).is_some(), "{e}");
    }
    let retry = crate::wire::with_retry_after(
        tonic::Status::resource_exhausted("signing rate"),
        Duration::from_secs(1),
    );
    let answers = [
        ClientError::Rpc(tonic::Status::permission_denied("not an agent")),
        ClientError::Rpc(tonic::Status::invalid_argument("bad CSR")),
        ClientError::Rpc(retry),
        ClientError::Rpc(tonic::Status::internal("the server's own failure")),
        ClientError::Rpc(tonic::Status::unknown("said by the server")),
        ClientError::BadResponse("bad SVID".into()),
        ClientError::NotAttested,
    ];
    for e in &answers {
        assert_eq!(failover_reason(e), None, "{e}");
    }
}

#[test]
fn a_dial_never_outlasts_the_call_deadline() {
    assert_eq!(connect_timeout(Duration::from_millis(500)), Duration::from_millis(500));
    assert_eq!(connect_timeout(Duration::from_secs(30)), CONNECT_TIMEOUT);
}
