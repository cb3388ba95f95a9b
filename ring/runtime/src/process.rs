//! What every binary's `main` does around its real work: set up logging, build the tokio
//! runtime, cancel a token on SIGTERM or SIGINT, give the work a hard deadline after the
//! signal, and report the outcome.
//!
//! The outcome is the same in every process: success exits 0; any failure, including a
//! shutdown that outlives the deadline, prints exactly one line on stderr,
//! `error: <what failed>: <why>: <why>…` (the error's source chain), and exits 1. No
//! backtrace is printed, whatever `RUST_BACKTRACE` says: the line is for the person who
//! started the process, and the logs say the rest.

use std::error::Error;
use std::future::Future;
use std::io::Write;
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::BoxError;
use crate::log::{self, LogArgs, LogError};

/// How a binary runs.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// The program's name, for its log lines (`wscluster-node`).
    pub name: &'static str,
    /// How it logs.
    pub log: LogArgs,
    /// Worker threads of the tokio runtime: `None` is one per CPU, 1 a current-thread runtime
    /// (the cheapest per message when one core is enough).
    pub worker_threads: Option<NonZeroUsize>,
    /// How long the work may take to finish after SIGTERM or SIGINT before the process gives
    /// up and fails.
    pub hard_deadline: Duration,
}

/// Why a process failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Logging could not be set up.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The tokio runtime could not be built.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// The signal handlers could not be installed.
    #[error("cannot listen for SIGTERM and SIGINT")]
    Signal(#[source] std::io::Error),
    /// Shutdown outlived the hard deadline.
    #[error("shutdown did not finish within {}s of the signal", .0.as_secs_f64())]
    Deadline(Duration),
    /// The work itself failed.
    #[error("{}", chain(.0.as_ref()))]
    Failed(BoxError),
}

/// Runs `main` as the whole process: see the module docs. `main` gets the token that SIGTERM
/// or SIGINT cancels and should return once it has shut down.
pub fn run<F, Fut, E>(spec: ProcessSpec, main: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    let result = start(&spec).and_then(|runtime| {
        runtime.block_on(async {
            let shutdown = CancellationToken::new();
            crate::signal::cancel_on_signal(shutdown.clone()).map_err(ProcessError::Signal)?;
            until_deadline(main(shutdown.clone()), &shutdown, spec.hard_deadline).await
        })
    });
    if let Err(e) = &result {
        tracing::debug!(process = spec.name, error = %e, "process failed");
    }
    report(&result, &mut std::io::stderr().lock())
}

/// Reports a failure that happened before [`run`] could start (a flag that only the program
/// can check, read before the runtime exists): the same one line and exit code 1.
pub fn fail(error: impl Into<BoxError>) -> ExitCode {
    report(
        &Err(ProcessError::Failed(error.into())),
        &mut std::io::stderr().lock(),
    )
}

/// Logging, then the runtime.
fn start(spec: &ProcessSpec) -> Result<tokio::runtime::Runtime, ProcessError> {
    log::init(&spec.log)?;
    runtime(spec.worker_threads).map_err(ProcessError::Runtime)
}

/// A tokio runtime with `worker_threads` workers (`None`: one per CPU; 1: current-thread).
///
/// # Errors
///
/// The operating system refused threads or an event loop.
pub fn runtime(worker_threads: Option<NonZeroUsize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads.map(NonZeroUsize::get) {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}

/// Awaits `work`; once `shutdown` is cancelled, gives it `deadline` more to finish.
///
/// # Errors
///
/// [`ProcessError::Failed`] with the work's error, or [`ProcessError::Deadline`].
pub async fn until_deadline<Fut, E>(
    work: Fut,
    shutdown: &CancellationToken,
    deadline: Duration,
) -> Result<(), ProcessError>
where
    Fut: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    let failed = |e: E| ProcessError::Failed(e.into());
    tokio::pin!(work);
    tokio::select! {
        result = &mut work => return result.map_err(failed),
        () = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(deadline, work).await {
        Ok(result) => result.map_err(failed),
        Err(_) => Err(ProcessError::Deadline(deadline)),
    }
}

/// Writes the one `error: …` line for a failure and returns the exit code.
pub fn report(result: &Result<(), ProcessError>, out: &mut impl Write) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Nothing useful can be done if stderr itself is gone.
            let _ = writeln!(out, "error: {}", chain(e)).and_then(|()| out.flush());
            ExitCode::FAILURE
        }
    }
}

/// An error and its sources on one line, `outer: cause: cause` (what anyhow's `{:#}` prints).
/// A source whose text the line already ends with is skipped (an error that prints its
/// source itself), and line breaks become spaces, so the result is always one line.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("io: {0}")]
        Io(#[from] std::io::Error),
    }

    fn line_of(result: &Result<(), ProcessError>) -> (ExitCode, String) {
        let mut out = Vec::new();
        let code = report(result, &mut out);
        (code, String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn success_prints_nothing_and_exits_zero() {
        let (code, text) = line_of(&Ok(()));
        assert_eq!(code, ExitCode::SUCCESS);
        assert_eq!(text, "");
    }

    #[test]
    fn a_failure_is_one_line_with_the_cause_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        let err: anyhow::Result<()> = Err(Inner::from(io)).context("cannot listen on 127.0.0.1:1");
        let boxed: BoxError = err.expect_err("an error").into();
        let (code, text) = line_of(&Err(ProcessError::Failed(boxed)));
        assert_eq!(code, ExitCode::FAILURE);
        // The inner error prints its source itself, so the source is not repeated.
        assert_eq!(
            text,
            "error: cannot listen on 127.0.0.1:1: io: address in use\n"
        );
    }

    #[test]
    fn a_multi_line_message_still_makes_one_line() {
        let e = std::io::Error::other("first\nsecond");
        let (_, text) = line_of(&Err(ProcessError::Failed(e.into())));
        assert_eq!(text, "error: first second\n");
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_ends_before_the_signal_gives_its_result() {
        let shutdown = CancellationToken::new();
        let ok = until_deadline(
            async { Ok::<(), std::io::Error>(()) },
            &shutdown,
            Duration::ZERO,
        );
        assert!(ok.await.is_ok());
        let failed = until_deadline(
            async { Err(std::io::Error::other("broke")) },
            &shutdown,
            Duration::ZERO,
        )
        .await;
        assert_eq!(failed.expect_err("fails").to_string(), "broke");
    }

    #[tokio::test(start_paused = true)]
    async fn work_gets_the_deadline_after_the_signal_and_then_fails() {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let work = async move {
            stop.cancelled().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<(), std::io::Error>(())
        };
        // Finishes 3 s after the signal: within a 5 s deadline.
        shutdown.cancel();
        assert!(
            until_deadline(work, &shutdown, Duration::from_secs(5))
                .await
                .is_ok()
        );
        let never = std::future::pending::<Result<(), std::io::Error>>();
        let err = until_deadline(never, &shutdown, Duration::from_secs(5))
            .await
            .expect_err("the deadline passes");
        assert!(matches!(err, ProcessError::Deadline(_)), "{err:?}");
        let (code, text) = line_of(&Err(err));
        assert_eq!(code, ExitCode::FAILURE);
        assert_eq!(
            text,
            "error: shutdown did not finish within 5s of the signal\n"
        );
    }

    #[test]
    fn one_worker_thread_is_a_current_thread_runtime() {
        let one = runtime(NonZeroUsize::new(1)).expect("runtime");
        assert_eq!(
            one.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        let two = runtime(NonZeroUsize::new(2)).expect("runtime");
        assert_eq!(two.metrics().num_workers(), 2);
        let default = runtime(None).expect("runtime");
        assert_eq!(
            default.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread
        );
    }
}
