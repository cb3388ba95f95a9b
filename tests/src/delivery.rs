//! The delivery promise every scenario checks: each user got exactly its own messages, all of
//! them, in order, and nothing the contract does not describe.

use std::collections::BTreeMap;

use crate::client::Record;

/// Problems named in a failure message.
const EXAMPLES_IN_ERRORS: usize = 3;

/// Checks that each record holds exactly `<user>:1 … <user>:rounds` in order (after
/// de-duplication by offset), nothing for anyone else and no unreadable frame. Returns the
/// problems found.
pub fn delivery_problems(records: &BTreeMap<String, Record>, rounds: usize) -> Vec<String> {
    let mut problems = Vec::new();
    for (user, r) in records {
        if r.misdelivered > 0 {
            problems.push(format!(
                "{user}: {} messages for another user",
                r.misdelivered
            ));
        }
        if r.unreadable > 0 {
            problems.push(format!(
                "{user}: {} frames outside the contract",
                r.unreadable
            ));
        }
        let expected: Vec<String> = (1..=rounds).map(|s| format!("{user}:{s}")).collect();
        // A send retried after a lost answer may store the same content twice (at-least-once
        // from the sender's side); collapse consecutive repeats before comparing.
        let mut got = r.messages.clone();
        got.dedup();
        if got != expected {
            problems.push(format!("{user}: got {got:?}, expected {expected:?}"));
        }
    }
    problems
}

/// Fails, saying `when` and giving examples, unless [`delivery_problems`] finds none.
pub fn ensure_delivered(
    records: &BTreeMap<String, Record>,
    rounds: usize,
    when: &str,
) -> anyhow::Result<()> {
    let problems = delivery_problems(records, rounds);
    anyhow::ensure!(
        problems.is_empty(),
        "{when}: {} delivery problems, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(EXAMPLES_IN_ERRORS)]
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(messages: &[&str]) -> Record {
        Record {
            messages: messages.iter().map(|m| (*m).to_owned()).collect(),
            ..Record::default()
        }
    }

    #[test]
    fn every_gap_reorder_stranger_or_unreadable_frame_is_a_problem() {
        let mut records = BTreeMap::new();
        records.insert("a".to_owned(), record(&["a:1", "a:1", "a:2"]));
        assert!(
            delivery_problems(&records, 2).is_empty(),
            "repeats collapse"
        );
        assert!(ensure_delivered(&records, 2, "now").is_ok());
        records.insert("b".to_owned(), record(&["b:2", "b:1"]));
        records.insert("c".to_owned(), record(&["c:1"]));
        let mut stranger = record(&["d:1", "d:2"]);
        stranger.misdelivered = 1;
        stranger.unreadable = 2;
        records.insert("d".to_owned(), stranger);
        let problems = delivery_problems(&records, 2);
        assert_eq!(problems.len(), 4, "{problems:?}");
        let e = ensure_delivered(&records, 2, "after the move").expect_err("problems");
        assert!(
            e.to_string()
                .starts_with("after the move: 4 delivery problems"),
            "{e}"
        );
    }
}
