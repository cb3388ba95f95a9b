//! The ring-source flags the node and the proxy share, defined once: `--ring-url` with its token
//! (`--ring-token-file` or `--ring-token`, by the [`crate::token`] rule), `--ring-file`, or both:
//! then the stream is authoritative and the file is the fallback a process starts from while the
//! stream is unavailable (`wscluster_ring_stream::merge_rings`).

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
        env = flags::RING_URL.env
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
    /// Beside --ring-url it is the fallback: used until the stream delivers a newer ring, and
    /// whenever it holds a newer one (the operator's ring ConfigMap, mounted).
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
        /// The fallback ring file, if given beside the stream.
        fallback: Option<PathBuf>,
    },
}

impl RingArgs {
    /// The source the flags name, `None` if neither `--ring-url` nor `--ring-file` is given.
    /// The ring stream's token is read here (a file is read once). Both flags name the stream
    /// with the file as its fallback.
    ///
    /// # Errors
    ///
    /// `--ring-url` without a usable token.
    pub fn source(&self) -> Result<Option<RingSource>, RingArgsError> {
        match (&self.ring_url, &self.ring_file) {
            (Some(url), fallback) => Ok(Some(RingSource::Stream {
                url: url.clone(),
                token: token::RING_TOKEN.require(
                    self.ring_token.as_deref(),
                    self.ring_token_file.as_deref(),
                    flags::RING_URL,
                )?,
                fallback: fallback.clone(),
            })),
            (None, Some(path)) => Ok(Some(RingSource::File(path.clone()))),
            (None, None) => Ok(None),
        }
    }
}

/// Why the ring flags name no usable source.
#[derive(Debug, thiserror::Error)]
pub enum RingArgsError {
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
                token: "t".into(),
                fallback: None,
            })
        );
        let both = parse(&[
            "--ring-url",
            "http://h:7400",
            "--ring-token",
            "t",
            "--ring-file",
            "r.json",
        ])
        .expect("parses");
        assert_eq!(
            both.ring.source().expect("valid"),
            Some(RingSource::Stream {
                url: "http://h:7400".into(),
                token: "t".into(),
                fallback: Some("r.json".into()),
            }),
            "the file beside the stream is its fallback"
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
        assert!(parse(&["--ring-token", "a", "--ring-token-file", "/t"]).is_err());
        let no_token = parse(&["--ring-url", "http://h:1"]).expect("parses");
        assert_eq!(
            no_token.ring.source().expect_err("no token").to_string(),
            "--ring-url needs --ring-token-file or --ring-token"
        );
        let file_only = parse(&["--ring-file", "r.json", "--ring-token", "t"]).expect("parses");
        assert_eq!(
            file_only.ring.source().expect("valid"),
            Some(RingSource::File("r.json".into()))
        );
    }
}
