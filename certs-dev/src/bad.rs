//! Broken X509-SVIDs: each breaks exactly one rule of the SPIFFE X509-SVID standard (or of
//! path validation) and names the `X509SvidError` variant a validator must return for it.
//! Unless its rule says otherwise, a vector is a leaf issued by `example.org`'s real
//! intermediate, and its chain file holds the leaf then that intermediate.

use anyhow::{Result, bail};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose};

use crate::good::{Domain, workload_id};
use crate::output::Output;
use crate::pki::{self, Authority, Leaf};

/// One row of the bad-vector table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadSpec {
    /// File stem under `bad/`.
    pub name: &'static str,
    /// The rule the vector breaks, in words.
    pub rule: &'static str,
    /// The `X509SvidError` variant a validator must return; for a `strict_der_only` vector,
    /// the `StrictDerError` variant of [`crate::strict_der::check`].
    pub expected_error: &'static str,
    /// Broken only in its encoding: lenient parsers (keycard's validator, x509-parser,
    /// openssl) accept it, strict DER decoders (Python's `cryptography`, `x509-cert`) do not.
    pub strict_der_only: bool,
}

const fn spec(name: &'static str, rule: &'static str, expected_error: &'static str) -> BadSpec {
    BadSpec { name, rule, expected_error, strict_der_only: false }
}

/// Every bad vector, in the order `bad/README.md` lists them.
pub const BAD_VECTORS: &[BadSpec] = &[
    spec("leaf-ca-true", "leaf has BasicConstraints cA=true", "LeafIsCa"),
    spec("leaf-keycertsign", "leaf key usage has keyCertSign", "LeafKeyCertSign"),
    spec("leaf-crlsign", "leaf key usage has cRLSign", "LeafCrlSign"),
    spec(
        "leaf-no-digital-signature",
        "leaf key usage lacks digitalSignature (keyAgreement only)",
        "LeafNoDigitalSignature",
    ),
    spec("leaf-no-key-usage", "leaf has no key usage extension", "KeyUsageMissing"),
    spec(
        "leaf-key-usage-not-critical",
        "leaf key usage extension is not critical",
        "KeyUsageNotCritical",
    ),
    spec(
        "leaf-no-basic-constraints",
        "leaf has no BasicConstraints extension",
        "MissingBasicConstraints",
    ),
    BadSpec {
        name: "leaf-ca-false-explicit",
        rule: "leaf BasicConstraints spells out cA FALSE (`30 03 01 01 00`), a DEFAULT value DER \
               forbids; only strict DER decoders reject it",
        expected_error: "ExtensionNotCanonical",
        strict_der_only: true,
    },
    spec("eku-no-client-auth", "leaf EKU has serverAuth only", "EkuMissingClientAuth"),
    spec("eku-no-server-auth", "leaf EKU has clientAuth only", "EkuMissingServerAuth"),
    spec("no-uri-san", "leaf has a DNS SAN and no URI SAN", "NoUriSan"),
    spec("two-uri-sans", "leaf has two URI SANs", "MultipleUriSans"),
    spec("https-scheme", "leaf URI SAN is https://example.org/workload/web", "InvalidSpiffeId"),
    spec(
        "uppercase-trust-domain",
        "leaf URI SAN is spiffe://Example.org/x (upper case)",
        "InvalidSpiffeId",
    ),
    spec("root-path", "leaf SPIFFE ID has no path (spiffe://example.org)", "RootPathId"),
    spec(
        "wrong-trust-domain",
        "leaf spiffe://example.com/workload/web issued by example.org's intermediate",
        "SignedByOtherTrustDomain",
    ),
    spec("expired", "leaf notAfter is 2025-01-02", "Expired"),
    spec("not-yet-valid", "leaf notBefore is 2044-01-01", "NotYetValid"),
    spec("untrusted-root", "chain ends at a third root that is in no bundle", "UntrustedChain"),
    spec("bad-signature", "leaf signature bytes are flipped", "BadSignature"),
    spec("intermediate-not-ca", "intermediate has BasicConstraints cA=false", "SigningCertNotCa"),
    spec(
        "intermediate-no-keycertsign",
        "intermediate key usage lacks keyCertSign",
        "SigningCertNoKeyCertSign",
    ),
    spec(
        "intermediate-id-has-path",
        "intermediate SPIFFE ID has a path (spiffe://example.org/intermediate)",
        "SigningCertIdHasPath",
    ),
    spec("key-mismatch", "valid chain, but the key file holds another leaf's key", "KeyMismatch"),
    spec("corrupted-der", "leaf DER truncated to half inside valid PEM armour", "Der"),
    spec("empty-chain", "chain file holds no certificate", "EmptyChain"),
];

/// The SPIFFE ID of most bad leaves (the good workload's).
fn org_id() -> String {
    workload_id("example.org")
}

/// Builds every vector under `org` (example.org's CAs) and queues its two files.
pub fn vectors(org: &Domain, out: &mut Output) -> Result<()> {
    for spec in BAD_VECTORS {
        let (chain, key) = build(spec.name, org)?;
        out.add(format!("bad/{}.pem", spec.name), chain);
        out.add(format!("bad/{}.key.pem", spec.name), key);
    }
    Ok(())
}

/// A leaf with the good template for `uri` after `change`, issued by `issuer`, its key
/// derived from `label`.
fn leaf_with(
    uri: &str,
    issuer: &Authority,
    label: &str,
    change: impl FnOnce(&mut CertificateParams),
) -> Result<Leaf> {
    let mut params = pki::leaf_params("bad vector leaf", uri)?;
    change(&mut params);
    pki::leaf(&params, issuer, label)
}

/// A chain file (leaf, then `issuer`) and a key file.
fn files(leaf: &Leaf, issuer: &Authority) -> (String, String) {
    (pki::chain_pem(&[leaf.cert.der(), issuer.cert.der()]), leaf.key_pem.clone())
}

/// An intermediate under example.org's root, changed by `change`, with a good leaf under it;
/// keys derived from `label`.
fn with_intermediate(
    org: &Domain,
    cn: &str,
    label: &str,
    change: impl FnOnce(&mut CertificateParams),
) -> Result<(String, String)> {
    let mut params = pki::ca_params(cn, "spiffe://example.org", Some(0), true)?;
    change(&mut params);
    let intermediate = pki::sub_ca(params, &org.root, &format!("{label} (intermediate)"))?;
    let leaf = leaf_with(&org_id(), &intermediate, label, |_| {})?;
    Ok(files(&leaf, &intermediate))
}

/// Builds one vector: (chain PEM, key PEM). Every key is derived from the vector's key file
/// name (and a suffix for a second key), so a vector's files only change with its recipe.
fn build(name: &str, org: &Domain) -> Result<(String, String)> {
    let ca = &org.intermediate;
    let id = org_id();
    let label = format!("bad/{name}.key.pem");
    let label = label.as_str();
    let simple = |change: &dyn Fn(&mut CertificateParams)| -> Result<(String, String)> {
        Ok(files(&leaf_with(&id, ca, label, change)?, ca))
    };
    let ku = |usages: Vec<KeyUsagePurpose>| {
        move |p: &mut CertificateParams| p.key_usages = usages.clone()
    };
    let uri = |u: &str| -> Result<_> {
        let san = pki::uri_san(u)?;
        Ok(move |p: &mut CertificateParams| p.subject_alt_names = vec![san.clone()])
    };
    Ok(match name {
        "leaf-ca-true" => simple(&|p| {
            pki::remove_basic_constraints(p);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        })?,
        "leaf-ca-false-explicit" => simple(&|p| {
            pki::remove_basic_constraints(p);
            p.custom_extensions.push(pki::basic_constraints_extension(&pki::NOT_CA_EXPLICIT_FALSE));
        })?,
        "leaf-keycertsign" => {
            simple(&ku(vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign]))?
        }
        "leaf-crlsign" => {
            simple(&ku(vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign]))?
        }
        "leaf-no-digital-signature" => simple(&ku(vec![KeyUsagePurpose::KeyAgreement]))?,
        "leaf-no-key-usage" => simple(&ku(Vec::new()))?,
        "leaf-key-usage-not-critical" => simple(&|p| {
            p.key_usages.clear();
            p.custom_extensions.push(pki::key_usage_extension(0x80, false));
        })?,
        // The SKI stays (pki::leaf writes it): the missing BasicConstraints is the only
        // difference from a good leaf.
        "leaf-no-basic-constraints" => simple(&|p| pki::remove_basic_constraints(p))?,
        "eku-no-client-auth" => {
            simple(&|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth])?
        }
        "eku-no-server-auth" => {
            simple(&|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth])?
        }
        "no-uri-san" => {
            let dns = pki::dns_san("web.example.org")?;
            simple(&move |p| p.subject_alt_names = vec![dns.clone()])?
        }
        "two-uri-sans" => {
            let second = pki::uri_san("spiffe://example.org/workload/other")?;
            simple(&move |p| p.subject_alt_names.push(second.clone()))?
        }
        "https-scheme" => simple(&uri("https://example.org/workload/web")?)?,
        "uppercase-trust-domain" => simple(&uri("spiffe://Example.org/x")?)?,
        "root-path" => simple(&uri("spiffe://example.org")?)?,
        "wrong-trust-domain" => simple(&uri("spiffe://example.com/workload/web")?)?,
        "expired" => simple(&|p| {
            p.not_before = pki::valid_from();
            p.not_after = rcgen::date_time_ymd(2025, 1, 2);
        })?,
        "not-yet-valid" => simple(&|p| {
            p.not_before = rcgen::date_time_ymd(2044, 1, 1);
            p.not_after = pki::valid_until();
        })?,
        "untrusted-root" => {
            // A complete, well-formed example.org hierarchy whose root is in no bundle. Its
            // names differ from the real CAs' so that no verifier mistakes one for the other.
            let uri = "spiffe://example.org";
            let rogue_root = pki::root(
                pki::ca_params("untrusted root CA (in no bundle)", uri, None, false)?,
                &format!("{label} (root)"),
            )?;
            let rogue = pki::sub_ca(
                pki::ca_params("untrusted intermediate CA", uri, Some(0), true)?,
                &rogue_root,
                &format!("{label} (intermediate)"),
            )?;
            files(&leaf_with(&id, &rogue, label, |_| {})?, &rogue)
        }
        "bad-signature" => {
            let leaf = leaf_with(&id, ca, label, |_| {})?;
            let flipped = pki::flip_signature(leaf.cert.der())?;
            (pki::chain_pem(&[&flipped, ca.cert.der()]), leaf.key_pem)
        }
        "intermediate-not-ca" => {
            with_intermediate(org, "example.org intermediate (cA=false)", label, pki::set_not_ca)?
        }
        "intermediate-no-keycertsign" => {
            with_intermediate(org, "example.org intermediate (no keyCertSign)", label, |p| {
                p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
            })?
        }
        "intermediate-id-has-path" => {
            let with_path = uri("spiffe://example.org/intermediate")?;
            with_intermediate(org, "example.org intermediate (ID with path)", label, with_path)?
        }
        "key-mismatch" => {
            let leaf = leaf_with(&id, ca, label, |_| {})?;
            let other = leaf_with(&id, ca, &format!("{label} (other)"), |_| {})?;
            (files(&leaf, ca).0, other.key_pem)
        }
        "corrupted-der" => {
            let leaf = leaf_with(&id, ca, label, |_| {})?;
            let der = leaf.cert.der();
            let truncated = &der[..der.len() / 2];
            (pki::chain_pem(&[truncated, ca.cert.der()]), leaf.key_pem)
        }
        "empty-chain" => {
            let leaf = leaf_with(&id, ca, label, |_| {})?;
            let text = "This file deliberately holds no certificate: a chain with nothing in it.\n";
            (text.to_owned(), leaf.key_pem)
        }
        other => bail!("no builder for bad vector {other:?}"),
    })
}

/// `bad/README.md`: the table of vectors, the rule each breaks and the expected error.
pub fn readme() -> String {
    let mut text = String::from(
        "# Bad X509-SVID vectors (development material only, never for production)\n\n\
         Generated by `cargo run -p keycard-certs-dev -- certs-dev`; do not edit by hand.\n\
         Each vector breaks exactly one rule. `<name>.pem` holds the chain (leaf first, then the\n\
         intermediate; issued under `example.org` unless the rule says otherwise) and\n\
         `<name>.key.pem` the leaf's PKCS#8 key. Validate against `example.org/bundle.pem` and\n\
         `example.com/bundle.pem`. A vector marked *strict DER* is broken only in its encoding:\n\
         keycard's validator, x509-parser and openssl accept it; strict DER decoders (Python's\n\
         `cryptography`, so py-spiffe, and `x509-cert`) reject it, and its last column names the\n\
         `StrictDerError` of `keycard_certs_dev::strict_der::check`.\n\n\
         | file | rule broken | expected `X509SvidError` |\n\
         | --- | --- | --- |\n",
    );
    for spec in BAD_VECTORS {
        let marker = if spec.strict_der_only { " (strict DER)" } else { "" };
        text.push_str(&format!(
            "| `{}.pem` | {} | `{}`{marker} |\n",
            spec.name, spec.rule, spec.expected_error
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vector_has_a_unique_name_and_a_builder() {
        let org = crate::good::domain("example.org").unwrap();
        let mut names: Vec<&str> = BAD_VECTORS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), BAD_VECTORS.len());
        for spec in BAD_VECTORS {
            assert!(build(spec.name, &org).is_ok(), "{}", spec.name);
        }
        assert!(build("no-such-vector", &org).is_err());
    }

    #[test]
    fn only_the_two_id_syntax_vectors_share_a_variant() {
        for (i, a) in BAD_VECTORS.iter().enumerate() {
            for b in &BAD_VECTORS[i + 1..] {
                if a.expected_error == b.expected_error {
                    assert_eq!(a.expected_error, "InvalidSpiffeId", "{} and {}", a.name, b.name);
                }
            }
        }
    }
}
