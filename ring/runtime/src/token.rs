//! A bearer token from a pair of flags, `--<name>-token <value>` or `--<name>-token-file
//! <path>`, by one rule for every binary:
//!
//! * the two flags conflict (giving both is an error, not a precedence);
//! * surrounding whitespace is trimmed (a file usually ends with a newline);
//! * an empty token is an error that names the flag it came from.

use std::path::{Path, PathBuf};

use crate::flags::{self, Flag};

/// The two flags a token may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenFlags {
    /// The flag that holds the token itself.
    pub value: Flag,
    /// The flag that names a file holding it.
    pub file: Flag,
}

/// The ring stream's token: `--ring-token` or `--ring-token-file`.
pub const RING_TOKEN: TokenFlags = TokenFlags {
    value: flags::RING_TOKEN,
    file: flags::RING_TOKEN_FILE,
};

/// Why no token could be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Both flags were given.
    #[error("--{value} and --{file} both give the token; give one")]
    Conflict {
        /// The value flag's name.
        value: &'static str,
        /// The file flag's name.
        file: &'static str,
    },
    /// Neither flag was given, but something needs the token.
    #[error("--{needed_by} needs --{file} or --{value}")]
    Missing {
        /// The flag whose use requires the token.
        needed_by: &'static str,
        /// The file flag's name.
        file: &'static str,
        /// The value flag's name.
        value: &'static str,
    },
    /// The file could not be read.
    #[error("--{flag} {}: cannot read it", path.display())]
    Read {
        /// The file flag's name.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The value flag holds only whitespace.
    #[error("--{flag} is empty")]
    EmptyValue {
        /// The value flag's name.
        flag: &'static str,
    },
    /// The file holds only whitespace.
    #[error("--{flag} {}: the file is empty", path.display())]
    EmptyFile {
        /// The file flag's name.
        flag: &'static str,
        /// The file.
        path: PathBuf,
    },
}

impl TokenFlags {
    /// The token from whichever flag was given; `None` if neither was.
    ///
    /// # Errors
    ///
    /// Both were given, the file cannot be read, or the token is empty.
    pub fn read(
        &self,
        value: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Option<String>, TokenError> {
        match (value, file) {
            (Some(_), Some(_)) => Err(TokenError::Conflict {
                value: self.value.long,
                file: self.file.long,
            }),
            (Some(value), None) => match value.trim() {
                "" => Err(TokenError::EmptyValue {
                    flag: self.value.long,
                }),
                token => Ok(Some(token.to_owned())),
            },
            (None, Some(path)) => self.read_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Like [`TokenFlags::read`], but a token is required because `needed_by` was given.
    ///
    /// # Errors
    ///
    /// As [`TokenFlags::read`], and [`TokenError::Missing`] when neither flag was given.
    pub fn require(
        &self,
        value: Option<&str>,
        file: Option<&Path>,
        needed_by: Flag,
    ) -> Result<String, TokenError> {
        self.read(value, file)?.ok_or(TokenError::Missing {
            needed_by: needed_by.long,
            file: self.file.long,
            value: self.value.long,
        })
    }

    fn read_file(&self, path: &Path) -> Result<String, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            flag: self.file.long,
            path: path.to_owned(),
            source,
        })?;
        match text.trim() {
            "" => Err(TokenError::EmptyFile {
                flag: self.file.long,
                path: path.to_owned(),
            }),
            token => Ok(token.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in a fresh temporary directory, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn with(name: &str, text: &str) -> TempFile {
            let dir = std::env::temp_dir().join(format!(
                "wscluster-runtime-token-{}-{name}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path = dir.join("token");
            std::fs::write(&path, text).expect("write");
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    #[test]
    fn a_value_or_a_file_gives_the_trimmed_token() {
        assert_eq!(
            RING_TOKEN.read(Some(" s3cret\n"), None).expect("value"),
            Some("s3cret".into())
        );
        let file = TempFile::with("ok", "s3cret\n");
        assert_eq!(
            RING_TOKEN.read(None, Some(&file.0)).expect("file"),
            Some("s3cret".into())
        );
        assert_eq!(RING_TOKEN.read(None, None).expect("neither"), None);
    }

    #[test]
    fn both_flags_conflict() {
        let file = TempFile::with("both", "a");
        let err = RING_TOKEN
            .read(Some("b"), Some(&file.0))
            .expect_err("conflict");
        assert_eq!(
            err.to_string(),
            "--ring-token and --ring-token-file both give the token; give one"
        );
    }

    #[test]
    fn empty_and_unreadable_tokens_name_their_flag() {
        let err = RING_TOKEN.read(Some("  "), None).expect_err("empty");
        assert_eq!(err.to_string(), "--ring-token is empty");
        let file = TempFile::with("empty", "\n");
        let err = RING_TOKEN.read(None, Some(&file.0)).expect_err("empty");
        assert!(
            err.to_string().starts_with("--ring-token-file ") && err.to_string().ends_with("empty"),
            "{err}"
        );
        let missing = Path::new("/nonexistent/wscluster/token");
        let err = RING_TOKEN.read(None, Some(missing)).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "--ring-token-file /nonexistent/wscluster/token: cannot read it"
        );
    }

    #[test]
    fn a_required_token_says_which_flag_needs_it() {
        let err = RING_TOKEN
            .require(None, None, flags::RING_URL)
            .expect_err("missing");
        assert_eq!(
            err.to_string(),
            "--ring-url needs --ring-token-file or --ring-token"
        );
        assert_eq!(
            RING_TOKEN
                .require(Some("t"), None, flags::RING_URL)
                .expect("given"),
            "t"
        );
    }
}
