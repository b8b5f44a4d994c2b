//! One tokio runtime for every fixture in the test process.
//!
//! Fixtures (DNS server, upstreams) outlive single requests and are shared by cases that run
//! concurrently, so they live on a process-wide multi-thread runtime rather than on the
//! per-test runtime `#[tokio::test]` would create and tear down. Tests are plain `#[test]` fns
//! that call [`block_on`].

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fixtures")
            .enable_all()
            .build()
            // Without a runtime no fixture can exist; nothing sensible to return instead.
            .expect("building the fixtures' tokio runtime")
    })
}

/// Runs `future` to completion on the shared runtime, from a plain (non-async) test thread.
pub fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// The shared runtime's handle, for spawning from synchronous code.
pub fn handle() -> tokio::runtime::Handle {
    runtime().handle().clone()
}
