//! `keycard-certs-dev [OUT_DIR]`: writes the development PKI (see certs-dev/README.md) into
//! OUT_DIR, `certs-dev` by default. The keys it writes are public: development only.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let out_dir = match (args.next(), args.next()) {
        (None, _) => PathBuf::from("certs-dev"),
        (Some(arg), None) if arg == "-h" || arg == "--help" => {
            println!("usage: keycard-certs-dev [OUT_DIR]   (default: certs-dev)");
            println!(
                "Writes development-only certificates and keys; never use them in production."
            );
            return Ok(());
        }
        (Some(dir), None) => PathBuf::from(dir),
        (Some(_), Some(_)) => bail!("usage: keycard-certs-dev [OUT_DIR]"),
    };
    let done = keycard_certs_dev::generate_counted(&out_dir)
        .with_context(|| format!("generating the development PKI into {}", out_dir.display()))?;
    let total = done.manifest.files().len();
    let (written, dir) = (done.written, out_dir.display());
    let unchanged = total - written;
    println!("wrote {written} of {total} files into {dir} ({unchanged} already up to date)");
    println!("development only: the keys are public");
    Ok(())
}
