//! The in-process scenarios of the load binary: CA signing (target 1), server issuance
//! over the agent API (target 2), the renewal storm with its plot (target 5) and mTLS
//! handshakes (target 8). Each measures its baseline in the same run.

mod common;
mod issuance;
mod manager_storm;
mod mtls;
mod plot;
mod renewal;
mod server;
mod signing;

use crate::table::Row;

/// Every in-process row; `quick` runs small counts (all four in well under 20 s).
pub fn rows(quick: bool) -> Vec<Row> {
    let mut rows = vec![signing::row(quick), issuance::row(quick)];
    rows.extend(renewal::rows(quick));
    rows.push(mtls::row(quick));
    rows
}
