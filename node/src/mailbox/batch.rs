//! Appends to Redis in batches: one task per [`super::RedisMailbox`] takes every append that is
//! waiting when a call slot is free and sends them as one script call (one round trip, one
//! script dispatch in Redis), so under load the per-append cost is the Lua body alone.
//!
//! The batching is natural, not timed: an append that finds a free slot (at most
//! [`Batching::in_flight`] calls are out at once) goes at once, alone, so an idle node adds no
//! latency; appends that arrive while every slot is busy queue up and leave together in the
//! next call, at most [`Batching::max_batch`] of them. Every append keeps the same bound,
//! [`APPEND_TIMEOUT`], from the moment it was asked for, queueing included; one whose caller
//! gave up before its batch left is not sent, and a call is dropped when its oldest append's
//! time is up (the others in it are answered 503 with it), exactly as a single append's call
//! was: with Redis down nothing answered 503 is stored when it returns. A call Redis already
//! received when its time ran out may still be stored (at least once, as before).
//!
//! Within a batch the appends run in queue order, each exactly as a single append would (the
//! same script body), so offsets and epochs follow the same rule whatever the batch size.
//! Appends of different sends have no defined order between them anyway: only a send made after
//! another was answered is ordered after it, and that holds here.
//!
//! On a Redis Cluster one script call may only touch one hash slot, so a batch is split by
//! slot ([`RedisConnection::shard`]; a user's keys are all in one slot), each part one call,
//! all parts sent at once under the batch's deadline; a user's appends keep their queue order
//! within their part. A part whose master is failing over fails alone (503 for its appends);
//! the other parts are answered as usual. On a standalone Redis the whole batch is one part.
//!
//! A call slot stands for a call the connection is busy with, which is what makes appends
//! queue up and share the next call. On a cluster a call to a master that is failing over is
//! not answered until its deadline (a second); were it to keep its slot that long, a few of
//! them would hold every slot and the appends to the healthy masters would wait in the queue
//! until their own time ran out: one lost master would stall every user of a busy node. So
//! on a cluster a call gives its slot back after [`SLOW_CALL`] even if it is still out (it
//! keeps its deadline). On a standalone server a slow call keeps its slot: there is one
//! server, and more calls would only make smaller batches for a Redis already behind.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use redis::{ErrorKind, ServerErrorKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::{APPEND_TIMEOUT, Appended, RedisConnection, Retention, Shard};
use crate::error::{Error, Result};

/// On a cluster, how long an unanswered call holds its call slot: a healthy master answers in
/// well under a millisecond, a master that stopped answering holds it no longer than this.
const SLOW_CALL: Duration = Duration::from_millis(50);

/// Appends waiting for a batch, at most; a send that finds the queue full waits for room within
/// its own [`APPEND_TIMEOUT`].
const QUEUE: usize = 8192;

/// How appends are grouped into script calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most appends in one script call (1: every append is its own call).
    pub max_batch: usize,
    /// Most script calls out at once on the connection.
    pub in_flight: usize,
}

impl Default for Batching {
    /// 128 appends per call keep one call well under a millisecond of Redis time; 4 calls in
    /// flight keep the connection busy while one is answered.
    fn default() -> Self {
        Batching {
            max_batch: 128,
            in_flight: 4,
        }
    }
}

/// One message to append.
pub(super) struct Message {
    /// The user's stream key.
    pub stream: String,
    /// The user's meta hash key.
    pub meta: String,
    /// The payload.
    pub content: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// The chat sender, or "".
    pub from: String,
}

/// A queued message and its waiting caller.
struct Job {
    message: Message,
    reply: oneshot::Sender<Result<Appended>>,
    /// When its caller stops waiting: the call carrying it is dropped then, as a single
    /// append's would be, so nothing answered 503 is stored later.
    deadline: Instant,
}

/// The handle appends are sent through; the batching task ends when every handle is dropped.
#[derive(Debug, Clone)]
pub(super) struct Appender {
    jobs: mpsc::Sender<Job>,
}

impl Appender {
    /// Starts the batching task on `con` (needs a Tokio runtime).
    pub(super) fn spawn(con: RedisConnection, retention: Retention, batching: Batching) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(con, retention, batching, queue));
        Appender { jobs }
    }

    /// Queues `message` and waits for its epoch and offset, all within [`APPEND_TIMEOUT`].
    pub(super) async fn append(&self, message: Message) -> Result<Appended> {
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + APPEND_TIMEOUT;
        let queued_and_answered = async {
            self.jobs
                .send(Job {
                    message,
                    reply,
                    deadline,
                })
                .await
                .map_err(|_| stopped())?;
            answer.await.unwrap_or_else(|_| Err(stopped()))
        };
        match tokio::time::timeout_at(deadline, queued_and_answered).await {
            Ok(answer) => answer,
            Err(_) => Err(timed_out()),
        }
    }
}

/// The answer when the append's time is up.
fn timed_out() -> Error {
    Error::Timeout(format!(
        "mailbox append took longer than {APPEND_TIMEOUT:?}"
    ))
}

/// The answer when the batching task is gone (the node is shutting down).
fn stopped() -> Error {
    Error::Protocol("the mailbox appender stopped".into())
}

/// Takes what is queued whenever a call slot is free and sends it as one call.
async fn run(
    con: RedisConnection,
    retention: Retention,
    batching: Batching,
    mut queue: mpsc::Receiver<Job>,
) {
    let script = Arc::new(redis::Script::new(super::scripts::APPEND));
    let slots = Arc::new(Semaphore::new(batching.in_flight.max(1)));
    let max_batch = batching.max_batch.max(1);
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // A caller that gave up is not stored for: nobody would acknowledge it.
        jobs.retain(|job| !job.reply.is_closed());
        let Some(deadline) = jobs.iter().map(|job| job.deadline).min() else {
            continue;
        };
        let parts = by_shard(&con, jobs);
        let hold = con.is_cluster().then_some(SLOW_CALL);
        let batch = Call {
            script: Arc::clone(&script),
            con: con.clone(),
            retention,
            deadline,
        };
        tokio::spawn(batch.send(parts, slot, hold));
    }
}

/// What every part of one batch is sent with.
struct Call {
    script: Arc<redis::Script>,
    con: RedisConnection,
    retention: Retention,
    /// The batch's oldest append's deadline: no part is waited for past it.
    deadline: Instant,
}

impl Call {
    /// Sends each part as one script call, all at once, and answers its appends; gives `slot`
    /// back once every part is answered, or after `hold` (on a cluster) if one is still out.
    async fn send(self, parts: Vec<Vec<Job>>, slot: OwnedSemaphorePermit, hold: Option<Duration>) {
        let calls = parts.into_iter().map(|part| {
            let (script, mut con) = (&self.script, self.con.clone());
            async move {
                let answer = tokio::time::timeout_at(
                    self.deadline,
                    call(script, &mut con, self.retention, &part),
                )
                .await
                .unwrap_or_else(|_| Err(timed_out()));
                answer_each(part, answer);
            }
        });
        let mut calls = std::pin::pin!(join_all(calls));
        let answered = match hold {
            Some(hold) => tokio::time::timeout(hold, &mut calls).await.is_ok(),
            None => {
                calls.as_mut().await;
                true
            }
        };
        drop(slot);
        if !answered {
            calls.await;
        }
    }
}

/// `jobs` split into the parts that may share one script call, each in queue order: one part
/// on a standalone Redis, one per hash slot on a cluster.
fn by_shard(con: &RedisConnection, jobs: Vec<Job>) -> Vec<Vec<Job>> {
    if !con.is_cluster() {
        return vec![jobs];
    }
    let mut parts: Vec<(Shard, Vec<Job>)> = Vec::new();
    for job in jobs {
        let shard = con.shard(&job.message.stream);
        match parts.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, part)) => part.push(job),
            None => parts.push((shard, vec![job])),
        }
    }
    parts.into_iter().map(|(_, part)| part).collect()
}

/// One script call for `jobs`: their epochs and offsets, in order. The call goes as `EVALSHA`;
/// a Redis that does not know the script (restarted, `SCRIPT FLUSH`, a new master) answers
/// `NOSCRIPT`, on which it is loaded and the same command sent once more.
async fn call(
    script: &redis::Script,
    con: &mut RedisConnection,
    retention: Retention,
    jobs: &[Job],
) -> Result<Vec<Appended>> {
    let eval = eval_command(script, retention, jobs);
    let reply: String = match eval.query_async(con).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            // redis-rs sends SCRIPT LOAD to every master of a cluster.
            script.load_async(con).await?;
            eval.query_async(con).await?
        }
        answer => answer?,
    };
    parse_reply(&reply, jobs.len())
}

/// `EVALSHA` of the append script for `jobs`, every argument written once, straight into the
/// command (redis-rs's script invocation copies each into a list of its own first).
fn eval_command(script: &redis::Script, retention: Retention, jobs: &[Job]) -> redis::Cmd {
    let bytes: usize = jobs
        .iter()
        .map(|Job { message: m, .. }| {
            m.stream.len() + m.meta.len() + m.content.len() + m.from.len() + 20
        })
        .sum();
    let mut eval = redis::Cmd::with_capacity(6 + 5 * jobs.len(), 96 + bytes);
    eval.arg("EVALSHA")
        .arg(script.get_hash())
        .arg(2 * jobs.len());
    for Job { message: m, .. } in jobs {
        eval.arg(&m.stream).arg(&m.meta);
    }
    eval.arg(retention.max_len)
        .arg(retention.ttl.as_secs().max(1))
        .arg(&*super::new_epoch());
    for Job { message: m, .. } in jobs {
        eval.arg(&m.content).arg(m.timestamp).arg(&m.from);
    }
    eval
}

/// The append script's answer, `epoch:offset` per message joined by `,`, as exactly `n`
/// positions; anything else is a protocol error (every append of the call is answered 503).
fn parse_reply(reply: &str, n: usize) -> Result<Vec<Appended>> {
    let bad = || {
        Error::Protocol(format!(
            "the append script answered {reply:?} for {n} messages"
        ))
    };
    let positions = reply
        .split(',')
        .map(|entry| {
            let (epoch, offset) = entry.rsplit_once(':').ok_or_else(bad)?;
            let offset = offset.parse::<u64>().map_err(|_| bad())?;
            if epoch.is_empty() || offset == 0 {
                return Err(bad());
            }
            Ok(Appended {
                epoch: Arc::from(epoch),
                offset,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if positions.len() == n {
        Ok(positions)
    } else {
        Err(bad())
    }
}

/// Hands every job its own answer: its epoch and offset, or the call's error.
fn answer_each(jobs: Vec<Job>, answer: Result<Vec<Appended>>) {
    match answer {
        Ok(positions) => {
            for (job, appended) in jobs.into_iter().zip(positions) {
                let _ = job.reply.send(Ok(appended));
            }
        }
        Err(error) => {
            for job in jobs {
                let _ = job.reply.send(Err(same_error(&error)));
            }
        }
    }
}

/// A copy of a call's error for each message it carried.
fn same_error(error: &Error) -> Error {
    match error {
        Error::Redis(e) => Error::Redis(e.clone()),
        Error::Timeout(what) => Error::Timeout(what.clone()),
        other => Error::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_gives_each_message_its_epoch_and_offset_in_order() {
        let positions = parse_reply("9f00aa:3,9f00aa:4,01bc:1", 3).expect("parse");
        let got: Vec<(&str, u64)> = positions.iter().map(|p| (&*p.epoch, p.offset)).collect();
        assert_eq!(got, [("9f00aa", 3), ("9f00aa", 4), ("01bc", 1)]);
    }

    #[test]
    fn a_reply_that_is_short_long_or_malformed_is_refused() {
        for (reply, n) in [
            ("e:1", 2),
            ("e:1,e:2", 1),
            ("", 1),
            ("e1", 1),
            ("e:x", 1),
            (":1", 1),
            ("e:0", 1),
            ("e:-1", 1),
            ("e:1,", 2),
        ] {
            assert!(
                parse_reply(reply, n).is_err(),
                "{reply:?} for {n} was accepted"
            );
        }
    }
}
