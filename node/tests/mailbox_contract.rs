//! One retention rule for both mailboxes: the in-memory one and the Redis one against a real
//! Redis run the same checks, so the two cannot drift apart. Dense offsets that go on past
//! trimming, the oldest and latest offsets a read reports, the chat sender, and a read of a
//! new stream naming the epoch its first append then uses; and, for Redis, the offset counter
//! every release numbers from.

mod common;

use std::time::Duration;

use wscluster_node::mailbox::{Mailbox, MemoryMailbox, RedisMailbox, Retention, keys};

use common::{redis_cleanup, redis_manager, unique, within};

fn retention() -> Retention {
    Retention {
        max_len: 3,
        ttl: Duration::from_secs(60),
    }
}

/// Five appends to a mailbox that keeps three: offsets 1..=5 in one epoch, the last three
/// retained, and a new stream's read naming the epoch of its first append.
async fn hands_out_dense_offsets_and_trims_to_max_len(m: &impl Mailbox) {
    let mut epochs = Vec::new();
    for i in 1..=5u64 {
        let appended = m
            .append("u", &format!("m{i}"), None, i)
            .await
            .expect("append");
        assert_eq!(appended.offset, i);
        epochs.push(appended.epoch);
    }
    epochs.dedup();
    assert_eq!(epochs.len(), 1, "one epoch while the stream lives");
    let page = m.read("u", 0, 10).await.expect("read");
    assert_eq!(page.epoch, epochs[0]);
    assert_eq!(page.oldest, Some(3));
    assert_eq!(page.latest, 5);
    let offsets: Vec<u64> = page.entries.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, vec![3, 4, 5]);
    let page = m.read("u", 4, 10).await.expect("read");
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].content, "m5");
    let chat = m
        .append("u", "chat", Some("alice"), 6)
        .await
        .expect("append");
    assert_eq!((chat.epoch, chat.offset), (epochs[0].clone(), 6));
    let page = m.read("u", 5, 10).await.expect("read");
    assert_eq!(page.entries[0].from.as_deref(), Some("alice"));
    assert_eq!(m.read("u", 4, 1).await.expect("read").entries[0].from, None);
    let other = m.read("other", 0, 10).await.expect("read");
    assert_eq!(
        (other.entries.len(), other.oldest, other.latest),
        (0, None, 0)
    );
    assert_ne!(other.epoch, epochs[0], "every stream has its own epoch");
    let first = m.append("other", "x", None, 1).await.expect("append");
    assert_eq!(
        (first.epoch, first.offset),
        (other.epoch, 1),
        "the epoch a read made is the one the next append uses"
    );
}

#[tokio::test]
async fn the_memory_mailbox_keeps_the_retention_rule() {
    within(
        Duration::from_secs(10),
        hands_out_dense_offsets_and_trims_to_max_len(&MemoryMailbox::new(retention())),
    )
    .await;
}

#[tokio::test]
async fn the_redis_mailbox_keeps_the_retention_rule() {
    within(Duration::from_secs(30), async {
        let prefix = unique("contract");
        let namespace = format!("{prefix}:c:");
        let m = RedisMailbox::new(redis_manager().await, namespace.clone(), retention());
        hands_out_dense_offsets_and_trims_to_max_len(&m).await;
        // Every release numbers a user's next entry from the meta hash's `s`, so it must stay
        // the last offset handed out: a node rolled back to an earlier release goes on from
        // it, and a stale one would have Redis refuse its ids.
        let counter: String = redis::cmd("HGET")
            .arg(keys::meta(&namespace, "u"))
            .arg("s")
            .query_async(&mut redis_manager().await)
            .await
            .expect("HGET");
        assert_eq!(counter, "6");
        redis_cleanup(&prefix).await;
    })
    .await;
}
