//! Load that records every answer: sends to users ([`SendLoad`]) and broadcasts
//! ([`BroadcastLoad`]) at a fixed rate through the proxies, one attempt per message (a retry
//! would blur what was acknowledged), each answer kept with when it was asked and answered.
//!
//! A user's sends are sequential (the next one starts after the previous answer), so "in
//! order" is defined for each user.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::fleet::{ServerApi, broadcast_once, send_once};

/// First sequence number of a load's messages (`<user>:<seq>`), far above the scenario's
/// rounds so the two never meet.
pub const FIRST_SEQ: u64 = 1_000_000;
/// Most sending tasks of a [`SendLoad`].
const MAX_WORKERS: usize = 64;

/// How one send or broadcast was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: stored (and perhaps delivered) or, for a broadcast, taken by the bus. Promised.
    Acknowledged(u16),
    /// 503: refused, nothing stored; the sender knows to retry.
    Refused(u16),
    /// Any other status, or no answer: not acknowledged, so not promised either way.
    Failed(String),
}

impl Outcome {
    /// Classifies an answer.
    fn of(answer: anyhow::Result<crate::http::Response>) -> Outcome {
        match answer {
            Ok(r) if r.status.is_success() => Outcome::Acknowledged(r.status.as_u16()),
            Ok(r) if r.status.as_u16() == 503 => Outcome::Refused(503),
            Ok(r) => Outcome::Failed(format!("{} {}", r.status, r.text())),
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }

    /// Whether it was a 2xx.
    pub fn acknowledged(&self) -> bool {
        matches!(self, Outcome::Acknowledged(_))
    }
}

/// One message sent and its answer.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Its sequence number (the content is `<user>:<seq>`, or `broadcast:<seq>`).
    pub seq: u64,
    /// The answer.
    pub outcome: Outcome,
    /// When the request started.
    pub started: Instant,
    /// When the answer (or the error) came.
    pub answered: Instant,
}

/// What a load recorded, by user (a broadcast load records under one name).
pub type SendLog = BTreeMap<String, Vec<Sent>>;

type SharedLog = Arc<Mutex<SendLog>>;

fn record(log: &SharedLog, user: &str, sent: Sent) {
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(user.to_owned())
        .or_default()
        .push(sent);
}

/// When the first message started at or after `since` was acknowledged, if one was.
fn first_acknowledged(log: &SharedLog, since: Instant) -> Option<Instant> {
    let log = log.lock().unwrap_or_else(PoisonError::into_inner);
    log.values()
        .flatten()
        .filter(|s| s.started >= since && s.outcome.acknowledged())
        .map(|s| s.answered)
        .min()
}

/// How many messages started at or after `since` were acknowledged.
fn acknowledged_since(log: &SharedLog, since: Instant) -> usize {
    let log = log.lock().unwrap_or_else(PoisonError::into_inner);
    log.values()
        .flatten()
        .filter(|s| s.started >= since && s.outcome.acknowledged())
        .count()
}

/// Sends `<user>:<seq>` to users round robin at a fixed total rate until stopped.
pub struct SendLoad {
    /// Stops the workers (a send in flight finishes and is recorded).
    stop: CancellationToken,
    /// The workers.
    tasks: Vec<JoinHandle<()>>,
    /// Every answer, by user.
    log: SharedLog,
}

impl SendLoad {
    /// Starts sending to `users` through the proxies' server API (`api`), `rate` sends per
    /// second in all. User i's sends go through proxy `i % n`, moving to the next proxy after
    /// a send that got no answer.
    pub fn start(api: &ServerApi, users: &[String], rate: usize) -> SendLoad {
        let stop = CancellationToken::new();
        let log = SharedLog::default();
        let workers = users.len().clamp(1, MAX_WORKERS);
        let period = Duration::from_secs_f64(workers as f64 / rate.max(1) as f64);
        let tasks = (0..workers)
            .map(|w| {
                let mine: Vec<(usize, String)> = users
                    .iter()
                    .enumerate()
                    .skip(w)
                    .step_by(workers)
                    .map(|(i, u)| (i, u.clone()))
                    .collect();
                let worker = Worker {
                    proxies: api.urls.clone(),
                    key: api.key.clone(),
                    users: mine,
                    log: log.clone(),
                };
                tokio::spawn(worker.run(period, stop.clone()))
            })
            .collect();
        SendLoad { stop, tasks, log }
    }

    /// Acknowledged sends so far.
    pub fn acknowledged(&self) -> usize {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.values()
            .flatten()
            .filter(|s| s.outcome.acknowledged())
            .count()
    }

    /// When the first send started at or after `since` was acknowledged, if one was.
    pub fn first_acknowledged_after(&self, since: Instant) -> Option<Instant> {
        first_acknowledged(&self.log, since)
    }

    /// Sends started at or after `since` that have been answered (any way).
    pub fn answered_after(&self, since: Instant) -> usize {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.values()
            .flatten()
            .filter(|s| s.started >= since)
            .count()
    }

    /// Stops sending, waits for the sends in flight, and answers everything recorded.
    pub async fn stop(self) -> SendLog {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        std::mem::take(&mut *self.log.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// One sending task and its share of the users.
struct Worker {
    proxies: Vec<String>,
    key: String,
    /// `(index, user)`.
    users: Vec<(usize, String)>,
    log: SharedLog,
}

impl Worker {
    async fn run(self, period: Duration, stop: CancellationToken) {
        if self.users.is_empty() || self.proxies.is_empty() {
            return;
        }
        let mut next_seq = vec![FIRST_SEQ; self.users.len()];
        let mut proxy_shift = vec![0usize; self.users.len()];
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for turn in (0..self.users.len()).cycle() {
            if stop.run_until_cancelled(tick.tick()).await.is_none() {
                return;
            }
            let (index, user) = &self.users[turn];
            let proxy = &self.proxies[(index + proxy_shift[turn]) % self.proxies.len()];
            let seq = next_seq[turn];
            next_seq[turn] += 1;
            let started = Instant::now();
            let outcome =
                Outcome::of(send_once(proxy, &self.key, user, &format!("{user}:{seq}")).await);
            if matches!(outcome, Outcome::Failed(_)) {
                proxy_shift[turn] += 1;
            }
            let answered = Instant::now();
            let sent = Sent {
                seq,
                outcome,
                started,
                answered,
            };
            record(&self.log, user, sent);
        }
    }
}

/// Broadcasts `broadcast:<seq>` one after the other at a fixed rate until stopped,
/// alternating proxies.
pub struct BroadcastLoad {
    stop: CancellationToken,
    task: JoinHandle<()>,
    log: SharedLog,
}

/// The name a [`BroadcastLoad`] records its broadcasts under.
pub const BROADCASTS: &str = "broadcast";

impl BroadcastLoad {
    /// Starts broadcasting through the proxies' server API, `rate` per second.
    pub fn start(api: &ServerApi, rate: usize) -> BroadcastLoad {
        let stop = CancellationToken::new();
        let log = SharedLog::default();
        let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let (proxies, key) = (api.urls.clone(), api.key.clone());
        let (task_log, task_stop) = (log.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            for seq in FIRST_SEQ.. {
                if task_stop.run_until_cancelled(tick.tick()).await.is_none() || proxies.is_empty()
                {
                    return;
                }
                let proxy = &proxies[(seq as usize) % proxies.len()];
                let started = Instant::now();
                let message = format!("{BROADCASTS}:{seq}");
                let outcome = Outcome::of(broadcast_once(proxy, &key, &message).await);
                let answered = Instant::now();
                let sent = Sent {
                    seq,
                    outcome,
                    started,
                    answered,
                };
                record(&task_log, BROADCASTS, sent);
            }
        });
        BroadcastLoad { stop, task, log }
    }

    /// How many broadcasts started at or after `since` were acknowledged.
    pub fn acknowledged_after(&self, since: Instant) -> usize {
        acknowledged_since(&self.log, since)
    }

    /// When the first broadcast started at or after `since` was acknowledged, if one was.
    pub fn first_acknowledged_after(&self, since: Instant) -> Option<Instant> {
        first_acknowledged(&self.log, since)
    }

    /// Stops, waits for the broadcast in flight, answers every broadcast and its answer.
    pub async fn stop(self) -> Vec<Sent> {
        self.stop.cancel();
        let _ = self.task.await;
        let mut log = std::mem::take(&mut *self.log.lock().unwrap_or_else(PoisonError::into_inner));
        log.remove(BROADCASTS).unwrap_or_default()
    }
}
