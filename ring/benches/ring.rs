//! Criterion benchmarks of the ring: lookups at 3, 10, 100 and 1,000 members for the wscluster
//! ring and, in the same run, the `hashring` crate (the peer the issue names) and the ketama,
//! Maglev and plain rendezvous baselines; build time, full and incremental (one member joins or
//! leaves: `cargo bench -p wscluster-ring --bench ring -- build-one-change`); and the
//! moved-connection scan.
//!
//! ```text
//! cargo bench -p wscluster-ring
//! ```

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use wscluster_ring::baselines::{Ketama, Maglev, Rendezvous};
use wscluster_ring::{KeyHash, Member, Ring, RingSnapshot};

const SIZES: [usize; 4] = [3, 10, 100, 1_000];
/// Keys looked up per iteration: enough to defeat per-key caching effects, few enough that the
/// slot table and key strings stay in L2 as they would in a proxy's hot path.
const KEYS_PER_ITER: usize = 1_024;

/// A member of the `hashring` peer: hashring places one point per node, so each member is added
/// as 160 virtual nodes (the ketama convention) to give it comparable balance.
#[derive(Hash, PartialEq, Eq, Clone, Copy, Debug)]
struct VNode {
    member: u32,
    replica: u32,
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i}")).collect()
}

fn ring(n: usize) -> Ring {
    let members = ids(n)
        .into_iter()
        .map(|id| Member::active(id, "127.0.0.1:1"))
        .collect();
    Ring::build(RingSnapshot::new("bench/ring", 1, members)).expect("valid ring")
}

fn keys() -> Vec<String> {
    (0..KEYS_PER_ITER).map(|i| format!("user-{i}")).collect()
}

fn lookup(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("lookup");
    for n in SIZES {
        let r = ring(n);
        group.bench_with_input(BenchmarkId::new("wscluster", n), &n, |b, _| {
            b.iter(|| {
                for k in &keys {
                    black_box(r.owner(black_box(k)).ok());
                }
            })
        });

        let mut peer = hashring::HashRing::new();
        for member in 0..n as u32 {
            for replica in 0..160 {
                peer.add(VNode { member, replica });
            }
        }
        group.bench_with_input(BenchmarkId::new("hashring-crate", n), &n, |b, _| {
            b.iter(|| {
                for k in &keys {
                    black_box(peer.get(black_box(k)).map(|v| v.member));
                }
            })
        });

        let ids = ids(n);
        let ketama = Ketama::new(ids.iter().map(|id| (id.as_str(), 1)), 160);
        group.bench_with_input(BenchmarkId::new("ketama-160", n), &n, |b, _| {
            b.iter(|| {
                for k in &keys {
                    black_box(ketama.owner(KeyHash::of(black_box(k))));
                }
            })
        });

        let maglev = Maglev::new(
            ids.iter().map(|id| (id.as_str(), 1)),
            Maglev::DEFAULT_TABLE_SIZE,
        );
        group.bench_with_input(BenchmarkId::new("maglev", n), &n, |b, _| {
            b.iter(|| {
                for k in &keys {
                    black_box(maglev.owner(KeyHash::of(black_box(k))));
                }
            })
        });

        if n <= 100 {
            let hrw = Rendezvous::new(ids.iter().map(|id| (id.as_str(), 1)));
            group.bench_with_input(BenchmarkId::new("rendezvous-plain", n), &n, |b, _| {
                b.iter(|| {
                    for k in &keys {
                        black_box(hrw.owner(KeyHash::of(black_box(k))));
                    }
                })
            });
        }
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    for n in SIZES {
        let members: Vec<Member> = ids(n)
            .into_iter()
            .map(|id| Member::active(id, "127.0.0.1:1"))
            .collect();
        group.bench_with_input(BenchmarkId::new("wscluster", n), &n, |b, _| {
            b.iter(|| {
                Ring::build(RingSnapshot::new(
                    "bench/ring",
                    1,
                    black_box(members.clone()),
                ))
            })
        });
        let weighted: Vec<Member> = members
            .iter()
            .enumerate()
            .map(|(i, m)| m.clone().with_weight(1 + (i % 3) as u32))
            .collect();
        group.bench_with_input(BenchmarkId::new("wscluster-weighted", n), &n, |b, _| {
            b.iter(|| {
                Ring::build(RingSnapshot::new(
                    "bench/ring",
                    1,
                    black_box(weighted.clone()),
                ))
            })
        });
        let ids = ids(n);
        group.bench_with_input(BenchmarkId::new("ketama-160", n), &n, |b, _| {
            b.iter(|| Ketama::new(ids.iter().map(|id| (id.as_str(), 1)), 160))
        });
        group.bench_with_input(BenchmarkId::new("maglev", n), &n, |b, _| {
            b.iter(|| {
                Maglev::new(
                    ids.iter().map(|id| (id.as_str(), 1)),
                    Maglev::DEFAULT_TABLE_SIZE,
                )
            })
        });
    }
    group.finish();
}

/// A ring change of one member at 100 and 1,000 members: a full build of the next ring against
/// `Ring::build_from` the current one (what proxies and nodes do on every ring they apply).
fn build_one_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("build-one-change");
    group.sample_size(10);
    for n in [100usize, 1_000] {
        let current = ring(n);
        let mut joined = current.members().to_vec();
        joined.push(Member::active("node-joining", "127.0.0.1:1"));
        let mut left = current.members().to_vec();
        left.remove(n / 2);
        for (name, next) in [("join", joined), ("leave", left)] {
            let snap = RingSnapshot::new("bench/ring", 2, next);
            group.bench_with_input(BenchmarkId::new(format!("full-{name}"), n), &n, |b, _| {
                b.iter(|| Ring::build(black_box(snap.clone())))
            });
            group.bench_with_input(
                BenchmarkId::new(format!("incremental-{name}"), n),
                &n,
                |b, _| b.iter(|| current.build_from(black_box(snap.clone()))),
            );
        }
    }
    group.finish();
}

/// What the proxy does on every ring change: diff two rings and test 100,000 live connections'
/// key hashes.
fn moved_scan(c: &mut Criterion) {
    let hashes: Vec<KeyHash> = (0..100_000).map(|i| KeyHash::of(format!("u{i}"))).collect();
    let mut group = c.benchmark_group("moved-scan-100k");
    group.sample_size(20);
    for n in [3usize, 100] {
        let old = ring(n);
        let new = ring(n + 1);
        group.bench_with_input(BenchmarkId::new("diff+scan", n), &n, |b, _| {
            b.iter(|| {
                let diff = old.diff(&new);
                hashes.iter().filter(|&&h| diff.moved_hash(h)).count()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, build, build_one_change, moved_scan);
criterion_main!(benches);
