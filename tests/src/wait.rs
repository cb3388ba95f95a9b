//! Bounded waiting: polling a condition that has no event to await (state behind another
//! process's HTTP API), and the time bound around every end-to-end test.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;

/// How often [`wait_for`] asks again.
pub const POLL_INTERVAL_MS: u64 = 50;

/// Polls `check` every [`POLL_INTERVAL_MS`] until it returns `Some`, or fails after `timeout`
/// naming `what` and the last error `check` gave.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

/// Runs a scenario within `limit`, failing the test with the whole error chain (or a timeout)
/// otherwise: the body of every end-to-end `#[tokio::test]`.
pub async fn run_bounded(limit: Duration, scenario: impl Future<Output = anyhow::Result<()>>) {
    tokio::time::timeout(limit, scenario)
        .await
        .expect("the test finished within its time bound")
        .unwrap_or_else(|e| panic!("{e:#}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_returns_the_value_or_names_what_and_the_last_error() {
        let mut calls = 0;
        let v = wait_for("the third call", Duration::from_secs(5), || {
            calls += 1;
            let n = calls;
            async move { Ok((n == 3).then_some(n)) }
        })
        .await
        .expect("found");
        assert_eq!(v, 3);
        let e = wait_for::<(), _, _>("never", Duration::from_millis(120), || async {
            Err(anyhow::anyhow!("still broken"))
        })
        .await
        .expect_err("times out");
        let text = format!("{e:#}");
        assert!(
            text.contains("never") && text.contains("still broken"),
            "{text}"
        );
    }
}
