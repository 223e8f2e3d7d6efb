//! The workload cache file's layout, and the per-SVID decoding and name check.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

use super::secs;
use crate::agent::cache::{CachedSvid, NewSvid};
use crate::ca::SigningKey;

/// The file: the body as JSON text, and its HMAC-SHA256 (hex) under the agent's cache key.
#[derive(Serialize, Deserialize)]
pub(super) struct Envelope {
    pub(super) version: u32,
    /// Empty in a file of another version (which is ignored before the tag is checked).
    #[serde(default)]
    pub(super) body: String,
    #[serde(default)]
    pub(super) mac: String,
}

/// What the tag covers. Exactly these fields: this agent wrote them under this version, so a
/// field it does not know means the file is not what it wrote (a format change bumps
/// [`super::VERSION`] instead), and the whole body is refused rather than read in part.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Body {
    pub(super) revision: u64,
    /// When it was written (seconds since the epoch), logged on load.
    pub(super) saved_at: u64,
    pub(super) entries: Vec<String>,
    pub(super) bundle: Option<String>,
    pub(super) tainted_authority_ids: Vec<String>,
    pub(super) svids: Vec<StoredSvid>,
    /// Since version 3: the federated bundles, trust domain name => SPIFFE bundle JSON.
    /// Left out when there are none, so that such a body reads as version 2 did.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) federated_bundles: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoredSvid {
    pub(super) entry_id: String,
    chain: Vec<String>,
    key: String,
    serial: String,
    issued_at: u64,
    renew_at: u64,
}

impl StoredSvid {
    pub(super) fn of(s: &CachedSvid) -> Self {
        Self {
            entry_id: s.entry_id.to_string(),
            chain: s.chain.iter().map(|c| B64.encode(c)).collect(),
            key: B64.encode(s.key.pkcs8_der().secret_pkcs8_der()),
            serial: s.serial.to_string(),
            issued_at: secs(s.issued_at),
            renew_at: secs(s.renew_at),
        }
    }
}

fn time(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// The SVID as the cache takes it; `None` when a part does not decode.
pub(super) fn decode_svid(s: &StoredSvid) -> Option<NewSvid> {
    let chain = s
        .chain
        .iter()
        .map(|c| B64.decode(c).ok().map(CertificateDer::from))
        .collect::<Option<Vec<_>>>()?;
    let key = SigningKey::from_pkcs8_der(&B64.decode(&s.key).ok()?).ok()?;
    Some(NewSvid {
        entry_id: s.entry_id.as_str().into(),
        chain,
        key: Arc::new(key),
        serial: s.serial.clone(),
        issued_at: time(s.issued_at),
        renew_at: time(s.renew_at),
    })
}

/// Whether the leaf's DNS names are exactly the entry's (as sets, ignoring case).
pub(super) fn dns_names_match(leaf: &[u8], entry_dns_names: &[String]) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(leaf) else { return false };
    let in_cert: BTreeSet<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => BTreeSet::new(),
        Err(_) => return false,
    };
    let wanted: BTreeSet<String> = entry_dns_names.iter().map(|d| d.to_ascii_lowercase()).collect();
    in_cert == wanted
}
