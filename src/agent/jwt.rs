//! JWT-SVIDs for the Workload API: minted by the server, cached on the agent.
//!
//! The [`Manager`](super::manager::Manager) owns the only connection to the server, so
//! the Workload API does not call the server itself: it asks through a [`JwtMinter`], whose
//! requests the manager serves between its sync rounds. Tokens are cached per (entry,
//! audiences) and handed out again until half their lifetime has passed, as SPIRE does:
//! a busy workload asking for the same token costs the server nothing. A token signed by
//! a JWT authority the server has since tainted is not handed out again: the next caller
//! gets one signed by the active key ([`JwtMinter::set_tainted`]).
//!
//! For an entry whose JWT-SVIDs are bound to X.509 (RFC 8705 `cnf`), the request carries
//! the X.509-SVID the caller holds for the entry ([`Binding`]), and the cache key includes
//! that SVID's serial: once the X.509-SVID rotates, the next caller gets a token bound to
//! the new certificate.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};

use super::cache::TrustBundle;
use crate::clock::Clock;

/// How many tokens the cache keeps at most (the oldest is dropped first).
pub const MAX_CACHED_TOKENS: usize = 4096;
/// How long a Workload API call waits for the server to mint a token.
pub const MINT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The agent's sync loop is not running (shutting down).
    #[error("the agent is not connected to the server")]
    NoManager,
    /// The server did not answer in time.
    #[error("the server did not mint the JWT-SVID within {0:?}")]
    Timeout(Duration),
    /// The server refused or could not be reached.
    #[error("the server could not mint the JWT-SVID: {0}")]
    Server(String),
}

/// The X.509-SVID a bound token is bound to.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The SVID's serial (hex): part of the cache key.
    pub serial: String,
    /// Leaf first, then intermediates, DER each: sent to the server.
    pub chain: Vec<Vec<u8>>,
}

/// One request for the manager: mint a token for `entry_id` and `audiences`.
#[derive(Debug)]
pub struct JwtRequest {
    /// The entry the token is for.
    pub entry_id: String,
    /// The audiences, sorted and without duplicates.
    pub audiences: Vec<String>,
    /// For entries bound to X.509: the caller's X.509-SVID chain; empty otherwise.
    pub x509_svid: Vec<Vec<u8>>,
    /// Where the token (and its `exp`, seconds since the epoch) goes.
    pub reply: oneshot::Sender<Result<(String, i64), JwtError>>,
}

/// A token the agent holds; its `Debug` output (and so the [`JwtMinter`]'s) redacts it.
#[derive(Clone)]
struct CachedToken {
    token: String,
    issued_at: SystemTime,
    expires_at: SystemTime,
    /// The `kid` the token was signed with (none if its header does not say).
    kid: Option<String>,
    /// The bundle the token was last validated against (a `Weak`, so that its address
    /// cannot be taken by another bundle while this is held): the same token and bundle
    /// need no second signature check.
    checked_with: Option<Weak<TrustBundle>>,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("token", &"<redacted>")
            .field("kid", &self.kid)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl CachedToken {
    /// Fresh until half its life has passed.
    fn fresh(&self, now: SystemTime) -> bool {
        let life = self.expires_at.duration_since(self.issued_at).unwrap_or_default();
        now < self.issued_at + life / 2
    }
}

/// (entry ID, audiences, serial of the X.509-SVID the token is bound to).
type Key = (String, Vec<String>, Option<String>);

fn key(entry_id: &str, audiences: &[String], serial: Option<&str>) -> Key {
    (entry_id.to_owned(), normalize_audiences(audiences), serial.map(str::to_owned))
}

/// The `kid` in the header of a compact JWS, if it has one.
fn kid_of(token: &str) -> Option<String> {
    let jws = keycard_workload_api::jws::CompactJws::decode(token).ok()?;
    jws.header.get("kid")?.as_str().map(str::to_owned)
}

/// The Workload API's handle for JWT-SVIDs; cheap to clone.
#[derive(Debug, Clone)]
pub struct JwtMinter {
    requests: mpsc::Sender<JwtRequest>,
    cache: Arc<Mutex<HashMap<Key, CachedToken>>>,
    /// IDs of tainted authorities, from the last sync: a cached token signed by one of
    /// them is not handed out.
    tainted: Arc<Mutex<HashSet<String>>>,
    clock: Arc<dyn Clock>,
}

/// Sorted, deduplicated audiences: the same set is the same cache key.
pub fn normalize_audiences(audiences: &[String]) -> Vec<String> {
    let mut a = audiences.to_vec();
    a.sort();
    a.dedup();
    a
}

impl JwtMinter {
    /// A minter, and the receiver of its requests (give it to the manager).
    pub fn new(clock: Arc<dyn Clock>) -> (Self, mpsc::Receiver<JwtRequest>) {
        let (requests, rx) = mpsc::channel(64);
        (Self { requests, cache: Arc::default(), tainted: Arc::default(), clock }, rx)
    }

    /// Takes the tainted authority IDs of a sync (both kinds: a JWT `kid` never equals an
    /// X.509 subject key ID) and drops the cached tokens signed by a tainted key.
    pub fn set_tainted(&self, ids: &[String]) {
        let ids: HashSet<String> = ids.iter().cloned().collect();
        {
            let mut tainted = self.tainted.lock().unwrap_or_else(PoisonError::into_inner);
            if *tainted == ids {
                return;
            }
            *tainted = ids.clone();
        }
        self.lock().retain(|_, c| c.kid.as_ref().is_none_or(|k| !ids.contains(k)));
    }

    /// Whether a cached token may be handed out at `now`: fresh, and not signed by a
    /// tainted key (checked here too, for a token minted before a taint and cached after
    /// the sync that brought it).
    fn usable(&self, cached: &CachedToken, now: SystemTime) -> bool {
        let tainted = self.tainted.lock().unwrap_or_else(PoisonError::into_inner);
        cached.fresh(now) && cached.kid.as_ref().is_none_or(|k| !tainted.contains(k))
    }

    /// A token for `entry_id` and `audiences` (bound to `binding`'s certificate if given):
    /// from the cache while fresh, else minted.
    pub async fn token(
        &self,
        entry_id: &str,
        audiences: &[String],
        binding: Option<&Binding>,
    ) -> Result<String, JwtError> {
        let key = key(entry_id, audiences, binding.map(|b| b.serial.as_str()));
        let now = self.clock.now();
        if let Some(hit) = self.lock().get(&key).filter(|c| self.usable(c, now)) {
            return Ok(hit.token.clone());
        }
        let (reply, answer) = oneshot::channel();
        let request = JwtRequest {
            entry_id: key.0.clone(),
            audiences: key.1.clone(),
            x509_svid: binding.map(|b| b.chain.clone()).unwrap_or_default(),
            reply,
        };
        self.requests.send(request).await.map_err(|_| JwtError::NoManager)?;
        let (token, exp) = tokio::time::timeout(MINT_TIMEOUT, answer)
            .await
            .map_err(|_| JwtError::Timeout(MINT_TIMEOUT))?
            .map_err(|_| JwtError::NoManager)??;
        let expires_at = SystemTime::UNIX_EPOCH + Duration::from_secs(exp.max(0) as u64);
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED_TOKENS && !cache.contains_key(&key) {
            let oldest = cache.iter().min_by_key(|(_, c)| c.issued_at).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                cache.remove(&oldest);
            }
        }
        let cached = CachedToken {
            kid: kid_of(&token),
            token: token.clone(),
            issued_at: self.clock.now(),
            expires_at,
            checked_with: None,
        };
        cache.insert(key, cached);
        Ok(token)
    }

    /// The cached token for `entry_id` and `audiences` (bound to the X.509-SVID of serial
    /// `serial`, if given) while it is fresh, without asking the server.
    pub fn cached(
        &self,
        entry_id: &str,
        audiences: &[String],
        serial: Option<&str>,
    ) -> Option<String> {
        let key = key(entry_id, audiences, serial);
        let now = self.clock.now();
        self.lock().get(&key).filter(|c| self.usable(c, now)).map(|c| c.token.clone())
    }

    /// Whether `token` (the cached one for `entry_id` and `audiences`) was validated
    /// against `bundle` already ([`JwtMinter::mark_checked`]).
    pub fn is_checked(
        &self,
        entry_id: &str,
        audiences: &[String],
        serial: Option<&str>,
        token: &str,
        bundle: &Arc<TrustBundle>,
    ) -> bool {
        let key = key(entry_id, audiences, serial);
        self.lock().get(&key).is_some_and(|c| {
            c.token == token
                && c.checked_with.as_ref().is_some_and(|w| w.ptr_eq(&Arc::downgrade(bundle)))
        })
    }

    /// Records that the cached `token` validated against `bundle`.
    pub fn mark_checked(
        &self,
        entry_id: &str,
        audiences: &[String],
        serial: Option<&str>,
        token: &str,
        bundle: &Arc<TrustBundle>,
    ) {
        let key = key(entry_id, audiences, serial);
        if let Some(c) = self.lock().get_mut(&key).filter(|c| c.token == token) {
            c.checked_with = Some(Arc::downgrade(bundle));
        }
    }

    /// Forgets the cached token of `entry_id` and `audiences` (it failed validation).
    pub fn forget(&self, entry_id: &str, audiences: &[String], serial: Option<&str>) {
        self.lock().remove(&key(entry_id, audiences, serial));
    }

    /// Drops the tokens of entries not in `keep` (entries removed by a sync).
    pub fn retain_entries(&self, keep: &dyn Fn(&str) -> bool) {
        self.lock().retain(|(entry, _, _), _| keep(entry));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, CachedToken>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    /// Answers every request with a numbered token living 60 s from the clock's now.
    fn serve(mut rx: mpsc::Receiver<JwtRequest>, clock: Arc<ManualClock>) -> Arc<Mutex<usize>> {
        let minted = Arc::new(Mutex::new(0));
        let counter = minted.clone();
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                let n = {
                    let mut m = counter.lock().unwrap();
                    *m += 1;
                    *m
                };
                let exp =
                    clock.now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() + 60;
                let token = format!("{}:{}:{n}", req.entry_id, req.audiences.join(","));
                let _ = req.reply.send(Ok((token, exp as i64)));
            }
        });
        minted
    }

    #[tokio::test]
    async fn tokens_are_reused_until_half_their_life_then_minted_again() {
        let clock = Arc::new(ManualClock::starting_now());
        let (minter, rx) = JwtMinter::new(clock.clone());
        let minted = serve(rx, clock.clone());
        let a = minter.token("e1", &["b".into(), "a".into(), "a".into()], None).await.unwrap();
        assert_eq!(a, "e1:a,b:1");
        // Same audiences in another order: the cached token.
        assert_eq!(minter.token("e1", &["a".into(), "b".into()], None).await.unwrap(), a);
        // Another audience or entry: a new token.
        assert_eq!(minter.token("e1", &["a".into()], None).await.unwrap(), "e1:a:2");
        assert_eq!(minter.token("e2", &["a".into()], None).await.unwrap(), "e2:a:3");
        clock.advance(Duration::from_secs(29));
        assert_eq!(minter.token("e1", &["a".into(), "b".into()], None).await.unwrap(), a);
        clock.advance(Duration::from_secs(2));
        assert_eq!(minter.token("e1", &["a".into(), "b".into()], None).await.unwrap(), "e1:a,b:4");
        minter.forget("e1", &["a".into(), "b".into()], None);
        assert_eq!(minter.token("e1", &["b".into(), "a".into()], None).await.unwrap(), "e1:a,b:5");
        minter.retain_entries(&|e| e != "e2");
        assert_eq!(minter.token("e2", &["a".into()], None).await.unwrap(), "e2:a:6");
        assert_eq!(*minted.lock().unwrap(), 6);
    }

    fn trust_bundle() -> Arc<TrustBundle> {
        let td = keycard_workload_api::TrustDomain::new("example.org").unwrap();
        let spiffe = crate::ca::manager::test_ca(td).bundle().unwrap();
        let (x509, jwt) = (spiffe.x509_bundle().unwrap(), spiffe.jwt_bundle().unwrap());
        Arc::new(TrustBundle { spiffe, x509, jwt })
    }

    #[tokio::test]
    async fn a_token_is_checked_once_per_bundle_and_a_new_token_is_checked_again() {
        let clock = Arc::new(ManualClock::starting_now());
        let (minter, rx) = JwtMinter::new(clock.clone());
        serve(rx, clock.clone());
        let aud = vec!["a".to_string()];
        assert_eq!(minter.cached("e1", &aud, None), None, "nothing minted yet");
        let token = minter.token("e1", &aud, None).await.unwrap();
        assert_eq!(minter.cached("e1", &aud, None).as_deref(), Some(token.as_str()));
        let (first, second) = (trust_bundle(), trust_bundle());
        assert!(!minter.is_checked("e1", &aud, None, &token, &first), "never checked");
        minter.mark_checked("e1", &aud, None, &token, &first);
        assert!(minter.is_checked("e1", &aud, None, &token, &first));
        assert!(!minter.is_checked("e1", &aud, None, &token, &second), "another bundle");
        assert!(!minter.is_checked("e1", &aud, None, "another token", &first));
        assert!(!minter.is_checked("e2", &aud, None, &token, &first), "another entry");
        // Past half its life the token is minted again, and not checked yet.
        clock.advance(Duration::from_secs(31));
        assert_eq!(minter.cached("e1", &aud, None), None);
        let fresh = minter.token("e1", &aud, None).await.unwrap();
        assert_ne!(fresh, token);
        assert!(!minter.is_checked("e1", &aud, None, &fresh, &first));
    }

    #[tokio::test]
    async fn bound_tokens_are_cached_per_x509_svid_serial_and_send_its_chain() {
        let clock = Arc::new(ManualClock::starting_now());
        let (minter, mut rx) = JwtMinter::new(clock.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while let Some(req) = rx.recv().await {
                n += 1;
                let leaf = req.x509_svid.first().map(|c| String::from_utf8_lossy(c).into_owned());
                let token = format!("{}:{n}", leaf.unwrap_or_default());
                let _ = req.reply.send(Ok((token, i64::MAX / 2)));
            }
        });
        let aud = vec!["a".to_string()];
        let first = Binding { serial: "01".into(), chain: vec![b"leaf-1".to_vec()] };
        let second = Binding { serial: "02".into(), chain: vec![b"leaf-2".to_vec()] };
        assert_eq!(minter.token("e1", &aud, Some(&first)).await.unwrap(), "leaf-1:1");
        assert_eq!(minter.token("e1", &aud, Some(&first)).await.unwrap(), "leaf-1:1", "cached");
        assert_eq!(minter.cached("e1", &aud, None), None, "an unbound token is another key");
        // The X.509-SVID rotated: a token bound to the new certificate.
        assert_eq!(minter.cached("e1", &aud, Some("02")), None);
        assert_eq!(minter.token("e1", &aud, Some(&second)).await.unwrap(), "leaf-2:2");
        assert_eq!(minter.token("e1", &aud, None).await.unwrap(), ":3", "unbound: no chain");
        minter.retain_entries(&|e| e != "e1");
        assert_eq!(minter.cached("e1", &aud, Some("02")), None);
    }

    #[tokio::test]
    async fn without_a_manager_the_call_fails_at_once() {
        let (minter, rx) = JwtMinter::new(Arc::new(ManualClock::starting_now()));
        drop(rx);
        let err = minter.token("e1", &["a".into()], None).await.unwrap_err();
        assert!(matches!(err, JwtError::NoManager), "{err}");
    }

    /// A compact JWS (unsigned: the minter never checks signatures) with this `kid`.
    fn token_with_kid(kid: &str, n: u64) -> String {
        use base64::Engine as _;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let header = b64(serde_json::json!({ "alg": "ES256", "kid": kid }));
        format!("{header}.{}.AAAA", b64(serde_json::json!({ "n": n })))
    }

    #[tokio::test]
    async fn a_token_signed_by_a_tainted_key_is_not_handed_out_again() {
        let clock = Arc::new(ManualClock::starting_now());
        let (minter, mut rx) = JwtMinter::new(clock.clone());
        // The server signs with "old" first, then with "new" (as after an activation).
        let active = Arc::new(Mutex::new("old"));
        let signing = active.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Some(req) = rx.recv().await {
                n += 1;
                let kid = *signing.lock().unwrap();
                let _ = req.reply.send(Ok((token_with_kid(kid, n), i64::MAX / 2)));
            }
        });
        let (a, b) = (vec!["a".to_string()], vec!["b".to_string()]);
        let old_a = minter.token("e1", &a, None).await.unwrap();
        let old_b = minter.token("e1", &b, None).await.unwrap();
        *active.lock().unwrap() = "new";
        minter.set_tainted(&["0a1b".into()]);
        assert_eq!(minter.cached("e1", &a, None).as_deref(), Some(old_a.as_str()), "another key");
        // The taint drops both cached tokens; new ones are signed by the active key.
        minter.set_tainted(&["0a1b".into(), "old".into()]);
        assert_eq!(minter.cached("e1", &a, None), None);
        let new_a = minter.token("e1", &a, None).await.unwrap();
        assert_eq!(kid_of(&new_a).as_deref(), Some("new"));
        let debug = format!("{minter:?}");
        assert!(!debug.contains(&new_a) && debug.contains("<redacted>"), "{debug}");
        assert_ne!(minter.token("e1", &b, None).await.unwrap(), old_b);
        // A token of a tainted key cached after the sync is refused when asked for.
        let late = CachedToken {
            token: old_a.clone(),
            issued_at: clock.now(),
            expires_at: clock.now() + Duration::from_secs(60),
            kid: kid_of(&old_a),
            checked_with: None,
        };
        minter.lock().insert(("e2".into(), a.clone(), None), late);
        assert_eq!(minter.cached("e2", &a, None), None);
        assert_eq!(minter.cached("e1", &a, None).as_deref(), Some(new_a.as_str()));
    }
}
