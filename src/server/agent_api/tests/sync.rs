//! Entry sync by difference, batch X.509 signing and JWT-SVIDs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use keycard_workload_api::{JwtBundleSet, validate_jwt_svid, verify_chain};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::*;
use crate::agent::client::SyncDelta;

/// Nothing held: the first revision-list sync.
const NOTHING: &[(String, u64)] = &[];

fn by_id(delta: &SyncDelta) -> BTreeMap<String, pb::Entry> {
    delta.entries.iter().map(|e| (e.id.clone(), e.clone())).collect()
}

fn ids(delta: &SyncDelta) -> BTreeSet<String> {
    by_id(delta).into_keys().collect()
}

#[tokio::test]
async fn sync_returns_exactly_the_authorized_entries() {
    let h = Harness::start().await;
    let node1 = pem_certs("nodes/node1.pem");
    let mut agent = h.client().await;
    let me = agent.attest_x509pop(&node1[..1], &pem_key("nodes/node1.key.pem")).await.unwrap();
    let me = me.identity.spiffe_id;
    let other = h.agent().await.identity().unwrap().spiffe_id.clone();
    let direct = h.entry("spiffe://example.org/direct", &me, &["unix:uid:1"]);
    let alias = h.entry(
        "spiffe://example.org/nodes/cn-node1",
        &h.server_id(),
        &["x509pop:subject:cn:node1"],
    );
    let via_alias =
        h.entry("spiffe://example.org/via-alias", &alias.spec.spiffe_id, &["unix:uid:2"]);
    let other_alias = h.entry(
        "spiffe://example.org/nodes/cn-node2",
        &h.server_id(),
        &["x509pop:subject:cn:node2"],
    );
    h.entry("spiffe://example.org/not-mine", &other_alias.spec.spiffe_id, &["unix:uid:3"]);
    h.entry("spiffe://example.org/other-agent", &other, &["unix:uid:4"]);
    let synced = agent.sync(0, NOTHING).await.unwrap();
    assert_eq!(ids(&synced), BTreeSet::from([direct.id.clone(), via_alias.id.clone()]));
    let entries = by_id(&synced);
    assert_eq!(entries[&direct.id].spiffe_id, "spiffe://example.org/direct");
    assert_eq!(entries[&via_alias.id].selectors, vec!["unix:uid:2".to_string()]);
    assert!(synced.revision >= via_alias.revision);
    assert!(synced.bundle.is_some());
}

#[tokio::test]
async fn a_second_sync_sends_only_changes_and_drops_deleted_entries() {
    let h = Harness::start().await;
    let mut agent = h.agent().await;
    let me = agent.identity().unwrap().spiffe_id.clone();
    let keep = h.entry("spiffe://example.org/keep", &me, &["unix:uid:1"]);
    let change = h.entry("spiffe://example.org/change", &me, &["unix:uid:2"]);
    let delete = h.entry("spiffe://example.org/delete", &me, &["unix:uid:3"]);
    let first = agent.sync(0, NOTHING).await.unwrap();
    assert_eq!(first.entries.len(), 3);
    assert!(first.removed.is_empty());

    let mut spec = change.spec.clone();
    spec.dns_names = vec!["changed.example.org".into()];
    h.store.update_entry(&change.id, &spec, SystemTime::now()).unwrap();
    h.store.delete_entry(&delete.id).unwrap();
    let added = h.entry("spiffe://example.org/added", &me, &["unix:uid:4"]);

    // On the wire: every authorized ID with its revision, full entries only for changes.
    let (revisions, full, last) = agent.sync_entries(first.revision, Vec::new()).await.unwrap();
    let listed: BTreeSet<String> = revisions.iter().map(|r| r.id.clone()).collect();
    assert_eq!(listed, BTreeSet::from([keep.id.clone(), change.id.clone(), added.id.clone()]));
    let sent: BTreeSet<String> = full.iter().map(|e| e.id.clone()).collect();
    assert_eq!(sent, BTreeSet::from([change.id.clone(), added.id.clone()]));
    assert!(last.complete && last.revision > first.revision);

    // As a delta against what the agent holds: the changed and added entries, the
    // deleted one's ID; the unchanged one is neither sent nor fetched.
    let mut held: Vec<(String, u64)> =
        first.entries.iter().map(|e| (e.id.clone(), e.revision)).collect();
    held.sort();
    let second = agent.sync(first.revision, &held).await.unwrap();
    assert_eq!(ids(&second), sent);
    assert_eq!(second.removed, vec![delete.id.clone()]);
    let mut now = by_id(&first);
    now.remove(&delete.id);
    now.extend(by_id(&second));
    assert_eq!(now.keys().cloned().collect::<BTreeSet<_>>(), listed);
    assert_eq!(now[&change.id].dns_names, vec!["changed.example.org".to_string()]);
    assert_eq!(now[&keep.id], by_id(&first)[&keep.id]);

    // An entry held at an older revision than listed (missed by `since_revision`) is
    // fetched by ID.
    held.iter_mut().find(|(id, _)| *id == keep.id).unwrap().1 = 0;
    let third = agent.sync(second.revision, &held).await.unwrap();
    assert!(ids(&third).contains(&keep.id), "{:?}", ids(&third));
}

#[tokio::test]
async fn batch_signing_takes_id_dns_and_ttl_from_the_entry() {
    let h = Harness::start().await;
    let mut agent = h.agent().await;
    let me = agent.identity().unwrap().spiffe_id.clone();
    let web = h.entry_with("spiffe://example.org/web", &me, &["unix:uid:1"], |s| {
        s.dns_names = vec!["web.example.org".into()];
        s.x509_ttl = Some(Duration::from_secs(600));
    });
    let db = h.entry("spiffe://example.org/db", &me, &["unix:uid:2"]);
    // The CSR asks for a DNS name; the entry's DNS names win.
    let asks_dns = csr_with(|p| {
        p.subject_alt_names = vec![rcgen::SanType::DnsName("evil.example.org".try_into().unwrap())]
    });
    let results = agent
        .batch_new_x509_svid(&[(web.id.clone(), asks_dns), (db.id.clone(), csr())])
        .await
        .unwrap();
    assert_eq!(results.len(), 2);
    let web_svid = results[0].as_ref().unwrap();
    assert_eq!(verify_chain(&web_svid.chain, &h.bundle_set(), now()).unwrap(), web.spec.spiffe_id);
    let (_, cert) = X509Certificate::from_der(&web_svid.chain[0]).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let dns: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(dns, vec!["web.example.org".to_string()]);
    let life = cert.validity().not_after.timestamp()
        - SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((590..=600).contains(&life), "{life}");
    let db_svid = results[1].as_ref().unwrap();
    assert_eq!(verify_chain(&db_svid.chain, &h.bundle_set(), now()).unwrap(), db.spec.spiffe_id);
    assert_eq!(h.metrics.issued_total("x509", "workload"), 2);
}

#[tokio::test]
async fn jwt_svids_carry_the_entry_id_and_audiences() {
    let h = Harness::start().await;
    let mut agent = h.agent().await;
    let me = agent.identity().unwrap().spiffe_id.clone();
    let web = h.entry("spiffe://example.org/web", &me, &["unix:uid:1"]);
    let (token, _expiry) = agent.new_jwt_svid(&web.id, &["db".to_string()]).await.unwrap();
    let mut bundles = JwtBundleSet::new();
    bundles.insert(h.ca.bundle().unwrap().jwt_bundle().unwrap());
    let svid = validate_jwt_svid(&token, &bundles, &["db"], SystemTime::now()).unwrap();
    assert_eq!(svid.spiffe_id, web.spec.spiffe_id);
    assert_eq!(h.metrics.issued_total("jwt", "workload"), 1);
    let err = agent.new_jwt_svid(&web.id, &[]).await.unwrap_err();
    assert!(
        matches!(err, crate::agent::ClientError::Rpc(s) if s.code() == tonic::Code::InvalidArgument)
    );
    // The server bounds the audiences too (an agent is not trusted to have done it).
    let many: Vec<String> = (0..=crate::wire::MAX_JWT_AUDIENCES).map(|i| format!("a{i}")).collect();
    let err = agent.new_jwt_svid(&web.id, &many).await.unwrap_err();
    assert!(
        matches!(&err, crate::agent::ClientError::Rpc(s) if s.code() == tonic::Code::InvalidArgument
            && s.message().contains("at most 32")),
        "{err:?}"
    );
    assert_eq!(h.metrics.issued_total("jwt", "workload"), 1);
}

#[tokio::test]
async fn signing_is_rate_limited_per_agent() {
    let h = Harness::start_with(|o| o.sign_rate = Rate { per_second: 0.001, burst: 2.0 }).await;
    let mut agent = h.agent().await;
    let me = agent.identity().unwrap().spiffe_id.clone();
    let web = h.entry("spiffe://example.org/web", &me, &["unix:uid:1"]);
    let two = vec![(web.id.clone(), csr()), (web.id.clone(), csr())];
    assert!(agent.batch_new_x509_svid(&two).await.unwrap().iter().all(|r| r.is_ok()));
    let err = agent.batch_new_x509_svid(&two[..1]).await.unwrap_err();
    assert!(
        matches!(err, crate::agent::ClientError::Rpc(s) if s.code() == tonic::Code::ResourceExhausted)
    );
}
