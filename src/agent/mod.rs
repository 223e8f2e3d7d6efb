//! The node agent: attests to the server, keeps workload SVIDs renewed, serves the
//! Workload API.

pub mod renewal;
