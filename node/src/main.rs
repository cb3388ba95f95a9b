//! `wscluster-node`: parses the flags and runs [`wscluster_node::main`] (logging, signals, the
//! `listening on <addr>` line, the node, the drain). `wscluster-operator node` runs the same.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    wscluster_node::main(wscluster_node::Config::parse())
}
