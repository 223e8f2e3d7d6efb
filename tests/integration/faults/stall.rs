//! Peers that stop answering mid-stream.
