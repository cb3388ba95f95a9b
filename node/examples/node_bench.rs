//! Benchmark of one node (work in progress).
fn main() {}
