//! `wscluster-proxy`: parses the flags and runs [`wscluster_proxy::cli::main`] (settings,
//! logging, the runtime, both listeners, the `listening on` line, the proxy and its drain).
//! `wscluster-operator proxy` runs the same.

use clap::Parser as _;

/// jemalloc rather than glibc's allocator. An upgrade allocates about two dozen times, three of
/// them cache-line aligned (tokio's task cell and two I/O registrations), which glibc serves
/// through `memalign`, its slowest path, and a busy proxy's churn of same-sized blocks keeps
/// overflowing glibc's small per-thread cache. With jemalloc the proxy runs 9 % fewer
/// user-space instructions and 12 % less CPU per upgrade, and an idle connection costs less
/// (2.63 against 2.81 KiB); see docs/benchmarks.md. (mimalloc saved as many instructions but
/// nearly doubled the memory per idle connection.)
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    wscluster_proxy::cli::main(wscluster_proxy::cli::Args::parse())
}
