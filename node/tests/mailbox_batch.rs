//! The Redis mailbox's batched appends against a real Redis: many appends at once, spread over
//! a few users, come out exactly as one-at-a-time appends would — every offset of a user handed
//! out once, 1..=n, one epoch per user, every message stored under the offset it was answered
//! with — whatever the batch size.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use wscluster_node::mailbox::{Appended, Batching, Mailbox, READ_PAGE, RedisMailbox, Retention};

use common::{redis_cleanup, redis_manager, unique, within};

const USERS: usize = 4;
const PER_USER: u64 = 150;

fn retention() -> Retention {
    Retention {
        max_len: 10_000,
        ttl: Duration::from_secs(60),
    }
}

/// Sends every append at once and returns what each (user, message) was answered.
async fn append_all(mailbox: Arc<RedisMailbox>) -> BTreeMap<(usize, u64), Appended> {
    let mut calls = FuturesUnordered::new();
    for i in 0..PER_USER {
        for user in 0..USERS {
            let mailbox = Arc::clone(&mailbox);
            calls.push(async move {
                let content = format!("u{user}-m{i}");
                let answer = mailbox.append(&format!("u{user}"), &content, None, i).await;
                ((user, i), answer.expect("append stored"))
            });
        }
    }
    let mut answers = BTreeMap::new();
    while let Some((at, appended)) = calls.next().await {
        answers.insert(at, appended);
    }
    answers
}

/// Every user's offsets are 1..=PER_USER, once each, in one epoch, and the stored entry at
/// each offset is the message that was answered with it.
async fn check(mailbox: &RedisMailbox, answers: &BTreeMap<(usize, u64), Appended>) {
    for user in 0..USERS {
        let mine: Vec<(&u64, &Appended)> = answers
            .iter()
            .filter(|((u, _), _)| *u == user)
            .map(|((_, i), a)| (i, a))
            .collect();
        let epochs: HashSet<&str> = mine.iter().map(|(_, a)| &*a.epoch).collect();
        assert_eq!(epochs.len(), 1, "user {user}: one epoch, got {epochs:?}");
        let offsets: HashSet<u64> = mine.iter().map(|(_, a)| a.offset).collect();
        assert_eq!(
            offsets,
            (1..=PER_USER).collect(),
            "user {user}: dense offsets"
        );
        let mut stored = BTreeMap::new();
        let mut after = 0;
        loop {
            let page = mailbox
                .read(&format!("u{user}"), after, READ_PAGE)
                .await
                .expect("read");
            let Some(last) = page.entries.last().map(|e| e.offset) else {
                break;
            };
            stored.extend(page.entries.into_iter().map(|e| (e.offset, e.content)));
            after = last;
        }
        for (i, appended) in mine {
            assert_eq!(
                stored.get(&appended.offset),
                Some(&format!("u{user}-m{i}")),
                "user {user} offset {}",
                appended.offset
            );
        }
    }
}

async fn run(batching: Batching) {
    let prefix = unique("batch");
    let mailbox = Arc::new(RedisMailbox::with_batching(
        redis_manager().await,
        format!("{prefix}:c:"),
        retention(),
        batching,
    ));
    let answers = append_all(Arc::clone(&mailbox)).await;
    check(&mailbox, &answers).await;
    redis_cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_in_batches_get_dense_offsets_one_epoch_and_their_own_entries() {
    within(Duration::from_secs(60), run(Batching::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_batches_and_single_appends_follow_the_same_rule() {
    within(
        Duration::from_secs(60),
        run(Batching {
            max_batch: 3,
            in_flight: 2,
        }),
    )
    .await;
    within(
        Duration::from_secs(60),
        run(Batching {
            max_batch: 1,
            in_flight: 1,
        }),
    )
    .await;
}

/// The append goes as `EVALSHA`; a Redis that lost its scripts (restarted, `SCRIPT FLUSH`)
/// answers `NOSCRIPT`, and the append still stores, in the same stream, at the next offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_after_redis_forgot_the_script_loads_it_and_is_stored() {
    within(Duration::from_secs(30), async {
        let prefix = unique("noscript");
        let mailbox = RedisMailbox::new(redis_manager().await, format!("{prefix}:c:"), retention());
        let before = mailbox
            .append("u", "before", None, 1)
            .await
            .expect("stored");
        let flushed: String = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut redis_manager().await)
            .await
            .expect("SCRIPT FLUSH");
        assert_eq!(flushed, "OK");
        let after = mailbox.append("u", "after", None, 2).await.expect("stored");
        assert_eq!(after.epoch, before.epoch, "the same stream");
        assert_eq!(after.offset, before.offset + 1);
        let page = mailbox.read("u", 0, READ_PAGE).await.expect("read");
        let stored: Vec<(u64, &str)> = page
            .entries
            .iter()
            .map(|e| (e.offset, e.content.as_str()))
            .collect();
        assert_eq!(stored, [(1, "before"), (2, "after")]);
        redis_cleanup(&prefix).await;
    })
    .await;
}
