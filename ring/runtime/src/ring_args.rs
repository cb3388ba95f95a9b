//! The ring-source flags the node and the proxy share, defined once: `--ring-url` with its token
//! (`--ring-token-file` or `--ring-token`, by the [`crate::token`] rule), or `--ring-file`.

use std::path::PathBuf;

use clap::Args;

use crate::flags;
use crate::token::{self, TokenError};

/// Where a process takes its rings from; flatten it into a parser (`#[command(flatten)]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct RingArgs {
    /// Base URL of the ring stream (the operator), e.g.
    /// `http://wscluster-operator.wscluster-system.svc:7400`. Needs a token.
    #[arg(
        long = flags::RING_URL.long,
        env = flags::RING_URL.env,
        conflicts_with = "ring_file"
    )]
    pub ring_url: Option<String>,
    /// File holding the ring stream's bearer token (trimmed; empty is an error).
    #[arg(
        long = flags::RING_TOKEN_FILE.long,
        env = flags::RING_TOKEN_FILE.env,
        conflicts_with = "ring_token"
    )]
    pub ring_token_file: Option<PathBuf>,
    /// The ring stream's bearer token (prefer --ring-token-file; the two conflict).
    #[arg(
        long = flags::RING_TOKEN.long,
        env = flags::RING_TOKEN.env,
        hide_env_values = true
    )]
    pub ring_token: Option<String>,
    /// A JSON ring snapshot file, re-read when it changes (tests, local runs, static set-ups).
    #[arg(long = flags::RING_FILE.long, env = flags::RING_FILE.env)]
    pub ring_file: Option<PathBuf>,
}

/// The ring source the flags name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingSource {
    /// A JSON `RingSnapshot` file, re-read when it changes.
    File(PathBuf),
    /// The operator's ring stream.
    Stream {
        /// Base URL, e.g. `http://wscluster-operator.wscluster-system.svc:7400`.
        url: String,
        /// Bearer token.
        token: String,
    },
}

impl RingArgs {
    /// The source the flags name, `None` if neither `--ring-url` nor `--ring-file` is given.
    /// The ring stream's token is read here (a file is read once).
    ///
    /// # Errors
    ///
    /// `--ring-url` without a usable token, or both `--ring-url` and `--ring-file` (clap
    /// refuses that too; this covers values set in code).
    pub fn source(&self) -> Result<Option<RingSource>, RingArgsError> {
        match (&self.ring_url, &self.ring_file) {
            (Some(_), Some(_)) => Err(RingArgsError::BothSources),
            (Some(url), None) => Ok(Some(RingSource::Stream {
                url: url.clone(),
                token: token::RING_TOKEN.require(
                    self.ring_token.as_deref(),
                    self.ring_token_file.as_deref(),
                    flags::RING_URL,
                )?,
            })),
            (None, Some(path)) => Ok(Some(RingSource::File(path.clone()))),
            (None, None) => Ok(None),
        }
    }
}

/// Why the ring flags name no usable source.
#[derive(Debug, thiserror::Error)]
pub enum RingArgsError {
    /// Both sources were given.
    #[error("give one of --{} or --{}, not both", flags::RING_URL.long, flags::RING_FILE.long)]
    BothSources,
    /// The ring stream's token is unusable.
    #[error(transparent)]
    Token(#[from] TokenError),
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        ring: RingArgs,
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
    }

    #[test]
    fn the_flags_name_a_stream_a_file_or_nothing() {
        let stream = parse(&["--ring-url", "http://h:7400", "--ring-token", "t"]).expect("parses");
        assert_eq!(
            stream.ring.source().expect("valid"),
            Some(RingSource::Stream {
                url: "http://h:7400".into(),
                token: "t".into()
            })
        );
        let file = parse(&["--ring-file", "r.json"]).expect("parses");
        assert_eq!(
            file.ring.source().expect("valid"),
            Some(RingSource::File("r.json".into()))
        );
        assert_eq!(
            parse(&[]).expect("parses").ring.source().expect("valid"),
            None
        );
    }

    #[test]
    fn conflicting_or_incomplete_flags_are_refused() {
        assert!(parse(&["--ring-url", "http://h:1", "--ring-file", "r.json"]).is_err());
        assert!(parse(&["--ring-token", "a", "--ring-token-file", "/t"]).is_err());
        let no_token = parse(&["--ring-url", "http://h:1"]).expect("parses");
        assert_eq!(
            no_token.ring.source().expect_err("no token").to_string(),
            "--ring-url needs --ring-token-file or --ring-token"
        );
        let both = RingArgs {
            ring_url: Some("http://h:1".into()),
            ring_file: Some("r.json".into()),
            ..RingArgs::default()
        };
        assert!(matches!(both.source(), Err(RingArgsError::BothSources)));
    }
}
