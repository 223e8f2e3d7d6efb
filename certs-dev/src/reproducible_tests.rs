//! The development PKI is strict DER and reproducible: every good certificate (and every bad
//! vector not broken in its encoding on purpose) passes [`strict_der::check`], the generator
//! writes the same bytes on every run, the checked-in files are exactly what it writes, and
//! generating over an up-to-date set touches no file.

use std::path::Path;

use crate::strict_der::{self, StrictDerError};
use crate::{Manifest, generate, generate_counted};

/// The checked-in set.
fn checked_in() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the strict DER check over every certificate file of the set in `dir`; returns one
/// line per disagreement with what the manifest says.
fn strict_der_failures(dir: &Path) -> Vec<String> {
    let manifest = Manifest::describe();
    let mut failures = Vec::new();
    let mut good = Vec::new();
    for td in &manifest.trust_domains {
        good.extend([&td.root, &td.intermediate, &td.bundle, &td.svid]);
    }
    good.push(&manifest.nodes.ca);
    good.extend(manifest.nodes.nodes.iter().map(|n| &n.cert));
    let read = |path: &Path| std::fs::read(dir.join(path)).unwrap_or_default();
    for path in good {
        match strict_der::check_pem(&read(path)) {
            Ok(0) => failures.push(format!("{}: no certificate", path.display())),
            Ok(_) => {}
            Err((i, e)) => failures.push(format!("{} block {i}: {e}", path.display())),
        }
    }
    for vector in &manifest.bad {
        let result = strict_der::check_pem(&read(&vector.chain));
        let wanted = match vector.name.as_str() {
            // Broken on purpose below the DER level: half a certificate.
            "corrupted-der" => continue,
            _ if vector.strict_der_only => Some(vector.expected_error.as_str()),
            _ => None,
        };
        let got = result.as_ref().err().map(|(_, e)| variant(e));
        if got.as_deref() != wanted {
            failures.push(format!("bad/{}: {result:?}, expected {wanted:?}", vector.name));
        }
    }
    failures
}

/// The variant name of an error, from its `Debug` form.
fn variant(err: &StrictDerError) -> String {
    format!("{err:?}").chars().take_while(|c| c.is_ascii_alphanumeric()).collect()
}

#[test]
fn generated_material_is_strict_der() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path()).unwrap();
    let failures = strict_der_failures(dir.path());
    assert!(failures.is_empty(), "strict DER failures:\n{}", failures.join("\n"));
}

#[test]
fn checked_in_material_is_strict_der() {
    let failures = strict_der_failures(checked_in());
    assert!(failures.is_empty(), "strict DER failures:\n{}", failures.join("\n"));
}

#[test]
fn strict_der_check_rejects_ca_false_spelled_out_and_accepts_an_empty_sequence() {
    let key = crate::keys::DevKey::derive("strict der test").unwrap();
    let build = |content: &[u8]| {
        let mut params = rcgen::CertificateParams::default();
        params.custom_extensions.push(crate::pki::basic_constraints_extension(content));
        params.self_signed(&key).unwrap().der().to_vec()
    };
    assert_eq!(strict_der::check(&build(&crate::pki::NOT_CA)), Ok(()));
    let explicit = build(&crate::pki::NOT_CA_EXPLICIT_FALSE);
    assert!(
        matches!(
            strict_der::check(&explicit),
            Err(StrictDerError::ExtensionNotCanonical { oid }) if oid.to_string() == "2.5.29.19"
        ),
        "{:?}",
        strict_der::check(&explicit)
    );
    // The lenient parser the validator uses reads both as cA=false.
    for der in [build(&crate::pki::NOT_CA), explicit] {
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    }
    assert!(matches!(strict_der::check(&[0x30, 0x80, 0, 0]), Err(StrictDerError::Decode(_))));
}

#[test]
fn two_runs_write_the_same_bytes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    generate(a.path()).unwrap();
    generate(b.path()).unwrap();
    for file in Manifest::describe().files() {
        let (x, y) = (std::fs::read(a.path().join(file)), std::fs::read(b.path().join(file)));
        assert_eq!(x.unwrap(), y.unwrap(), "{} differs between two runs", file.display());
    }
}

#[test]
fn the_checked_in_set_is_exactly_what_the_generator_writes() {
    let fresh = tempfile::tempdir().unwrap();
    generate(fresh.path()).unwrap();
    let stale: Vec<String> = Manifest::describe()
        .files()
        .into_iter()
        .filter(|file| {
            std::fs::read(fresh.path().join(file)).ok()
                != std::fs::read(checked_in().join(file)).ok()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(
        stale.is_empty(),
        "checked-in files differ from the generator's output; run \
         `cargo run -p keycard-certs-dev -- certs-dev` and commit: {stale:?}"
    );
}

#[cfg(unix)]
#[test]
fn generating_over_an_up_to_date_set_touches_no_file() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let first = generate_counted(dir.path()).unwrap();
    assert_eq!(first.written, first.manifest.files().len());
    let inodes = |files: &[&Path]| -> Vec<u64> {
        files.iter().map(|f| std::fs::metadata(dir.path().join(f)).unwrap().ino()).collect()
    };
    let files = first.manifest.files();
    let before = inodes(&files);
    assert_eq!(generate_counted(dir.path()).unwrap().written, 0);
    assert_eq!(inodes(&files), before, "a file was replaced although its bytes were the same");
    // A damaged file is the only one written again.
    std::fs::write(dir.path().join(files[0]), "damaged").unwrap();
    assert_eq!(generate_counted(dir.path()).unwrap().written, 1);
}
