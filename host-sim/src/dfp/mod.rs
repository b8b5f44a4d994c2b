//! The dynamic forward proxy's moving parts: the DNS cache, upstream TLS, and upstream connections.

pub mod dns_cache;
pub mod tls;
pub mod upstream;
