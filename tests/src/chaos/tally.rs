//! The figures of a chaos scenario, from what the load was answered ([`SendLog`]) and what the
//! clients accepted ([`Record`]): acknowledged, delivered, lost (and lost without the client
//! being told), duplicated, reordered, delivered to the wrong user, and the longest recovery.
//!
//! Counts are of what the application sees: after the client's de-duplication by offset
//! within an epoch (`docs/client.md`), so a replayed offset is not a duplicate but the same
//! content under two offsets is.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::load::{BROADCASTS, FIRST_SEQ, Outcome, SendLog, Sent};
use crate::client::Record;

/// One scenario's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Sends (or broadcasts) answered 2xx.
    pub acknowledged: usize,
    /// Deliveries those answers promise: one per acknowledged send, one per connected client
    /// per acknowledged broadcast.
    pub promised: usize,
    /// Promised deliveries that happened (at least once).
    pub delivered: usize,
    /// Promised deliveries that did not.
    pub lost: usize,
    /// Lost deliveries of users never told (no `recovered: false` ready frame): silent loss.
    pub lost_silently: usize,
    /// Extra copies the application saw.
    pub duplicated: usize,
    /// Acknowledged messages that arrived after a later acknowledged message of the same user.
    pub reordered: usize,
    /// Messages that reached another user.
    pub wrong_user: usize,
    /// Answers 503 (nothing stored; retry).
    pub refused: usize,
    /// Other answers and requests with no answer.
    pub failed: usize,
    /// Users told at least once that their recovery was incomplete.
    pub unrecovered_users: usize,
    /// The scenario's longest time to recover (what it measures is said in its line).
    pub longest_recovery: Duration,
}

/// The sequence numbers of a load's messages in `contents` with `prefix`, in order.
fn seqs<'a>(contents: &'a [String], prefix: &'a str) -> impl Iterator<Item = u64> + 'a {
    contents.iter().filter_map(move |c| {
        let (p, seq) = c.rsplit_once(':')?;
        let seq = seq.parse::<u64>().ok()?;
        (p == prefix && seq >= FIRST_SEQ).then_some(seq)
    })
}

/// What one user's received sequence says about the `promised` ones.
#[derive(Default)]
struct Seen {
    delivered: usize,
    lost: usize,
    duplicated: usize,
    reordered: usize,
}

impl Seen {
    fn of(received: impl Iterator<Item = u64>, promised: &BTreeSet<u64>) -> Seen {
        let mut seen = BTreeSet::new();
        let mut out = Seen::default();
        let mut highest = None;
        for seq in received {
            if !seen.insert(seq) {
                out.duplicated += 1;
                continue;
            }
            if promised.contains(&seq) {
                if highest.is_some_and(|h| seq < h) {
                    out.reordered += 1;
                }
                highest = highest.max(Some(seq));
            }
        }
        out.delivered = promised.intersection(&seen).count();
        out.lost = promised.len() - out.delivered;
        out
    }
}

impl Tally {
    /// The figures of a [`super::SendLoad`]: each user's acknowledged sends against what its
    /// client accepted.
    pub fn of_sends(log: &SendLog, records: &BTreeMap<String, Record>) -> Tally {
        let mut t = Tally::default();
        for (user, r) in records {
            let sent = log.get(user).map_or(&[][..], Vec::as_slice);
            t.count_outcomes(sent);
            let promised: BTreeSet<u64> = acknowledged(sent);
            t.promised += promised.len();
            let seen = Seen::of(seqs(&r.messages, user), &promised);
            t.add(&seen, r);
        }
        t
    }

    /// The figures of a [`super::BroadcastLoad`]: every acknowledged broadcast against every
    /// client.
    pub fn of_broadcasts(sent: &[Sent], records: &BTreeMap<String, Record>) -> Tally {
        let mut t = Tally::default();
        t.count_outcomes(sent);
        let promised = acknowledged(sent);
        for r in records.values() {
            t.promised += promised.len();
            let seen = Seen::of(seqs(&r.broadcasts, BROADCASTS), &promised);
            t.add(&seen, r);
        }
        t
    }

    fn count_outcomes(&mut self, sent: &[Sent]) {
        for s in sent {
            match s.outcome {
                Outcome::Acknowledged(_) => self.acknowledged += 1,
                Outcome::Refused(_) => self.refused += 1,
                Outcome::Failed(_) => self.failed += 1,
            }
        }
    }

    fn add(&mut self, seen: &Seen, r: &Record) {
        self.delivered += seen.delivered;
        self.lost += seen.lost;
        if r.not_recovered == 0 {
            self.lost_silently += seen.lost;
        } else {
            self.unrecovered_users += 1;
        }
        self.duplicated += seen.duplicated;
        self.reordered += seen.reordered;
        self.wrong_user += usize::try_from(r.misdelivered).unwrap_or(usize::MAX);
    }

    /// With the scenario's longest recovery.
    pub fn with_recovery(mut self, recovery: Duration) -> Tally {
        self.longest_recovery = recovery;
        self
    }

    /// The one line a scenario prints (and `docs/reliability.md` quotes).
    pub fn line(&self, scenario: &str, clients: usize) -> String {
        format!(
            "chaos {scenario}: clients {clients}, acknowledged {}, promised {}, delivered {}, \
             lost {} (silently {}), duplicated {}, reordered {}, wrong-user {}, refused-503 {}, \
             failed {}, unrecovered-users {}, longest recovery {:.2} s",
            self.acknowledged,
            self.promised,
            self.delivered,
            self.lost,
            self.lost_silently,
            self.duplicated,
            self.reordered,
            self.wrong_user,
            self.refused,
            self.failed,
            self.unrecovered_users,
            self.longest_recovery.as_secs_f64()
        )
    }

    /// Fails, quoting the line, unless every promise of a send held: nothing acknowledged
    /// lost, nothing reordered, nothing at the wrong user, and something was acknowledged.
    pub fn ensure_kept(&self, scenario: &str, clients: usize) -> anyhow::Result<()> {
        self.ensure_no_loss(scenario, clients)?;
        anyhow::ensure!(
            self.reordered == 0,
            "sends arrived out of order: {}",
            self.line(scenario, clients)
        );
        Ok(())
    }

    /// The promise of a broadcast (no order across senders): something was acknowledged,
    /// nothing acknowledged was lost, nothing reached the wrong user.
    pub fn ensure_no_loss(&self, scenario: &str, clients: usize) -> anyhow::Result<()> {
        let line = self.line(scenario, clients);
        anyhow::ensure!(self.acknowledged > 0, "nothing was acknowledged: {line}");
        anyhow::ensure!(
            self.lost == 0 && self.wrong_user == 0,
            "a promise broke: {line}"
        );
        Ok(())
    }
}

fn acknowledged(sent: &[Sent]) -> BTreeSet<u64> {
    sent.iter()
        .filter(|s| s.outcome.acknowledged())
        .map(|s| s.seq)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn sent(seq: u64, outcome: Outcome) -> Sent {
        let now = Instant::now();
        Sent {
            seq,
            outcome,
            started: now,
            answered: now,
        }
    }

    fn record(messages: &[String], not_recovered: u64) -> Record {
        Record {
            messages: messages.to_vec(),
            not_recovered,
            ..Record::default()
        }
    }

    #[test]
    fn loss_reorder_duplicates_and_strangers_are_counted_against_what_was_acknowledged() {
        let s = |n: u64| FIRST_SEQ + n;
        let mut log = SendLog::new();
        log.insert(
            "a".into(),
            vec![
                sent(s(0), Outcome::Acknowledged(200)),
                sent(s(1), Outcome::Acknowledged(202)),
                sent(s(2), Outcome::Refused(503)),
                sent(s(3), Outcome::Acknowledged(200)),
            ],
        );
        log.insert(
            "b".into(),
            vec![
                sent(s(0), Outcome::Acknowledged(200)),
                sent(s(1), Outcome::Failed("timeout".into())),
            ],
        );
        let m = |u: &str, n: u64| format!("{u}:{}", s(n));
        let mut records = BTreeMap::new();
        // a: s3 before s1 (reordered), s0 twice (duplicate), the refused s2 absent (fine),
        // plus round 1 and a message for someone else (not load messages: ignored here).
        let mut a = record(
            &[m("a", 0), m("a", 3), m("a", 1), m("a", 0), "a:1".into()],
            0,
        );
        a.misdelivered = 1;
        records.insert("a".to_owned(), a);
        // b: lost its acknowledged s0, but was told (recovered false); s1 (failed) arrived.
        records.insert("b".to_owned(), record(&[m("b", 1)], 1));
        let t = Tally::of_sends(&log, &records);
        assert_eq!((t.acknowledged, t.promised, t.delivered), (4, 4, 3));
        assert_eq!((t.lost, t.lost_silently, t.unrecovered_users), (1, 0, 1));
        assert_eq!((t.duplicated, t.reordered, t.wrong_user), (1, 1, 1));
        assert_eq!((t.refused, t.failed), (1, 1));
        assert!(t.ensure_kept("x", 2).is_err());
        records.insert("b".to_owned(), record(&[], 0));
        assert_eq!(Tally::of_sends(&log, &records).lost_silently, 1);
    }

    #[test]
    fn every_acknowledged_broadcast_is_promised_to_every_client() {
        let b = |n: u64| format!("{BROADCASTS}:{}", FIRST_SEQ + n);
        let sent = [
            sent(FIRST_SEQ, Outcome::Acknowledged(202)),
            sent(FIRST_SEQ + 1, Outcome::Refused(503)),
            sent(FIRST_SEQ + 2, Outcome::Acknowledged(202)),
        ];
        let mut records = BTreeMap::new();
        let with = |bs: Vec<String>| Record {
            broadcasts: bs,
            ..Record::default()
        };
        records.insert("a".to_owned(), with(vec![b(0), b(2)]));
        records.insert("b".to_owned(), with(vec![b(2)]));
        let t = Tally::of_broadcasts(&sent, &records);
        assert_eq!(
            (t.acknowledged, t.promised, t.delivered, t.lost),
            (2, 4, 3, 1)
        );
        assert_eq!(t.refused, 1);
        let all = with(vec![b(0), b(2)]);
        records.insert("b".to_owned(), all);
        let t = Tally::of_broadcasts(&sent, &records).with_recovery(Duration::from_millis(1500));
        assert!(t.ensure_kept("b", 2).is_ok());
        assert!(
            t.line("b", 2).ends_with("longest recovery 1.50 s"),
            "{}",
            t.line("b", 2)
        );
    }
}
