//! The real Redis and RabbitMQ the end-to-end tests use: fail clearly when one is missing,
//! and clean up the keys a run left behind.

use std::time::Duration;

use anyhow::Context;
use redis::AsyncCommands;

/// How long a reachability check or a cleanup may take.
pub const SERVICE_TIMEOUT_SECONDS: u64 = 10;
/// Keys deleted per `DEL`.
const DELETE_BATCH_KEYS: usize = 500;

/// The `host:port` of a service URL (`scheme://[user:pass@]host:port[/…]`).
pub fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// Fails unless a TCP connection to the URL's host:port succeeds: tests must not skip silently.
pub async fn require_service(url: &str, what: &str) -> anyhow::Result<()> {
    let address = host_port(url);
    let connect = tokio::net::TcpStream::connect(address);
    tokio::time::timeout(Duration::from_secs(SERVICE_TIMEOUT_SECONDS), connect)
        .await
        .map_err(|_| anyhow::anyhow!("no connection within {SERVICE_TIMEOUT_SECONDS} s"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| {
            format!("{what} is not reachable at {address} ({url}); start it or set the WSCLUSTER_TEST_* URL")
        })?;
    Ok(())
}

/// Deletes every Redis key starting with `prefix` (`SCAN MATCH`, then `DEL` in batches);
/// answers how many it deleted. The prefix may hold only characters without glob meaning.
pub async fn delete_redis_keys(url: &str, prefix: &str) -> anyhow::Result<u64> {
    anyhow::ensure!(
        !prefix.is_empty()
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "unsafe key prefix {prefix:?}"
    );
    let cleanup = async {
        let client = redis::Client::open(url)?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let keys: Vec<String> = {
            let mut scan = connection
                .scan_match::<_, String>(format!("{prefix}*"))
                .await?;
            let mut keys = Vec::new();
            while let Some(key) = scan.next_item().await {
                keys.push(key?);
            }
            keys
        };
        let mut deleted = 0;
        for batch in keys.chunks(DELETE_BATCH_KEYS) {
            deleted += connection.del::<_, u64>(batch).await?;
        }
        anyhow::Ok(deleted)
    };
    tokio::time::timeout(Duration::from_secs(SERVICE_TIMEOUT_SECONDS), cleanup)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {SERVICE_TIMEOUT_SECONDS} s"))
        .and_then(|r| r)
        .with_context(|| format!("deleting the Redis keys {prefix}* at {}", host_port(url)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{redis_url, unique};

    #[test]
    fn service_urls_give_their_host_and_port() {
        assert_eq!(
            host_port("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "127.0.0.1:5672"
        );
        assert_eq!(host_port("redis://127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(host_port("127.0.0.1:1"), "127.0.0.1:1");
    }

    #[tokio::test]
    async fn cleanup_deletes_exactly_the_prefixed_keys() {
        let url = redis_url();
        require_service(&url, "Redis")
            .await
            .expect("Redis runs here");
        let prefix = unique("wscluster-tests-cleanup");
        let mut redis = redis::Client::open(url.as_str())
            .expect("URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connects");
        for i in 0..3 {
            let () = redis.set(format!("{prefix}-{i}"), i).await.expect("set");
        }
        let () = redis.set(format!("not-{prefix}"), 1).await.expect("set");
        assert_eq!(delete_redis_keys(&url, &prefix).await.expect("deletes"), 3);
        let left: u64 = redis.exists(format!("not-{prefix}")).await.expect("exists");
        assert_eq!(left, 1, "a key that only contains the prefix stays");
        let () = redis.del(format!("not-{prefix}")).await.expect("del");
        assert!(
            delete_redis_keys(&url, "a*").await.is_err(),
            "glob characters are refused"
        );
    }
}
