//! Agent API tests over real TCP, TLS and SQLite.
