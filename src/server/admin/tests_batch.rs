//! Batch registration over the real admin socket and a real SQLite file: all or none,
//! per-entry errors, the size bounds, and a 10,000-entry batch.

use std::time::Instant;

use tonic::Code;

use super::entries_batch::MAX_BATCH_ENTRIES;
use super::pb;
use super::tests::{AGENT_ID, Harness, SERVER_ID, spec};
use crate::server::datastore::DataStore as _;

fn specs(n: usize, prefix: &str) -> Vec<pb::EntrySpec> {
    (0..n).map(|i| spec(&format!("/{prefix}/{i}"), AGENT_ID, &[&format!("unix:uid:{i}")])).collect()
}

async fn create_batch(h: &mut Harness, specs: Vec<pb::EntrySpec>) -> pb::BatchEntriesResponse {
    let mut api = h.client.clone().max_decoding_message_size(super::MAX_MESSAGE_BYTES);
    let req = pb::BatchCreateEntriesRequest { specs };
    api.batch_create_entries(req).await.unwrap().into_inner()
}

async fn delete_batch(h: &mut Harness, ids: Vec<String>) -> pb::BatchEntriesResponse {
    let mut api = h.client.clone().max_decoding_message_size(super::MAX_MESSAGE_BYTES);
    api.batch_delete_entries(pb::BatchDeleteEntriesRequest { ids }).await.unwrap().into_inner()
}

#[tokio::test]
async fn one_bad_entry_in_a_thousand_stores_none_and_each_error_names_its_entry() {
    let mut h = Harness::start(vec![]).await;
    let stored = spec("/taken", AGENT_ID, &["unix:uid:7"]);
    let req = pb::CreateEntryRequest { spec: Some(stored.clone()) };
    h.client.create_entry(req).await.unwrap();
    let revision_before = h.store.entry_changes_since(0, 0).unwrap().revision;

    // One entry breaks a rule of its own: nothing of the thousand is stored.
    let mut batch = specs(1000, "web");
    batch[537].selectors = vec!["unix:uid:abc".into()];
    let reply = create_batch(&mut h, batch.clone()).await;
    assert!(reply.entries.is_empty());
    assert_eq!(reply.errors.len(), 1, "{:?}", reply.errors);
    let e = &reply.errors[0];
    assert_eq!((e.index, e.spiffe_id.as_str()), (537, "spiffe://example.org/web/537"));
    assert!(e.message.contains("can never match"), "{}", e.message);
    assert_eq!(h.store.count_entries().unwrap(), 1);

    // Every broken rule is reported at once: the TTL cap, a duplicate inside the batch, a
    // duplicate of a stored entry (found in the datastore's transaction).
    batch[537].selectors = vec!["unix:uid:537".into()];
    batch[10].x509_ttl_seconds = 5 * 3600;
    batch[20] = batch[3].clone();
    let reply = create_batch(&mut h, batch.clone()).await;
    let found: Vec<u32> = reply.errors.iter().map(|e| e.index).collect();
    assert_eq!(found, vec![10, 20], "{:?}", reply.errors);
    assert!(reply.errors[0].message.contains("4h"), "the cap: {}", reply.errors[0].message);
    assert!(reply.errors[1].message.contains("entry #3 of this batch"), "{:?}", reply.errors[1]);
    batch[10].x509_ttl_seconds = 0;
    batch[20] = spec("/web/20", AGENT_ID, &["unix:uid:20"]);
    batch[999] = stored;
    let reply = create_batch(&mut h, batch.clone()).await;
    assert_eq!(reply.errors.len(), 1, "{:?}", reply.errors);
    assert_eq!(reply.errors[0].index, 999);
    assert!(reply.errors[0].message.contains("keycard entry update --id"), "{:?}", reply.errors);
    assert_eq!(h.store.count_entries().unwrap(), 1);
    // A refused batch leaves no trace: not even a revision.
    assert_eq!(h.store.entry_changes_since(0, 0).unwrap().revision, revision_before);
}

#[tokio::test]
async fn a_good_batch_is_stored_whole_with_parent_warnings_and_deleted_whole() {
    let mut h = Harness::start(vec![]).await;
    let mut batch = specs(3, "web");
    // A parent that is an entry of the same batch exists; the server always does.
    batch.push(spec("/child", "spiffe://example.org/web/0", &["unix:uid:50"]));
    batch.push(spec("/alias", SERVER_ID, &["x509pop:subject:cn:db"]));
    let reply = create_batch(&mut h, batch).await;
    assert!(reply.errors.is_empty(), "{:?}", reply.errors);
    let missing: Vec<bool> = reply.entries.iter().map(|e| e.parent_missing).collect();
    assert_eq!(missing, vec![true, true, true, false, false]);
    let revisions: Vec<u64> = reply.entries.iter().map(|e| e.revision).collect();
    assert!(revisions.windows(2).all(|w| w[1] == w[0] + 1), "{revisions:?}");
    assert_eq!(h.store.count_entries().unwrap(), 5);
    assert_eq!(h.metrics.entries.get(), 5);
    let got = h.client.get_entry(pb::GetEntryRequest { id: reply.entries[3].id.clone() });
    let got = got.await.unwrap().into_inner();
    assert_eq!(got, pb::Entry { parent_missing: false, ..reply.entries[3].clone() });

    let mut ids: Vec<String> = reply.entries.iter().map(|e| e.id.clone()).collect();
    ids.push("no-such-entry".into());
    ids.push(ids[0].clone());
    let refused = delete_batch(&mut h, ids.clone()).await;
    let found: Vec<(u32, &str)> =
        refused.errors.iter().map(|e| (e.index, e.entry_id.as_str())).collect();
    assert_eq!(found, vec![(6, ids[0].as_str())], "a repeat is caught before the store");
    ids.pop();
    let refused = delete_batch(&mut h, ids.clone()).await;
    assert_eq!(refused.errors.len(), 1, "{:?}", refused.errors);
    assert_eq!(
        (refused.errors[0].index, refused.errors[0].entry_id.as_str()),
        (5, "no-such-entry")
    );
    assert!(refused.errors[0].message.contains("no entry with ID"), "{:?}", refused.errors);
    assert_eq!(h.store.count_entries().unwrap(), 5);
    ids.pop();
    let before = h.store.entry_changes_since(0, 0).unwrap().revision;
    let deleted = delete_batch(&mut h, ids.clone()).await;
    assert!(deleted.errors.is_empty());
    assert_eq!(deleted.entries.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ids);
    assert_eq!(h.store.count_entries().unwrap(), 0);
    let changes = h.store.entry_changes_since(before, 0).unwrap();
    assert_eq!(changes.deleted, ids, "each delete leaves a tombstone");
}

#[tokio::test]
async fn empty_and_oversized_batches_are_refused_with_the_limit() {
    let mut h = Harness::start(vec![]).await;
    let req = pb::BatchCreateEntriesRequest { specs: Vec::new() };
    let status = h.client.batch_create_entries(req).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("empty"), "{}", status.message());
    let req = pb::BatchCreateEntriesRequest { specs: specs(MAX_BATCH_ENTRIES + 1, "w") };
    let status = h.client.batch_create_entries(req).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().contains("10001 entries, more than the 10000"),
        "{}",
        status.message()
    );
    let req = pb::BatchDeleteEntriesRequest { ids: vec!["x".into(); MAX_BATCH_ENTRIES + 1] };
    let status = h.client.batch_delete_entries(req).await.unwrap_err();
    assert!(status.message().contains("split it"), "{}", status.message());
    assert_eq!(h.store.count_entries().unwrap(), 0);
}

#[tokio::test]
async fn ten_thousand_entries_in_one_call() {
    let mut h = Harness::start(vec![]).await;
    let started = Instant::now();
    let reply = create_batch(&mut h, specs(MAX_BATCH_ENTRIES, "fleet")).await;
    let created = started.elapsed();
    assert!(reply.errors.is_empty(), "{:?}", &reply.errors[..reply.errors.len().min(3)]);
    assert_eq!(reply.entries.len(), MAX_BATCH_ENTRIES);
    assert_eq!(h.store.count_entries().unwrap(), MAX_BATCH_ENTRIES as u64);
    let ids = reply.entries.iter().map(|e| e.id.clone()).collect();
    let started = Instant::now();
    let deleted = delete_batch(&mut h, ids).await;
    let removed = started.elapsed();
    assert_eq!(deleted.entries.len(), MAX_BATCH_ENTRIES);
    assert_eq!(h.store.count_entries().unwrap(), 0);
    println!("10,000 entries: created in {created:?}, deleted in {removed:?} (one call each)");
}
