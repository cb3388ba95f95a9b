//! Shared secrets, by one rule for every process: the proxy's secret that nodes check, the
//! server API's keys, the ring stream's tokens.
//!
//! * A [`CredentialSet`] holds one or more valid secrets at once, so a secret can be rotated:
//!   add the new one, move the callers, remove the old one. A presented secret is compared with
//!   every member in constant time (`subtle`), and the comparison does not stop at the first
//!   match, so timing says nothing about which member or how many bytes matched.
//! * A secret file holds one secret per line; blank lines and lines starting with `#` are
//!   ignored, surrounding whitespace is trimmed. A file with no secret is an error, never an
//!   empty set that would refuse (or, worse, accept) everyone.
//! * [`WatchedCredentials`] re-reads its file when it changes. Kubernetes updates a mounted
//!   Secret in place (an atomic symlink swap), so rotation needs no restart. A change that
//!   leaves the file unreadable or empty is logged and the previous set is kept.
//!
//! Secrets never appear in `Debug` output or in errors.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

/// The longest secret accepted, in bytes. A bound on what a caller makes us compare.
pub const MAX_SECRET_LEN: usize = 4096;

/// The most secrets one set may hold (rotation needs two; a few more are harmless).
pub const MAX_SECRETS: usize = 16;

/// How often a [`WatchedCredentials`] looks at its file. Kubernetes propagates a Secret's
/// change to a mounted volume within about a minute, so this adds little.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Why a set of secrets could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The file could not be read.
    #[error("{}: cannot read it: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// There was no secret (an empty file, or only comments).
    #[error("{origin}: holds no secret")]
    Empty {
        /// Where the secrets came from.
        origin: String,
    },
    /// A secret is longer than [`MAX_SECRET_LEN`] or holds a control character.
    #[error("{origin}: secret {index} is not a valid secret ({why})")]
    Invalid {
        /// Where the secrets came from.
        origin: String,
        /// Its 1-based position.
        index: usize,
        /// What is wrong (never the secret itself).
        why: &'static str,
    },
    /// More than [`MAX_SECRETS`] secrets.
    #[error("{origin}: holds more than {MAX_SECRETS} secrets")]
    TooMany {
        /// Where the secrets came from.
        origin: String,
    },
}

/// One or more valid secrets. `Debug` shows only how many.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialSet {
    secrets: Vec<Vec<u8>>,
}

impl fmt::Debug for CredentialSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialSet({} secrets)", self.secrets.len())
    }
}

impl CredentialSet {
    /// A set from secrets given directly; `origin` names them in errors (a flag, a file).
    ///
    /// # Errors
    ///
    /// No secret, too many, or one that is too long or holds a control character.
    pub fn new<S: AsRef<str>>(
        origin: &str,
        secrets: impl IntoIterator<Item = S>,
    ) -> Result<CredentialSet, CredentialError> {
        let mut kept = Vec::new();
        for (index, secret) in secrets.into_iter().enumerate() {
            let secret = secret.as_ref();
            let why = if secret.len() > MAX_SECRET_LEN {
                Some("too long")
            } else if secret.chars().any(char::is_control) {
                Some("holds a control character")
            } else if secret.is_empty() {
                Some("empty")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(CredentialError::Invalid {
                    origin: origin.to_owned(),
                    index: index + 1,
                    why,
                });
            }
            kept.push(secret.as_bytes().to_vec());
        }
        match kept.len() {
            0 => Err(CredentialError::Empty {
                origin: origin.to_owned(),
            }),
            n if n > MAX_SECRETS => Err(CredentialError::TooMany {
                origin: origin.to_owned(),
            }),
            _ => Ok(CredentialSet { secrets: kept }),
        }
    }

    /// The secrets of a text: one per line, blank lines and `#` comments ignored, trimmed.
    ///
    /// # Errors
    ///
    /// As [`CredentialSet::new`].
    pub fn parse(origin: &str, text: &str) -> Result<CredentialSet, CredentialError> {
        let lines = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'));
        CredentialSet::new(origin, lines)
    }

    /// The secrets of a file, by [`CredentialSet::parse`].
    ///
    /// # Errors
    ///
    /// The file cannot be read, or as [`CredentialSet::parse`].
    pub fn from_file(path: &Path) -> Result<CredentialSet, CredentialError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
            path: path.to_owned(),
            source,
        })?;
        CredentialSet::parse(&path.display().to_string(), &text)
    }

    /// Whether `presented` is one of the secrets. Every member is compared, each in time that
    /// depends only on the lengths.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let mut found = subtle::Choice::from(0);
        for secret in &self.secrets {
            found |= secret.as_slice().ct_eq(presented);
        }
        found.into()
    }

    /// The first secret: what this process presents when it is the caller.
    pub fn current(&self) -> &str {
        // The set is never empty and every member came from a `&str` (see `new`).
        self.secrets
            .first()
            .and_then(|s| std::str::from_utf8(s).ok())
            .unwrap_or_default()
    }

    /// How many secrets the set holds.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Always false: a set holds at least one secret.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

/// Whether two byte strings are equal, in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The token of an `Authorization: Bearer <token>` header value; `None` for anything else.
/// The scheme is case-insensitive, as RFC 9110 says.
pub fn bearer(authorization: Option<&http::HeaderValue>) -> Option<&str> {
    let value = authorization?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A [`CredentialSet`] read from a file and re-read when the file changes.
#[derive(Clone)]
pub struct WatchedCredentials {
    current: Arc<ArcSwap<CredentialSet>>,
    path: Option<PathBuf>,
}

impl fmt::Debug for WatchedCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchedCredentials")
            .field("path", &self.path)
            .field("secrets", &self.current.load().len())
            .finish()
    }
}

impl WatchedCredentials {
    /// Reads `path` once; call [`WatchedCredentials::watch`] to follow its changes.
    ///
    /// # Errors
    ///
    /// As [`CredentialSet::from_file`]: a process must not start without its secret.
    pub fn open(path: &Path) -> Result<WatchedCredentials, CredentialError> {
        let set = CredentialSet::from_file(path)?;
        Ok(WatchedCredentials {
            current: Arc::new(ArcSwap::from_pointee(set)),
            path: Some(path.to_owned()),
        })
    }

    /// A fixed set that never changes (tests, a secret given on the command line).
    pub fn fixed(set: CredentialSet) -> WatchedCredentials {
        WatchedCredentials {
            current: Arc::new(ArcSwap::from_pointee(set)),
            path: None,
        }
    }

    /// The set as it is now.
    pub fn load(&self) -> Arc<CredentialSet> {
        self.current.load_full()
    }

    /// Whether `presented` is one of the current secrets.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.current.load().matches(presented)
    }

    /// Re-reads the file now; `Ok(true)` when the set changed. On error the set is kept.
    ///
    /// # Errors
    ///
    /// As [`CredentialSet::from_file`].
    pub fn reload(&self) -> Result<bool, CredentialError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let fresh = CredentialSet::from_file(path)?;
        if *self.current.load_full() == fresh {
            return Ok(false);
        }
        self.current.store(Arc::new(fresh));
        Ok(true)
    }

    /// Re-reads the file every `interval` until `shutdown`, logging each change and each
    /// failure (the path and the count, never a secret).
    pub async fn watch(self, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.reload() {
                Ok(true) => tracing::info!(
                    path = ?self.path,
                    secrets = self.current.load().len(),
                    "secret file changed; new secrets in use"
                ),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "secret file unusable; keeping the previous secrets")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "wscluster-credentials-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join("secret")
    }

    #[test]
    fn tokens_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn every_member_matches_and_nothing_else() {
        let set = CredentialSet::parse("test", "# keys\n old-key \n\nnew-key\n").expect("set");
        assert_eq!(set.len(), 2);
        assert!(set.matches(b"old-key"));
        assert!(set.matches(b"new-key"));
        assert!(!set.matches(b"new-ke"));
        assert!(!set.matches(b"new-keyy"));
        assert!(!set.matches(b""));
        assert_eq!(set.current(), "old-key");
    }

    #[test]
    fn empty_sets_and_bad_secrets_are_errors_that_do_not_show_the_secret() {
        let err = CredentialSet::parse("f", "# nothing\n\n").expect_err("empty");
        assert_eq!(err.to_string(), "f: holds no secret");
        let err = CredentialSet::new("flag", ["ok", "bad\u{7}secret"]).expect_err("control");
        assert_eq!(
            err.to_string(),
            "flag: secret 2 is not a valid secret (holds a control character)"
        );
        assert!(!err.to_string().contains("bad"));
        let long = "x".repeat(MAX_SECRET_LEN + 1);
        assert!(CredentialSet::new("f", [long]).is_err());
        let many: Vec<String> = (0..=MAX_SECRETS).map(|i| format!("k{i}")).collect();
        assert!(matches!(
            CredentialSet::new("f", many),
            Err(CredentialError::TooMany { .. })
        ));
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let set = CredentialSet::new("f", ["hunter2"]).expect("set");
        assert_eq!(format!("{set:?}"), "CredentialSet(1 secrets)");
        let watched = WatchedCredentials::fixed(set);
        assert!(!format!("{watched:?}").contains("hunter2"));
    }

    #[test]
    fn bearer_takes_the_token_of_the_bearer_scheme_only() {
        let value = |s: &str| http::HeaderValue::from_str(s).expect("header");
        assert_eq!(bearer(Some(&value("Bearer abc"))), Some("abc"));
        assert_eq!(bearer(Some(&value("bearer abc"))), Some("abc"));
        assert_eq!(bearer(Some(&value("Basic abc"))), None);
        assert_eq!(bearer(Some(&value("Bearer "))), None);
        assert_eq!(bearer(Some(&value("abc"))), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn a_rewritten_file_is_picked_up_and_a_broken_one_keeps_the_old_set() {
        let path = temp_path("reload");
        std::fs::write(&path, "first\n").expect("write");
        let watched = WatchedCredentials::open(&path).expect("open");
        assert!(watched.matches(b"first"));
        assert!(!watched.reload().expect("unchanged"));

        std::fs::write(&path, "first\nsecond\n").expect("write");
        assert!(watched.reload().expect("changed"));
        assert!(watched.matches(b"first") && watched.matches(b"second"));

        std::fs::write(&path, "\n").expect("write");
        assert!(watched.reload().is_err());
        assert!(watched.matches(b"second"), "the previous set is kept");

        std::fs::write(&path, "second\n").expect("write");
        assert!(watched.reload().expect("changed"));
        assert!(!watched.matches(b"first"), "a removed secret is refused");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[tokio::test]
    async fn the_watch_task_follows_the_file_until_shutdown() {
        let path = temp_path("watch");
        std::fs::write(&path, "a\n").expect("write");
        let watched = WatchedCredentials::open(&path).expect("open");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(
            watched
                .clone()
                .watch(Duration::from_millis(10), shutdown.clone()),
        );
        std::fs::write(&path, "b\n").expect("write");
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            while !watched.matches(b"b") {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(seen.is_ok(), "the new secret was not picked up");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("watch ends on shutdown")
            .expect("no panic");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
