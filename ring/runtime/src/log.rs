//! One tracing set-up for every binary.
//!
//! Log lines go to **stderr** (stdout carries only the [`crate::announce`] line, so scripts can
//! read it), filtered by `RUST_LOG` (`tracing-subscriber`'s `EnvFilter` syntax, default `info`),
//! coloured only when stderr is a terminal and `NO_COLOR` is unset, as text or as one JSON
//! object per line (`--log-format`, env `WSCLUSTER_LOG_FORMAT`).

use std::io::IsTerminal as _;

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::flags;

/// The filter used when `RUST_LOG` is unset or empty.
pub const DEFAULT_FILTER: &str = "info";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The logging flags every binary flattens into its own (`#[command(flatten)]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Args)]
pub struct LogArgs {
    /// Log line format on stderr: `text` for people, `json` (one object per line) for
    /// collectors. The level filter is RUST_LOG (default info).
    #[arg(
        long = flags::LOG_FORMAT.long,
        env = flags::LOG_FORMAT.env,
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `RUST_LOG` is not a valid filter.
    #[error("RUST_LOG={value:?} is not a valid log filter")]
    Filter {
        /// The variable's value.
        value: String,
        /// Why it does not parse.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// Something else already set the global subscriber.
    #[error("logging is already set up")]
    AlreadySet(#[source] crate::BoxError),
}

/// Installs the global subscriber for this process.
///
/// # Errors
///
/// `RUST_LOG` is invalid, or a subscriber is already installed.
pub fn init(args: &LogArgs) -> Result<(), LogError> {
    let filter = filter(std::env::var(EnvFilter::DEFAULT_ENV).ok().as_deref())?;
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let installed = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(LogError::AlreadySet)
}

/// The filter for a `RUST_LOG` value: [`DEFAULT_FILTER`] when unset or blank.
fn filter(rust_log: Option<&str>) -> Result<EnvFilter, LogError> {
    match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(EnvFilter::new(DEFAULT_FILTER)),
        Some(value) => EnvFilter::try_new(value).map_err(|source| LogError::Filter {
            value: value.to_owned(),
            source,
        }),
    }
}

/// Whether to write ANSI colours: only to a terminal, and never when `NO_COLOR` is set to
/// anything non-empty (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn the_format_defaults_to_text_and_accepts_json() {
        let cli = Cli::try_parse_from(["x"]).expect("no flags");
        assert_eq!(cli.log.log_format, LogFormat::Text);
        let cli = Cli::try_parse_from(["x", "--log-format", "json"]).expect("json");
        assert_eq!(cli.log.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["x", "--log-format", "yaml"]).is_err());
    }

    #[test]
    fn the_format_flag_reads_its_environment_variable() {
        let cmd = <Cli as clap::CommandFactory>::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some("log-format"))
            .expect("the flag");
        assert_eq!(
            arg.get_env(),
            Some(OsStr::new("WSCLUSTER_LOG_FORMAT")),
            "the env var is part of the contract"
        );
    }

    #[test]
    fn an_unset_or_blank_filter_is_info_and_an_invalid_one_is_an_error() {
        assert_eq!(filter(None).expect("default").to_string(), "info");
        assert_eq!(filter(Some("  ")).expect("blank").to_string(), "info");
        assert_eq!(
            filter(Some("wscluster_node=debug"))
                .expect("valid")
                .to_string(),
            "wscluster_node=debug"
        );
        let err = filter(Some("=[bad")).expect_err("invalid");
        assert!(err.to_string().contains("RUST_LOG"), "{err}");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }
}
