//! Checks every certificate with the real `openssl verify` (and key matches with
//! `openssl x509 -pubkey` / `openssl pkey -pubout`), both on freshly generated material and
//! on the files checked in under certs-dev/. OpenSSL knows nothing of SPIFFE, so the table
//! below states, vector by vector, whether it must accept or reject, and why.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::{BAD_VECTORS, Manifest, generate};

/// What openssl must say about one bad vector: accepts with no purpose, with
/// `-purpose sslclient`, with `-purpose sslserver`; whether the leaf matches its key file
/// (`None`: there is no readable leaf to compare).
struct Expect {
    name: &'static str,
    plain: bool,
    client: bool,
    server: bool,
    key_matches: Option<bool>,
}

const fn ok(name: &'static str) -> Expect {
    Expect { name, plain: true, client: true, server: true, key_matches: Some(true) }
}

const fn rejected(name: &'static str) -> Expect {
    Expect { name, plain: false, client: false, server: false, key_matches: Some(true) }
}

const EXPECTED: &[Expect] = &[
    // cA=true on an end-entity cert: openssl takes the chain's first cert as the target and
    // does not require it to be a non-CA.
    ok("leaf-ca-true"),
    // -x509_strict: "keyCertSign invalid for non-CA" (RFC 5280 4.2.1.3).
    rejected("leaf-keycertsign"),
    // cRLSign on a non-CA is not checked by openssl; digitalSignature is still there.
    ok("leaf-crlsign"),
    // keyAgreement alone satisfies openssl's TLS key-usage mask for both purposes.
    ok("leaf-no-digital-signature"),
    // No key usage at all means "any usage" to openssl.
    ok("leaf-no-key-usage"),
    // Criticality of the leaf's key usage is a SPIFFE rule, not an openssl one.
    ok("leaf-key-usage-not-critical"),
    // A leaf without BasicConstraints is an ordinary end-entity to openssl.
    ok("leaf-no-basic-constraints"),
    // openssl reads BER here: `cA FALSE` spelled out passes even -x509_strict.
    ok("leaf-ca-false-explicit"),
    // Missing clientAuth fails only the sslclient purpose.
    Expect {
        name: "eku-no-client-auth",
        plain: true,
        client: false,
        server: true,
        key_matches: Some(true),
    },
    // Missing serverAuth fails only the sslserver purpose.
    Expect {
        name: "eku-no-server-auth",
        plain: true,
        client: true,
        server: false,
        key_matches: Some(true),
    },
    // SAN contents (URI count, scheme, case, path, trust domain) are SPIFFE rules: openssl
    // verify checks no names unless asked to.
    ok("no-uri-san"),
    ok("two-uri-sans"),
    ok("https-scheme"),
    ok("uppercase-trust-domain"),
    ok("root-path"),
    ok("wrong-trust-domain"),
    // Validity is checked against the current time.
    rejected("expired"),
    rejected("not-yet-valid"),
    // The chain ends at a root in neither bundle: "unable to get local issuer certificate".
    rejected("untrusted-root"),
    // "certificate signature failure".
    rejected("bad-signature"),
    // "invalid CA certificate": cA=false on the issuer.
    rejected("intermediate-not-ca"),
    // "invalid CA certificate": key usage present without keyCertSign.
    rejected("intermediate-no-keycertsign"),
    // The intermediate's URI SAN path is a SPIFFE rule only.
    ok("intermediate-id-has-path"),
    // openssl verify never looks at the private key; the key comparison catches it.
    Expect {
        name: "key-mismatch",
        plain: true,
        client: true,
        server: true,
        key_matches: Some(false),
    },
    // The leaf cannot be decoded: openssl cannot load it.
    Expect { name: "corrupted-der", plain: false, client: false, server: false, key_matches: None },
    // Nothing to load.
    Expect { name: "empty-chain", plain: false, client: false, server: false, key_matches: None },
];

/// Runs openssl; a missing binary fails the test loudly rather than skipping it.
fn openssl(args: &[&str]) -> Output {
    match Command::new("openssl").args(args).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run `openssl` ({e}): install it (apt-get install openssl); these tests never skip"
        ),
    }
}

fn s(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// `openssl verify -x509_strict [purpose] -CAfile ca [-untrusted chain] leaf` accepted?
fn verifies(ca: &Path, untrusted: Option<&Path>, leaf: &Path, purpose: Option<&str>) -> bool {
    let mut args = vec!["verify", "-x509_strict"];
    if let Some(purpose) = purpose {
        args.extend(["-purpose", purpose]);
    }
    args.extend(["-CAfile", s(ca)]);
    if let Some(untrusted) = untrusted {
        args.extend(["-untrusted", s(untrusted)]);
    }
    args.push(s(leaf));
    openssl(&args).status.success()
}

/// Does the first certificate of `cert` hold the public key of `key`?
fn key_matches(cert: &Path, key: &Path) -> bool {
    let from_cert = openssl(&["x509", "-noout", "-pubkey", "-in", s(cert)]);
    let from_key = openssl(&["pkey", "-pubout", "-in", s(key)]);
    assert!(from_cert.status.success() && from_key.status.success(), "reading {cert:?} / {key:?}");
    from_cert.stdout == from_key.stdout
}

/// Splits a chain file into `leaf.pem` (its first PEM block) and `rest.pem` (the others), so
/// that openssl verifies exactly the leaf: given a whole file, it skips a block it cannot
/// decode and would verify the next certificate instead. A file without PEM blocks is
/// returned as the "leaf" itself, for openssl to fail on.
fn split(chain: &Path, scratch: &Path) -> (PathBuf, Option<PathBuf>) {
    let blocks = pem::parse_many(std::fs::read(chain).unwrap()).unwrap();
    let Some((first, rest)) = blocks.split_first() else {
        return (chain.to_path_buf(), None);
    };
    let leaf = scratch.join("leaf.pem");
    std::fs::write(&leaf, pem::encode(first)).unwrap();
    if rest.is_empty() {
        return (leaf, None);
    }
    let untrusted = scratch.join("rest.pem");
    std::fs::write(&untrusted, pem::encode_many(rest)).unwrap();
    (leaf, Some(untrusted))
}

/// Runs every check over the material in `dir`, returning one line per disagreement.
fn check_dir(dir: &Path) -> Vec<String> {
    let manifest = Manifest::describe();
    let scratch = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut expect = |what: String, actual: bool, wanted: bool| {
        if actual != wanted {
            failures.push(format!("{what}: openssl said {actual}, expected {wanted}"));
        }
    };
    let mut bundles = String::new();
    for td in &manifest.trust_domains {
        let bundle = dir.join(&td.bundle);
        bundles.push_str(&std::fs::read_to_string(&bundle).unwrap());
        let intermediate = dir.join(&td.intermediate);
        let svid = dir.join(&td.svid);
        expect(
            format!("{} root", td.trust_domain),
            verifies(&bundle, None, &dir.join(&td.root), None),
            true,
        );
        expect(
            format!("{} intermediate", td.trust_domain),
            verifies(&bundle, None, &intermediate, None),
            true,
        );
        for purpose in [None, Some("sslclient"), Some("sslserver")] {
            let ok = verifies(&bundle, Some(&intermediate), &svid, purpose);
            expect(format!("{} svid {purpose:?}", td.trust_domain), ok, true);
        }
        expect(
            format!("{} svid key", td.trust_domain),
            key_matches(&svid, &dir.join(&td.svid_key)),
            true,
        );
        expect(
            format!("{} root key", td.trust_domain),
            key_matches(&dir.join(&td.root), &dir.join(&td.root_key)),
            true,
        );
        expect(
            format!("{} intermediate key", td.trust_domain),
            key_matches(&intermediate, &dir.join(&td.intermediate_key)),
            true,
        );
    }
    // The SVID of one trust domain must not verify against the other's bundle.
    let (org, com) = (&manifest.trust_domains[0], &manifest.trust_domains[1]);
    let crossed = verifies(
        &dir.join(&com.bundle),
        Some(&dir.join(&org.intermediate)),
        &dir.join(&org.svid),
        None,
    );
    expect("example.org svid against example.com bundle".into(), crossed, false);

    let node_ca = dir.join(&manifest.nodes.ca);
    for node in &manifest.nodes.nodes {
        let cert = dir.join(&node.cert);
        expect(
            format!("{} sslclient", node.name),
            verifies(&node_ca, None, &cert, Some("sslclient")),
            true,
        );
        expect(format!("{} key", node.name), key_matches(&cert, &dir.join(&node.key)), true);
        // A node certificate is no workload SVID: the trust-domain bundle must refuse it.
        expect(
            format!("{} under example.org", node.name),
            verifies(&dir.join(&org.bundle), None, &cert, None),
            false,
        );
    }

    let all_bundles = scratch.path().join("bundles.pem");
    std::fs::write(&all_bundles, bundles).unwrap();
    for vector in &manifest.bad {
        let row = EXPECTED.iter().find(|e| e.name == vector.name).expect("every vector has a row");
        let (leaf, untrusted) = split(&dir.join(&vector.chain), scratch.path());
        for (purpose, wanted) in
            [(None, row.plain), (Some("sslclient"), row.client), (Some("sslserver"), row.server)]
        {
            let ok = verifies(&all_bundles, untrusted.as_deref(), &leaf, purpose);
            expect(format!("bad/{} {purpose:?}", vector.name), ok, wanted);
        }
        if let Some(wanted) = row.key_matches {
            expect(
                format!("bad/{} key", vector.name),
                key_matches(&leaf, &dir.join(&vector.key)),
                wanted,
            );
        }
    }
    failures
}

#[test]
fn expected_table_covers_every_bad_vector_once() {
    let names: Vec<&str> = EXPECTED.iter().map(|e| e.name).collect();
    let vectors: Vec<&str> = BAD_VECTORS.iter().map(|v| v.name).collect();
    assert_eq!(names, vectors);
}

#[test]
fn openssl_agrees_with_freshly_generated_material() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path()).unwrap();
    let failures = check_dir(dir.path());
    assert!(failures.is_empty(), "openssl disagreements:\n{}", failures.join("\n"));
}

#[test]
fn openssl_agrees_with_checked_in_material() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in Manifest::describe().files() {
        assert!(
            dir.join(file).is_file(),
            "{} is not checked in: run the generator",
            file.display()
        );
    }
    let failures = check_dir(dir);
    assert!(failures.is_empty(), "openssl disagreements:\n{}", failures.join("\n"));
}
