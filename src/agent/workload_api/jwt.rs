//! FetchJWTSVID: one token per identity of the caller (or the one asked for), minted by
//! the server through the agent's [`JwtMinter`] and validated before it is handed out
//! (once per token and bundle).
//!
//! For an entry bound to X.509 (`--jwt-svid-binding x509`) the token is bound to the
//! X.509-SVID the caller holds for that entry right now: the agent sends its chain with the
//! mint request, caches the token under that SVID's serial, and checks that the token's
//! `cnf` names that certificate before handing it out.

use std::time::SystemTime;

use keycard_workload_api::proto::{Jwtsvid, JwtsvidRequest, JwtsvidResponse};
use keycard_workload_api::{JwtBundleSet, JwtSvidError, Unbound, check_binding, validate_jwt_svid};
use tonic::Status;

use super::no_identity;
use crate::agent::attest::Attested;
use crate::agent::cache::{EntryView, SvidCache};
use crate::agent::jwt::{Binding, JwtMinter};

/// Answers a FetchJWTSVID request of an attested caller; the flag says whether it waited
/// on the server (then the caller must be checked again before the answer goes out).
pub(super) async fn fetch(
    cache: &SvidCache,
    minter: Option<&JwtMinter>,
    attested: &Attested,
    req: JwtsvidRequest,
) -> Result<(JwtsvidResponse, bool), Status> {
    // Bounded before anything else: the list goes into the token, the cache key and logs.
    if let Some(problem) = crate::wire::audience_problem(&req.audience) {
        return Err(Status::invalid_argument(problem));
    }
    let mut entries: Vec<EntryView> = cache.entry_views_for(&attested.selectors);
    if entries.is_empty() {
        return Err(no_identity(attested));
    }
    if !req.spiffe_id.is_empty() {
        entries.retain(|e| e.spiffe_id.as_str() == req.spiffe_id);
        if entries.is_empty() {
            return Err(Status::permission_denied(format!(
                "no identity {} issued to this caller",
                req.spiffe_id
            )));
        }
    }
    let minter =
        minter.ok_or_else(|| Status::unavailable("this agent has no server to mint JWT-SVIDs"))?;
    let Some(bundle) = cache.bundle() else {
        return Err(Status::unavailable("the agent has no trust bundle yet"));
    };
    let audiences: Vec<&str> = req.audience.iter().map(String::as_str).collect();
    let mut svids = Vec::with_capacity(entries.len());
    let mut waited = false;
    for e in entries {
        let binding = if e.jwt_bound {
            let Some(x509) = cache.svid(&e.entry_id) else {
                return Err(Status::unavailable(format!(
                    "the JWT-SVIDs of {} are bound to its X.509-SVID, which this agent has not \
                     obtained yet; retry in a few seconds",
                    e.spiffe_id
                )));
            };
            Some(Binding {
                serial: x509.serial.to_string(),
                chain: x509.chain.iter().map(|c| c.to_vec()).collect(),
            })
        } else {
            None
        };
        let serial = binding.as_ref().map(|b| b.serial.as_str());
        let token = match minter.cached(&e.entry_id, &req.audience, serial) {
            Some(token) => token,
            None => {
                waited = true;
                minter.token(&e.entry_id, &req.audience, binding.as_ref()).await.map_err(|err| {
                    tracing::warn!(entry_id = %e.entry_id, error = %err, "no JWT-SVID from the server");
                    Status::unavailable(format!("could not get a JWT-SVID: {err}"))
                })?
            }
        };
        // Never hand out a token that does not validate against the bundle (checked once
        // per token and bundle: the same token against the same bundle validates alike
        // while it is cached, as it is handed out only in the first half of its life).
        if !minter.is_checked(&e.entry_id, &req.audience, serial, &token, &bundle) {
            let mut bundles = JwtBundleSet::new();
            bundles.insert(bundle.jwt.clone());
            match validate_jwt_svid(&token, &bundles, &audiences, SystemTime::now()) {
                Ok(svid) if svid.spiffe_id != e.spiffe_id => {
                    minter.forget(&e.entry_id, &req.audience, serial);
                    tracing::error!(entry_id = %e.entry_id, got = %svid.spiffe_id, "server minted a JWT-SVID for the wrong ID");
                    return Err(Status::unavailable("the server sent an unusable JWT-SVID"));
                }
                Ok(svid) => {
                    // A bound token must name exactly the certificate it was asked for.
                    let leaf = binding.as_ref().and_then(|b| b.chain.first());
                    if let Some(Err(err)) =
                        leaf.map(|leaf| check_binding(&svid, Some(leaf), Unbound::Refuse))
                    {
                        minter.forget(&e.entry_id, &req.audience, serial);
                        tracing::error!(entry_id = %e.entry_id, error = %err, "server minted a wrongly bound JWT-SVID");
                        return Err(Status::unavailable("the server sent an unusable JWT-SVID"));
                    }
                    minter.mark_checked(&e.entry_id, &req.audience, serial, &token, &bundle);
                }
                Err(JwtSvidError::UnknownKid { kid, .. }) => {
                    // Not a bad token: the server signs with an authority activated before
                    // this agent's last sync brought it (an operator's prepare and
                    // activate in quick succession). The next sync does; the caller
                    // retries.
                    minter.forget(&e.entry_id, &req.audience, serial);
                    tracing::warn!(entry_id = %e.entry_id, %kid, "the server signed a JWT-SVID with an authority this agent's bundle does not hold yet; it comes with the next sync");
                    return Err(Status::unavailable(format!(
                        "the JWT-SVID is signed by authority {kid}, which this agent has not \
                         synced yet; retry in a few seconds"
                    )));
                }
                Err(err) => {
                    minter.forget(&e.entry_id, &req.audience, serial);
                    tracing::error!(entry_id = %e.entry_id, error = %err, "server minted an invalid JWT-SVID");
                    return Err(Status::unavailable("the server sent an unusable JWT-SVID"));
                }
            }
        }
        svids.push(Jwtsvid {
            spiffe_id: e.spiffe_id.to_string(),
            svid: token,
            hint: e.hint.to_string(),
        });
    }
    Ok((JwtsvidResponse { svids }, waited))
}
