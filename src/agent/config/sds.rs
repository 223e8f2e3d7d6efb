//! `[sds]` and `[workload_api] enabled` of the agent config: which APIs the Workload API
//! socket serves, and the SDS resource names (SPIRE's keys and defaults).

use super::file::{FileSds, FileWorkloadApi};
use super::{conflict, invalid};
use crate::agent::sds::SdsConfig;
use crate::agent::workload_api::Apis;
use crate::config::ConfigError;

/// Checks `[sds]` and `[workload_api] enabled`, and fills in defaults.
pub(super) fn apis(
    workload: Option<&FileWorkloadApi>,
    sds: Option<FileSds>,
) -> Result<Apis, ConfigError> {
    let workload_api = workload.and_then(|w| w.enabled).unwrap_or(true);
    let sds = sds.unwrap_or_default();
    let sds_on = sds.enabled.unwrap_or(true);
    if !workload_api && !sds_on {
        return Err(conflict(
            "workload_api.enabled",
            "sds.enabled",
            "with both off the agent would serve nothing on its socket; turn one on",
        ));
    }
    let mut config = SdsConfig::default();
    let names = [
        ("sds.default_svid_name", sds.default_svid_name, &mut config.default_svid_name),
        ("sds.default_bundle_name", sds.default_bundle_name, &mut config.default_bundle_name),
        (
            "sds.default_all_bundles_name",
            sds.default_all_bundles_name,
            &mut config.default_all_bundles_name,
        ),
    ];
    for (key, value, slot) in names {
        let Some(value) = value else { continue };
        if value.is_empty() {
            return Err(invalid(
                key,
                "must not be empty (an empty name list means every resource)",
            ));
        }
        if value.starts_with("spiffe://") {
            return Err(invalid(
                key,
                format!(
                    "{value:?} would hide the SPIFFE ID or trust domain of that name; pick a name without spiffe://"
                ),
            ));
        }
        *slot = value;
    }
    let SdsConfig {
        default_svid_name: a, default_bundle_name: b, default_all_bundles_name: c, ..
    } = &config;
    if a == b || a == c || b == c {
        return Err(invalid(
            "sds",
            format!(
                "default_svid_name ({a:?}), default_bundle_name ({b:?}) and \
                 default_all_bundles_name ({c:?}) must differ"
            ),
        ));
    }
    if let Some(n) = sds.max_streams_per_caller {
        if n == 0 {
            return Err(invalid("sds.max_streams_per_caller", "must be at least 1"));
        }
        config.max_streams_per_caller = n;
    }
    Ok(Apis { workload_api, sds: sds_on.then_some(config) })
}
