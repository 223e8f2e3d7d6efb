//! Federation relationships declared in the server config (`[[federates_with]]` tables),
//! checked at start-up like the admin API's and written to the datastore before the
//! server serves: a declared relationship is created, or updated when the config says
//! something else than the store; relationships made with `keycard federation` and not
//! declared are left alone.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use keycard_workload_api::TrustDomain;
use serde::Deserialize;

use super::relationship::{Relationship, RelationshipInput};
use crate::config::ConfigError;
use crate::server::datastore::{DataStore, DataStoreError, FederationRecord};

/// One `[[federates_with]]` table as the file has it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFederatesWith {
    trust_domain: Option<String>,
    bundle_endpoint_url: Option<String>,
    bundle_endpoint_profile: Option<String>,
    endpoint_spiffe_id: Option<String>,
    trust_domain_bundle: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

/// A declared relationship, checked (its files read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredFederation(pub Relationship);

fn read(config: &'static str, key: String, path: &Option<PathBuf>) -> Result<Vec<u8>, ConfigError> {
    let Some(path) = path else { return Ok(Vec::new()) };
    std::fs::read(path).map_err(|e| ConfigError::InvalidValue {
        config,
        key,
        reason: format!("cannot read {}: {e}", Path::new(path).display()),
    })
}

impl DeclaredFederation {
    /// Checks the `index`th table for a server of trust domain `own`.
    pub fn from_file(
        config: &'static str,
        own: &TrustDomain,
        index: usize,
        file: &FileFederatesWith,
    ) -> Result<Self, ConfigError> {
        let key = |k: &str| format!("federates_with[{index}].{k}");
        let bundle = read(config, key("trust_domain_bundle"), &file.trust_domain_bundle)?;
        let ca_pem = read(config, key("ca_file"), &file.ca_file)?;
        let input = RelationshipInput {
            trust_domain: file.trust_domain.as_deref().unwrap_or_default(),
            url: file.bundle_endpoint_url.as_deref().unwrap_or_default(),
            profile: file.bundle_endpoint_profile.as_deref().unwrap_or("https_spiffe"),
            endpoint_id: file.endpoint_spiffe_id.as_deref().unwrap_or_default(),
            bundle: &bundle,
            ca_pem: &ca_pem,
        };
        Relationship::check(own, &input).map(Self).map_err(|e| ConfigError::InvalidValue {
            config,
            key: format!("federates_with[{index}]"),
            reason: e.to_string(),
        })
    }
}

/// Why declared relationships could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    /// A new https_spiffe relationship without a bundle held or given.
    #[error("federates_with {trust_domain}: {why}")]
    NeedsBundle {
        /// The foreign trust domain.
        trust_domain: TrustDomain,
        /// What to give.
        why: String,
    },
    /// The datastore failed.
    #[error(transparent)]
    DataStore(#[from] DataStoreError),
}

/// Writes `declared` to the store (blocking): creates what is missing, updates what
/// differs; a bootstrap bundle is stored only when none is held.
pub fn apply(
    store: &dyn DataStore,
    declared: &[DeclaredFederation],
    now: SystemTime,
) -> Result<(), DeclareError> {
    for DeclaredFederation(rel) in declared {
        let held = store.get_bundle(&rel.trust_domain)?.is_some();
        let bootstrap = match held {
            true => None,
            false => rel.bootstrap_json().map_err(|e| DeclareError::NeedsBundle {
                trust_domain: rel.trust_domain.clone(),
                why: e.to_string(),
            })?,
        };
        if !held && let Some(refused) = rel.needs_bootstrap() {
            return Err(DeclareError::NeedsBundle {
                trust_domain: rel.trust_domain.clone(),
                why: refused.to_string(),
            });
        }
        let record = FederationRecord::new(
            rel.trust_domain.clone(),
            rel.url.clone(),
            rel.profile.clone(),
            now,
        );
        match store.get_federation(&rel.trust_domain)? {
            None => {
                store.create_federation(&record, bootstrap.as_deref())?;
                tracing::info!(trust_domain = %rel.trust_domain, "federation relationship created from the config");
            }
            Some(stored) if stored.endpoint_url != rel.url || stored.profile != rel.profile => {
                store.update_federation(&record, bootstrap.as_deref())?;
                tracing::info!(trust_domain = %rel.trust_domain, "federation relationship updated from the config");
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::datastore::{EndpointProfile, SqliteDataStore};

    fn own() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn bundle_file(dir: &Path) -> PathBuf {
        let ca = crate::ca::manager::test_ca(TrustDomain::new("example.com").unwrap());
        let path = dir.join("com.json");
        std::fs::write(&path, ca.bundle().unwrap().to_json().unwrap()).unwrap();
        path
    }

    fn table(bundle: Option<PathBuf>, id: &str) -> FileFederatesWith {
        FileFederatesWith {
            trust_domain: Some("example.com".into()),
            bundle_endpoint_url: Some("https://127.0.0.1:8443/".into()),
            endpoint_spiffe_id: Some(id.into()),
            trust_domain_bundle: bundle,
            ..Default::default()
        }
    }

    #[test]
    fn declared_relationships_are_created_then_updated_and_keep_the_held_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteDataStore::open(&dir.path().join("db")).unwrap();
        let bundle = bundle_file(dir.path());
        let first = table(Some(bundle.clone()), "spiffe://example.com/keycard/server");
        let declared = DeclaredFederation::from_file("server", &own(), 0, &first).unwrap();
        apply(&store, std::slice::from_ref(&declared), SystemTime::now()).unwrap();
        let com = TrustDomain::new("example.com").unwrap();
        let stored = store.get_federation(&com).unwrap().unwrap();
        assert_eq!(stored.endpoint_url, "https://127.0.0.1:8443/");
        let held = store.get_bundle(&com).unwrap().unwrap();

        // Applied again unchanged: nothing is written (updated_at stays).
        apply(&store, &[declared], SystemTime::now()).unwrap();
        assert_eq!(store.get_federation(&com).unwrap().unwrap(), stored);

        // A changed endpoint ID updates the relationship; the held bundle stays.
        let other = DeclaredFederation::from_file(
            "server",
            &own(),
            0,
            &table(None, "spiffe://example.com/other"),
        )
        .unwrap();
        apply(&store, &[other], SystemTime::now()).unwrap();
        let updated = store.get_federation(&com).unwrap().unwrap();
        let want = keycard_workload_api::SpiffeId::parse("spiffe://example.com/other").unwrap();
        assert_eq!(updated.profile, EndpointProfile::HttpsSpiffe { endpoint_id: want });
        assert_eq!(store.get_bundle(&com).unwrap().unwrap(), held);
    }

    #[test]
    fn bad_tables_name_the_table_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (FileFederatesWith::default(), "trust_domain is required"),
            (
                FileFederatesWith { trust_domain: Some("example.org".into()), ..table(None, "x") },
                "own trust domain",
            ),
            (
                FileFederatesWith {
                    bundle_endpoint_url: Some("http://x/".into()),
                    ..table(None, "x")
                },
                "does not use https",
            ),
            (
                FileFederatesWith {
                    trust_domain_bundle: Some(dir.path().join("missing.json")),
                    ..table(None, "spiffe://example.com/s")
                },
                "cannot read",
            ),
        ];
        for (file, want) in cases {
            let err = DeclaredFederation::from_file("server", &own(), 2, &file).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("federates_with[2]") && text.contains(want), "{text}");
        }
        // A new https_spiffe relationship without a bundle is refused at start-up.
        let store = SqliteDataStore::open(&dir.path().join("db")).unwrap();
        let declared = DeclaredFederation::from_file(
            "server",
            &own(),
            0,
            &table(None, "spiffe://example.com/s"),
        )
        .unwrap();
        let err = apply(&store, &[declared], SystemTime::now()).unwrap_err();
        assert!(err.to_string().contains("trust_domain_bundle"), "{err}");
    }
}
