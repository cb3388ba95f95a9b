//! The RabbitMQ reconnect loop (feature `amqp`), shared by the node's bus and the proxy's reset
//! publisher: connect, declare the cluster's durable topic exchange, run a session on the
//! connection, and when it ends wait a [`Backoff`] delay (100 ms doubling to 5 s, full jitter)
//! and start again, until shutdown. After a broker restart the pods of a cluster therefore
//! reconnect spread over the delay instead of in lockstep.
//!
//! `amqps://` URLs connect over TLS (rustls, `ring` provider): the broker's certificate must
//! chain to the platform's roots (rustls-native-certs: the system store, `SSL_CERT_FILE`) or
//! to [`AmqpTarget::ca`] (`--amqp-ca-file`), which is added to them. Each attempt, TLS
//! handshake and AMQP handshake included, is bounded by [`CONNECT_TIMEOUT`], so a broker that
//! accepts TCP and never answers is retried like an unreachable one; a certificate the roots
//! do not vouch for fails the attempt at once, with rustls's reason in the warning.

use std::future::Future;
use std::time::Duration;

use lapin::options::ExchangeDeclareOptions;
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Backoff;
use crate::ca::{self, CaBundle};

/// First reconnect ceiling.
pub const RECONNECT_INITIAL: Duration = Duration::from_millis(100);
/// Largest reconnect ceiling. A session that lasted at least this long was healthy, so the
/// next reconnect starts again from [`RECONNECT_INITIAL`].
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// While RabbitMQ stays unreachable, one failed attempt in this many is logged as a warning
/// (the first, then about once a minute at the largest delay); the rest at debug level.
const FAILURES_PER_WARNING: u32 = 24;
/// Longest one connection attempt may take: TCP, TLS, the AMQP handshake and the exchange
/// declaration. A healthy broker on a busy node answers in well under a second; 10 s leaves
/// room for a slow one and still turns a silent peer into a retry.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to connect.
#[derive(Debug, Clone)]
pub struct AmqpTarget {
    /// `amqp://user:pass@host:port/vhost`, or `amqps://` for TLS.
    pub url: String,
    /// Extra CA certificates trusted for `amqps://` (`--amqp-ca-file`), beside the
    /// platform's roots.
    pub ca: Option<CaBundle>,
    /// The name `rabbitmqctl list_connections name` shows.
    pub connection_name: String,
    /// The cluster's topic exchange, declared durable on every connection.
    pub exchange: String,
}

/// A live connection with the exchange declared.
#[derive(Debug)]
pub struct Link {
    /// The connection, for more channels.
    pub connection: Connection,
    /// A channel on which the exchange was declared.
    pub channel: Channel,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// Stop for good (whoever read the session's output is gone).
    Stop,
    /// The connection was lost or the session failed; reconnect.
    Lost(String),
}

/// What runs on each connection.
pub trait Session {
    /// Uses the connection until it fails or the work is over.
    fn run(&mut self, link: Link) -> impl Future<Output = SessionEnd> + Send;

    /// Called when connecting (or declaring the exchange) failed; for metrics.
    fn connect_failed(&mut self, _error: &lapin::Error) {}
}

/// Keeps a session running on a fresh connection until shutdown or [`SessionEnd::Stop`]; see
/// the module docs.
pub async fn keep_connected(
    target: &AmqpTarget,
    session: &mut impl Session,
    shutdown: &CancellationToken,
) {
    let mut backoff = Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX);
    let mut failures: u32 = 0;
    loop {
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            connected = connect(target) => connected,
        };
        match connected {
            Ok(link) => {
                info!(exchange = %target.exchange, "rabbitmq connected");
                failures = 0;
                let started = Instant::now();
                let end = tokio::select! {
                    () = shutdown.cancelled() => return,
                    end = session.run(link) => end,
                };
                match end {
                    SessionEnd::Stop => return,
                    SessionEnd::Lost(why) => {
                        warn!(error = %why, "rabbitmq connection lost; reconnecting")
                    }
                }
                if started.elapsed() >= RECONNECT_MAX {
                    backoff.reset();
                }
            }
            Err(e) => {
                session.connect_failed(&e);
                failures += 1;
                if failures % FAILURES_PER_WARNING == 1 {
                    warn!(error = %e, failures, "rabbitmq unreachable; retrying");
                } else {
                    debug!(error = %e, failures, "rabbitmq unreachable; retrying");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Connects and declares the exchange (durable topic), within [`CONNECT_TIMEOUT`].
async fn connect(target: &AmqpTarget) -> Result<Link, lapin::Error> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_unbounded(target))
        .await
        .map_err(|_| {
            lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no AMQP handshake within {CONNECT_TIMEOUT:?}"),
            ))
        })?
}

async fn connect_unbounded(target: &AmqpTarget) -> Result<Link, lapin::Error> {
    let props =
        ConnectionProperties::default().with_connection_name(target.connection_name.clone().into());
    ca::install_crypto_provider();
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: target.ca.as_ref().map(|ca| ca.pem().to_owned()),
    };
    let runtime = lapin::runtime::default_runtime()?;
    let connection = Connection::connect_with_config(&target.url, props, tls, runtime).await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            target.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(Link {
        connection,
        channel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts connect failures; never gets a connection.
    struct Unreachable {
        /// Connect failures seen.
        failures: u32,
        /// Cancelled after the third failure.
        stop: CancellationToken,
    }

    impl Session for Unreachable {
        async fn run(&mut self, _link: Link) -> SessionEnd {
            SessionEnd::Stop
        }

        fn connect_failed(&mut self, _error: &lapin::Error) {
            self.failures += 1;
            if self.failures == 3 {
                self.stop.cancel();
            }
        }
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_retried_until_shutdown() {
        // A port with nothing listening: bound, noted, closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let target = AmqpTarget {
            url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            ca: None,
            connection_name: "test".into(),
            exchange: "wscluster.test.retry".into(),
        };
        let stop = CancellationToken::new();
        let mut session = Unreachable {
            failures: 0,
            stop: stop.clone(),
        };
        tokio::time::timeout(
            Duration::from_secs(20),
            keep_connected(&target, &mut session, &stop),
        )
        .await
        .expect("returns at shutdown");
        assert_eq!(session.failures, 3);
    }
}
