//! JWT-SVIDs bound to X.509: the server binds a token only to an X.509-SVID that chains to
//! its bundle, names the entry's SPIFFE ID and is valid now (an agent asking for a token
//! bound to a certificate its workload does not hold is refused).

use std::time::SystemTime;

use keycard_workload_api::{JwtBundleSet, validate_jwt_svid, x5t_s256};
use serde_json::json;
use tonic::Code;

use super::*;
use crate::agent::ClientError;
use crate::server::entry::JwtSvidBinding;

/// The chain (DER each) of an X.509-SVID the harness's CA issues for `entry_id`.
async fn x509_svid(agent: &mut ServerClient, entry_id: &str) -> Vec<Vec<u8>> {
    let mut results = agent.batch_new_x509_svid(&[(entry_id.to_owned(), csr())]).await.unwrap();
    let svid = results.remove(0).unwrap();
    svid.chain.iter().map(|c| c.to_vec()).collect()
}

/// The refusal's message, checking that it is PermissionDenied.
fn denied(err: ClientError) -> String {
    match err {
        ClientError::Rpc(s) if s.code() == Code::PermissionDenied => s.message().to_owned(),
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bound_entry_gets_cnf_of_its_own_svid_and_nothing_else_is_bound() {
    let h = Harness::start().await;
    let mut agent = h.agent().await;
    let me = agent.identity().unwrap().spiffe_id.clone();
    let bind = |s: &mut EntrySpec| s.jwt_svid_binding = JwtSvidBinding::X509;
    let web = h.entry_with("spiffe://example.org/web", &me, &["unix:uid:1"], bind);
    let db = h.entry("spiffe://example.org/db", &me, &["unix:uid:2"]);
    let web_chain = x509_svid(&mut agent, &web.id).await;
    let db_chain = x509_svid(&mut agent, &db.id).await;
    let aud = ["api".to_string()];
    let mut bundles = JwtBundleSet::new();
    bundles.insert(h.ca.bundle().unwrap().jwt_bundle().unwrap());

    // With the entry's own X.509-SVID: the token is bound to its leaf.
    let (token, _) = agent.new_bound_jwt_svid(&web.id, &aud, web_chain.clone()).await.unwrap();
    let svid = validate_jwt_svid(&token, &bundles, &["api"], SystemTime::now()).unwrap();
    assert_eq!(svid.spiffe_id, web.spec.spiffe_id);
    assert_eq!(svid.claims["cnf"], json!({ "x5t#S256": x5t_s256(&web_chain[0]) }));

    // Without a certificate, with another entry's, or with one this CA never issued.
    let msg = denied(agent.new_jwt_svid(&web.id, &aud).await.unwrap_err());
    assert!(msg.contains("no X.509-SVID was sent"), "{msg}");
    let msg = denied(agent.new_bound_jwt_svid(&web.id, &aud, db_chain.clone()).await.unwrap_err());
    assert!(
        msg.contains("is for spiffe://example.org/db, not the entry's spiffe://example.org/web"),
        "{msg}"
    );
    let stranger = Harness::start().await;
    let mut other_agent = stranger.agent().await;
    let other_me = other_agent.identity().unwrap().spiffe_id.clone();
    let twin = stranger.entry("spiffe://example.org/web", &other_me, &["unix:uid:1"]);
    let forged = x509_svid(&mut other_agent, &twin.id).await;
    let msg = denied(agent.new_bound_jwt_svid(&web.id, &aud, forged).await.unwrap_err());
    assert!(msg.contains("no authority of trust domain example.org issued this chain"), "{msg}");
    let msg =
        denied(agent.new_bound_jwt_svid(&web.id, &aud, vec![b"junk".to_vec()]).await.unwrap_err());
    assert!(msg.contains("the X.509-SVID sent is refused"), "{msg}");

    // An unbound entry's tokens stay plain bearer tokens whatever the agent sends.
    let (plain, _) = agent.new_bound_jwt_svid(&db.id, &aud, db_chain).await.unwrap();
    let plain = validate_jwt_svid(&plain, &bundles, &["api"], SystemTime::now()).unwrap();
    assert_eq!(plain.claims.get("cnf"), None);
    assert_eq!(h.metrics.issued_total("jwt", "workload"), 2, "refusals sign nothing");
}
