//! Development-only PKI for keycard (see certs-dev/README.md).
#![forbid(unsafe_code)]
