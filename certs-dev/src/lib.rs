//! Development-only PKI for keycard (see certs-dev/README.md). Every private key this crate
//! writes is published in the repository: never trust this material outside tests and demos.
//!
//! # Layout
//! - [`generate`] writes the whole set into a directory and returns its [`Manifest`];
//!   [`Manifest::describe`] returns the same description without writing anything, so tests
//!   can walk the checked-in files.
//! - `keys`: P-256 keys derived from a fixed seed and deterministic (RFC 6979) signatures,
//!   so that generating again writes the same bytes.
//! - `pki`: SPIFFE-conformant certificate templates, hand-written DER.
//! - [`strict_der`]: a strict DER check of certificates, for tests across the workspace.
//! - `good`: the two trust domains (`example.org`, `example.com`) and the x509pop node CA.
//! - `bad`: one broken X509-SVID per SPIFFE rule, each with the validator error it must cause.
//! - `output`: collects files in memory and writes them only once all were built.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bad;
mod good;
mod keys;
mod output;
mod pki;
pub mod strict_der;

#[cfg(test)]
mod openssl_tests;
#[cfg(test)]
mod reproducible_tests;
#[cfg(test)]
mod validator_tests;

use std::path::{Path, PathBuf};

pub use bad::BAD_VECTORS;
pub use good::{NODE_NAMES, TRUST_DOMAINS};

/// Everything [`generate`] writes, described by paths relative to the output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// One entry per trust domain: `example.org` (the local one) then `example.com`.
    pub trust_domains: Vec<TrustDomainFiles>,
    /// The node CA and node certificates for x509pop attestation.
    pub nodes: NodeFiles,
    /// The broken X509-SVIDs, one per rule.
    pub bad: Vec<BadVector>,
    /// `bad/README.md`: the table of bad vectors.
    pub bad_readme: PathBuf,
}

/// The files of one good trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomainFiles {
    /// Trust domain name, such as `example.org`.
    pub trust_domain: String,
    /// SPIFFE ID of the good workload SVID.
    pub spiffe_id: String,
    /// Self-signed root CA certificate.
    pub root: PathBuf,
    /// Root CA private key (PKCS#8).
    pub root_key: PathBuf,
    /// Intermediate CA certificate, signed by the root.
    pub intermediate: PathBuf,
    /// Intermediate CA private key (PKCS#8).
    pub intermediate_key: PathBuf,
    /// The X.509 bundle: the root certificate alone.
    pub bundle: PathBuf,
    /// The workload SVID chain: leaf, then intermediate.
    pub svid: PathBuf,
    /// The workload SVID private key (PKCS#8).
    pub svid_key: PathBuf,
}

/// The x509pop node material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFiles {
    /// Node CA certificate (self-signed).
    pub ca: PathBuf,
    /// Node CA private key.
    pub ca_key: PathBuf,
    /// One entry per node.
    pub nodes: Vec<NodeCert>,
}

/// One node certificate for x509pop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCert {
    /// Node name, also its certificate's CN and DNS SAN.
    pub name: String,
    /// Node certificate.
    pub cert: PathBuf,
    /// Node private key.
    pub key: PathBuf,
}

/// One broken X509-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadVector {
    /// File stem, such as `leaf-ca-true`.
    pub name: String,
    /// The one rule this vector breaks.
    pub rule: String,
    /// Name of the `X509SvidError` variant a validator must return for it (for a
    /// `strict_der_only` vector, the [`strict_der::StrictDerError`] variant).
    pub expected_error: String,
    /// Broken only in its DER encoding: keycard's validator accepts it, strict DER decoders
    /// reject it.
    pub strict_der_only: bool,
    /// Chain file: leaf first, then the intermediate (example.org's unless the rule says).
    pub chain: PathBuf,
    /// Private key file for the leaf.
    pub key: PathBuf,
}

impl Manifest {
    /// The layout [`generate`] produces, without generating anything.
    pub fn describe() -> Manifest {
        let trust_domains = TRUST_DOMAINS
            .iter()
            .map(|td| TrustDomainFiles {
                trust_domain: (*td).to_owned(),
                spiffe_id: good::workload_id(td),
                root: Path::new(td).join("root.pem"),
                root_key: Path::new(td).join("root.key.pem"),
                intermediate: Path::new(td).join("intermediate.pem"),
                intermediate_key: Path::new(td).join("intermediate.key.pem"),
                bundle: Path::new(td).join("bundle.pem"),
                svid: Path::new(td).join("svid.pem"),
                svid_key: Path::new(td).join("svid.key.pem"),
            })
            .collect();
        let nodes = NodeFiles {
            ca: PathBuf::from("nodes/ca.pem"),
            ca_key: PathBuf::from("nodes/ca.key.pem"),
            nodes: NODE_NAMES
                .iter()
                .map(|name| NodeCert {
                    name: (*name).to_owned(),
                    cert: PathBuf::from(format!("nodes/{name}.pem")),
                    key: PathBuf::from(format!("nodes/{name}.key.pem")),
                })
                .collect(),
        };
        let bad = BAD_VECTORS
            .iter()
            .map(|v| BadVector {
                name: v.name.to_owned(),
                rule: v.rule.to_owned(),
                expected_error: v.expected_error.to_owned(),
                strict_der_only: v.strict_der_only,
                chain: PathBuf::from(format!("bad/{}.pem", v.name)),
                key: PathBuf::from(format!("bad/{}.key.pem", v.name)),
            })
            .collect();
        Manifest { trust_domains, nodes, bad, bad_readme: PathBuf::from("bad/README.md") }
    }

    /// Every file path in the manifest, relative to the output directory.
    pub fn files(&self) -> Vec<&Path> {
        let mut files: Vec<&Path> = Vec::new();
        for td in &self.trust_domains {
            files.extend([
                td.root.as_path(),
                &td.root_key,
                &td.intermediate,
                &td.intermediate_key,
                &td.bundle,
                &td.svid,
                &td.svid_key,
            ]);
        }
        files.extend([self.nodes.ca.as_path(), &self.nodes.ca_key]);
        for node in &self.nodes.nodes {
            files.extend([node.cert.as_path(), &node.key]);
        }
        for vector in &self.bad {
            files.extend([vector.chain.as_path(), &vector.key]);
        }
        files.push(&self.bad_readme);
        files
    }
}

/// What [`generate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The files of the set.
    pub manifest: Manifest,
    /// How many files were written; the others already held exactly the same bytes.
    pub written: usize,
}

/// Generates the whole development PKI into `out_dir` (created if missing) and returns its
/// manifest. Keys derive from a fixed seed and signatures are deterministic, so the output is
/// the same bytes on every run. All material is built in memory first, so a failure leaves no
/// partial set; a file whose bytes differ is then replaced through a temporary file and a
/// rename, and a file that already holds the same bytes is not touched.
pub fn generate(out_dir: &Path) -> anyhow::Result<Manifest> {
    Ok(generate_counted(out_dir)?.manifest)
}

/// [`generate`], also saying how many files it wrote.
pub fn generate_counted(out_dir: &Path) -> anyhow::Result<Generated> {
    let manifest = Manifest::describe();
    let mut out = output::Output::default();
    let org = good::trust_domains(&mut out)?;
    good::nodes(&mut out)?;
    bad::vectors(&org, &mut out)?;
    out.add("bad/README.md", bad::readme());
    out.check_matches(&manifest)?;
    let written = out.write_all(out_dir)?;
    Ok(Generated { manifest, written })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_are_unique_and_relative() {
        let manifest = Manifest::describe();
        let files = manifest.files();
        let mut sorted = files.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), files.len(), "duplicate paths in manifest");
        assert!(files.iter().all(|p| p.is_relative()));
        assert_eq!(manifest.trust_domains[0].trust_domain, "example.org");
    }

    #[test]
    fn generate_writes_exactly_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = generate(dir.path()).unwrap();
        assert_eq!(manifest, Manifest::describe());
        let mut on_disk = Vec::new();
        output::walk(dir.path(), dir.path(), &mut on_disk).unwrap();
        on_disk.sort();
        let mut listed: Vec<PathBuf> = manifest.files().iter().map(|p| p.to_path_buf()).collect();
        listed.sort();
        assert_eq!(on_disk, listed);
    }

    #[test]
    fn readme_lists_every_good_file_and_warns_first() {
        let readme = include_str!("../README.md");
        let first = readme.lines().next().unwrap_or_default().to_lowercase();
        assert!(first.contains("development") && first.contains("never"), "{first}");
        let manifest = Manifest::describe();
        for path in manifest.files() {
            let path = path.to_string_lossy();
            if !path.starts_with("bad/") {
                assert!(readme.contains(&format!("`{path}`")), "README.md misses {path}");
            }
        }
        assert!(readme.contains("`bad/README.md`"));
    }
}
