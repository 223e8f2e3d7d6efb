//! Streams share their caller set's SVIDs and let go of them when they end: 2,000 streams
//! opened and dropped over a real socket leave no subscription and no extra reference to
//! the SVID's key behind.

use std::sync::Arc;
use std::time::Duration;

use keycard_workload_api::proto::X509svidRequest;

use super::tests::{Setup, client, entry, with_header};

/// Waits (bounded) until the service has ended every stream's subscription.
async fn no_subscriptions_left(s: &Setup) -> bool {
    for _ in 0..500 {
        if s.cache.subscriptions() == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn two_thousand_streams_share_one_set_and_leave_nothing_behind() {
    let mut s = Setup::start().await;
    let mine = s.my_selector();
    s.sync(vec![entry("e1", "spiffe://example.org/me", &mine)]);
    let key = s.mint("e1");
    let baseline = Arc::strong_count(&key);
    let mut c = client(&s.socket).await;

    for round in 0..20 {
        // 100 streams open at once: one subscription, one shared copy of the SVID.
        let mut open = Vec::new();
        for _ in 0..100 {
            let mut stream =
                c.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap().into_inner();
            assert_eq!(stream.message().await.unwrap().unwrap().svids.len(), 1);
            open.push(stream);
        }
        assert_eq!(s.cache.subscriptions(), 1, "round {round}");
        assert_eq!(Arc::strong_count(&key), baseline + 1, "round {round}: one shared list");
        drop(open);
        assert!(no_subscriptions_left(&s).await, "round {round}: subscriptions kept");
        assert_eq!(Arc::strong_count(&key), baseline, "round {round}: the SVID is still held");
    }
}
