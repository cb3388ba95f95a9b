//! The one way a process tells its parent where it listens: the first line on stdout,
//!
//! ```text
//! listening on 127.0.0.1:8080 admin=127.0.0.1:9090
//! ```
//!
//! the main address, then optionally named extra listeners (`name=address`, names of lowercase
//! letters, digits and `-`). Processes that bind port 0 print it once bound; tests, local mode
//! and scripts read it with [`Announcement::from_str`] (or [`read_announcement`]). In shell,
//! `sed -n 's/^listening on \([^ ]*\).*/\1/p'` takes the main address and
//! `grep -o 'admin=[^ ]*'` a named one. Log lines never go to stdout ([`crate::log`]).

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::str::FromStr;

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};

/// What starts the line.
pub const PREFIX: &str = "listening on ";
/// Longest line [`read_announcement`] accepts, in bytes: the main address and a handful of
/// named ones fit many times over.
pub const MAX_LINE_BYTES: usize = 1024;

/// The addresses a process listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The main listener (node and proxy: clients; operator run: the ring stream; local: the
    /// control API).
    pub addr: SocketAddr,
    /// Other listeners by name (`admin`), in the order printed.
    pub extra: Vec<(String, SocketAddr)>,
}

/// A line that is not an announcement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    /// The line does not start with `listening on `.
    #[error("expected `listening on <address>` as the first line, got {0:?}")]
    NotAnnouncement(String),
    /// An address does not parse.
    #[error("{0:?} is not a socket address")]
    BadAddress(String),
    /// An extra listener is not `name=address` with a valid name.
    #[error("{0:?} is not name=address")]
    BadExtra(String),
    /// A name appears twice.
    #[error("listener {0:?} is announced twice")]
    Duplicate(String),
    /// The stream ended (or failed) before a whole line arrived.
    #[error("the process printed no address line")]
    NoLine,
    /// The line is longer than [`MAX_LINE_BYTES`].
    #[error("the first line is longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
}

impl Announcement {
    /// An announcement of the main listener only.
    pub fn new(addr: SocketAddr) -> Announcement {
        Announcement {
            addr,
            extra: Vec::new(),
        }
    }

    /// Adds a named listener.
    ///
    /// # Panics
    ///
    /// If `name` is not lowercase letters, digits and `-`, or is already present: names are
    /// constants in the code, so this is a programming error.
    #[must_use]
    pub fn with(mut self, name: &str, addr: SocketAddr) -> Announcement {
        assert!(valid_name(name), "invalid listener name {name:?}");
        assert!(self.get(name).is_none(), "listener {name:?} given twice");
        self.extra.push((name.to_owned(), addr));
        self
    }

    /// The address of a named listener.
    pub fn get(&self, name: &str) -> Option<SocketAddr> {
        self.extra.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Writes the line to stdout and flushes it, so a parent reading the pipe sees it at once.
    ///
    /// # Errors
    ///
    /// stdout is closed or full.
    pub fn print(&self) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{self}")?;
        out.flush()
    }
}

impl fmt::Display for Announcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.addr)?;
        for (name, addr) in &self.extra {
            write!(f, " {name}={addr}")?;
        }
        Ok(())
    }
}

impl FromStr for Announcement {
    type Err = AnnounceError;

    /// Parses one line; a trailing newline (or other trailing whitespace) is allowed.
    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let rest = line
            .trim_end()
            .strip_prefix(PREFIX)
            .ok_or_else(|| AnnounceError::NotAnnouncement(line.trim_end().to_owned()))?;
        let mut words = rest.split(' ');
        let addr = parse_addr(words.next().unwrap_or_default())?;
        let mut announcement = Announcement::new(addr);
        for word in words {
            let (name, addr) = word
                .split_once('=')
                .filter(|(name, _)| valid_name(name))
                .ok_or_else(|| AnnounceError::BadExtra(word.to_owned()))?;
            if announcement.get(name).is_some() {
                return Err(AnnounceError::Duplicate(name.to_owned()));
            }
            announcement
                .extra
                .push((name.to_owned(), parse_addr(addr)?));
        }
        Ok(announcement)
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, AnnounceError> {
    text.parse()
        .map_err(|_| AnnounceError::BadAddress(text.to_owned()))
}

/// 1 to 32 lowercase ASCII letters, digits or `-`, starting with a letter.
fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Reads the first line of a child's stdout and parses it. Bound the time with
/// `tokio::time::timeout`; keep reading (or dropping) the rest so the child never blocks.
///
/// # Errors
///
/// The stream ended first, the line is too long, or it is not an announcement.
pub async fn read_announcement<R>(reader: &mut R) -> Result<Announcement, AnnounceError>
where
    R: AsyncBufRead + Unpin,
{
    let mut line = Vec::new();
    let mut limited = tokio::io::AsyncReadExt::take(reader, MAX_LINE_BYTES as u64 + 1);
    match limited.read_until(b'\n', &mut line).await {
        Ok(0) | Err(_) => return Err(AnnounceError::NoLine),
        Ok(_) => {}
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > MAX_LINE_BYTES {
            AnnounceError::TooLong
        } else {
            AnnounceError::NoLine
        });
    }
    String::from_utf8_lossy(&line).parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn an_announcement_round_trips_through_its_line() {
        let plain = Announcement::new(addr("127.0.0.1:8080"));
        assert_eq!(plain.to_string(), "listening on 127.0.0.1:8080");
        let full = Announcement::new(addr("127.0.0.1:8080"))
            .with("admin", addr("127.0.0.1:9090"))
            .with("ring-2", addr("[::1]:7400"));
        let line = full.to_string();
        assert_eq!(
            line,
            "listening on 127.0.0.1:8080 admin=127.0.0.1:9090 ring-2=[::1]:7400"
        );
        for announcement in [plain, full] {
            let text = format!("{announcement}\n");
            assert_eq!(text.parse::<Announcement>(), Ok(announcement));
        }
    }

    #[test]
    fn named_listeners_are_found_by_name() {
        let a: Announcement = "listening on 127.0.0.1:1 admin=127.0.0.1:2"
            .parse()
            .expect("valid");
        assert_eq!(a.addr, addr("127.0.0.1:1"));
        assert_eq!(a.get("admin"), Some(addr("127.0.0.1:2")));
        assert_eq!(a.get("ring"), None);
    }

    #[test]
    fn other_lines_are_refused_with_a_reason() {
        let cases = [
            ("2024-01-01 INFO bound", "NotAnnouncement"),
            ("listening on ", "NotAnnouncement"),
            ("listening on  127.0.0.1:1", "BadAddress"),
            ("listening on localhost:80", "BadAddress"),
            ("listening on 127.0.0.1:1  admin=127.0.0.1:2", "BadExtra"),
            ("listening on 127.0.0.1:1 Admin=127.0.0.1:2", "BadExtra"),
            ("listening on 127.0.0.1:1 admin", "BadExtra"),
            ("listening on 127.0.0.1:1 admin=x", "BadAddress"),
            (
                "listening on 127.0.0.1:1 admin=127.0.0.1:2 admin=127.0.0.1:3",
                "Duplicate",
            ),
        ];
        for (line, kind) in cases {
            let err = line.parse::<Announcement>().expect_err(line);
            assert!(format!("{err:?}").starts_with(kind), "{line}: {err:?}");
        }
    }

    #[test]
    #[should_panic(expected = "invalid listener name")]
    fn a_bad_name_in_code_is_a_bug() {
        let _ = Announcement::new(addr("127.0.0.1:1")).with("Admin", addr("127.0.0.1:2"));
    }

    #[tokio::test]
    async fn the_first_line_of_a_stream_is_read_and_parsed() {
        let mut ok = &b"listening on 127.0.0.1:5 admin=127.0.0.1:6\nlater output\n"[..];
        let a = read_announcement(&mut ok).await.expect("parsed");
        assert_eq!(a.get("admin"), Some(addr("127.0.0.1:6")));
        assert_eq!(ok, b"later output\n", "only the first line is consumed");
        let mut empty = &b""[..];
        assert_eq!(
            read_announcement(&mut empty).await,
            Err(AnnounceError::NoLine)
        );
        let mut cut = &b"listening on 127.0.0.1:5"[..];
        assert_eq!(
            read_announcement(&mut cut).await,
            Err(AnnounceError::NoLine)
        );
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        assert_eq!(
            read_announcement(&mut &long[..]).await,
            Err(AnnounceError::TooLong)
        );
    }

    /// The shell scripts parse the line with `wait_announced` in `scripts/bench-lib.sh`; feed it
    /// what [`Announcement`] prints.
    #[test]
    fn the_shell_helper_reads_what_an_announcement_prints() {
        let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/bench-lib.sh");
        let dir = std::env::temp_dir().join(format!("wscluster-announce-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let out = dir.join("stdout");
        let announcement =
            Announcement::new(addr("127.0.0.1:8080")).with("admin", addr("[::1]:9090"));
        std::fs::write(&out, format!("{announcement}\nlater output\n")).expect("write");
        let read = |name: &str| {
            let script = format!(
                "log() {{ echo \"$*\" >&2; }}; source '{lib}'; trap - EXIT; wait_announced '{}' 5 {name}",
                out.display()
            );
            let result = std::process::Command::new("bash")
                .args(["-c", &script])
                .output()
                .expect("run bash");
            (
                result.status.success(),
                String::from_utf8_lossy(&result.stdout).trim().to_owned(),
            )
        };
        assert_eq!(read(""), (true, "127.0.0.1:8080".to_owned()));
        assert_eq!(read("admin"), (true, "[::1]:9090".to_owned()));
        assert!(!read("ring").0, "an unknown name fails");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
