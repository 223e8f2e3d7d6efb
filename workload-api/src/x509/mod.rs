//! X.509 SVIDs and bundles, validated by the rules of the SPIFFE X509-SVID standard.
//!
//! - [`X509Bundle`] / [`X509BundleSet`]: the CA certificates each trust domain's SVIDs
//!   chain to.
//! - [`X509Svid`]: a certificate chain with its SPIFFE ID and private key.
//! - [`verify_chain`]: every certificate rule plus RFC 5280 path validation (rustls-webpki)
//!   to the bundle of the leaf's own trust domain; peer verifiers build on it.
//! - [`X509SvidError`]: one variant per rule a chain or key can break.
//!
//! Trust-domain name constraints are not used: rustls-webpki rejects chains with URI name
//! constraints. Instead a chain is only checked against its own trust domain's bundle.

mod bundle;
mod error;
mod rules;
mod svid;
#[cfg(test)]
pub(crate) mod test_support;
mod verify;

use rustls_pki_types::CertificateDer;

pub(crate) use bundle::check_authority;
pub use bundle::{X509Bundle, X509BundleSet};
pub use error::{X509BundleError, X509SvidError};
pub use rules::{spiffe_id_and_serial_of, spiffe_id_of};
pub use svid::X509Svid;
pub use verify::verify_chain;

/// What is wrong with a PEM text of certificates.
enum PemProblem {
    /// Not PEM at all, or no block in it.
    Decode(String),
    /// A block with a label other than `CERTIFICATE`.
    Label { index: usize, label: String },
}

/// Decodes PEM text of `CERTIFICATE` blocks; text without any block is an error, so that a
/// wrong file never reads as an empty list.
fn pem_certificates(text: &str) -> Result<Vec<CertificateDer<'static>>, PemProblem> {
    let blocks = pem::parse_many(text).map_err(|e| PemProblem::Decode(e.to_string()))?;
    if blocks.is_empty() {
        return Err(PemProblem::Decode("no PEM block found".to_owned()));
    }
    blocks
        .into_iter()
        .enumerate()
        .map(|(index, block)| {
            if block.tag() == "CERTIFICATE" {
                Ok(CertificateDer::from(block.into_contents()))
            } else {
                Err(PemProblem::Label { index, label: block.tag().to_owned() })
            }
        })
        .collect()
}
