//! Reading `keycard authority x509 show --output json` (shared by the integration and e2e
//! test binaries through `#[path]`).

/// The ID of the active authority in a `show` document.
pub fn active_authority_id(shown: &serde_json::Value) -> String {
    let list = shown["authorities"].as_array().expect("an authorities list");
    let active = list.iter().find(|a| a["state"] == "active").expect("an active authority");
    active["id"].as_str().expect("an authority ID").to_owned()
}
