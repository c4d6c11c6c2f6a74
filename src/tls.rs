//! The process's TLS crypto provider. The HTTP crates are built without one of their own
//! (`rustls-no-provider`: their default, aws-lc, is a C library that takes minutes to compile on
//! 2 cores), so ring is installed before the first client is built. Idempotent: every place
//! that builds an HTTP client calls it, and `main` calls it first.
pub fn install_provider() {
    // Err only means a provider is installed already (this one, by an earlier call).
    let _ = rustls::crypto::ring::default_provider().install_default();
}
