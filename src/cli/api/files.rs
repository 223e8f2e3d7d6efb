//! What `keycard api fetch x509 --write DIR` writes, and how the fetched bundles split into
//! the caller's own trust domains and the federated ones.
//!
//! Each SVID gets the files `keycard helper` writes (svid.pem, svid_key.pem 0600,
//! svid_bundle.pem: its own bundle, then the federated ones), the default SVID unnumbered
//! and any further one numbered from 1. The federated bundles are written once more each on
//! its own, named as SPIRE's `api fetch x509 -write` names them:
//! `federated_bundle.<i>.<j>.pem`, `i` the SVID's position (from 0) and `j` the bundle's
//! position among the federated trust domains in name order.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use keycard_workload_api::{TrustDomain, X509Bundle, X509Context};

use super::CliError;

/// The trust domains of the caller's own SVIDs.
fn own_domains(context: &X509Context) -> BTreeSet<TrustDomain> {
    context.svids.iter().map(|s| s.spiffe_id().trust_domain()).collect()
}

/// The bundles of the caller's own trust domains, in name order.
pub(super) fn own_bundles(context: &X509Context) -> Vec<&X509Bundle> {
    let own = own_domains(context);
    let mut out: Vec<&X509Bundle> =
        context.bundles.iter().filter(|b| own.contains(b.trust_domain())).collect();
    out.sort_by(|a, b| a.trust_domain().cmp(b.trust_domain()));
    out
}

/// The federated bundles (of trust domains none of the caller's SVIDs is in), in name order.
pub(super) fn federated_bundles(context: &X509Context) -> Vec<&X509Bundle> {
    let own = own_domains(context);
    let mut out: Vec<&X509Bundle> =
        context.bundles.iter().filter(|b| !own.contains(b.trust_domain())).collect();
    out.sort_by(|a, b| a.trust_domain().cmp(b.trust_domain()));
    out
}

/// The name SPIRE gives federated bundle `j` of SVID `i`.
pub(super) fn federated_file(i: usize, j: usize) -> String {
    format!("federated_bundle.{i}.{j}.pem")
}

/// Writes every file (see the module documentation), each atomically; returns the paths
/// of the federated bundle files.
pub(super) fn write_files(dir: &Path, context: &X509Context) -> Result<Vec<PathBuf>, CliError> {
    let failed = |e: String| CliError::Output(std::io::Error::other(e));
    std::fs::create_dir_all(dir)?;
    let federated = federated_bundles(context);
    let mut written = Vec::new();
    for (i, svid) in context.svids.iter().enumerate() {
        let index = (i > 0).then_some(i);
        crate::helper::write_svid_files(dir, svid, &context.bundles, index)
            .map_err(|e| failed(e.to_string()))?;
        for (j, bundle) in federated.iter().enumerate() {
            let path = dir.join(federated_file(i, j));
            crate::fsutil::write_atomic(&path, bundle.to_pem().as_bytes(), 0o644)
                .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))?;
            written.push(path);
        }
    }
    Ok(written)
}
