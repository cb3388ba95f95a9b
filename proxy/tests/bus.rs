//! Reset events reach the old owner over a real RabbitMQ
//! (`WSCLUSTER_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`).

mod support;

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use support::*;
use wscluster_ring::Ring;
use wscluster_ring::contract::bus::{ResetEvent, exchange_name, reset_routing_key};

fn amqp_url() -> String {
    std::env::var("WSCLUSTER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

#[tokio::test]
async fn a_reset_publishes_the_moved_keys_to_the_old_owner_s_routing_key() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = format!("test-{}/bus", std::process::id());
        let exchange = exchange_name(&cluster);
        let url = amqp_url();
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ at {url} is required for this test: {e}"));
        let channel = conn.create_channel().await.expect("channel");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare exchange");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare queue");
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.as_str().into(),
                reset_routing_key("node-a").as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");

        let a = Backend::start("node-a").await;
        let b = Backend::start("node-b").await;
        let dir = temp_dir("bus");
        let ring_path = dir.join("ring.json");
        write_ring_for(&cluster, &ring_path, 1, vec![a.member()]);
        let proxy = Proxy::spawn_with(
            &dir,
            "resets: {ratePerSecond: 1000, jitterMs: 100}",
            support::Ring::File(&ring_path),
            &cluster,
            &["--amqp-url", &url],
        )
        .await;
        proxy.wait_ring_version(1).await;
        let mut conns = Vec::new();
        for i in 0..20 {
            let (ws, _) = connect(&proxy.ws_url(&format!("/connect/user-{i}"))).await;
            conns.push((format!("user-{i}"), ws));
        }
        let v2 = write_ring_for(&cluster, &ring_path, 2, vec![a.member(), b.member()]);
        let v2 = Ring::build(v2).expect("ring");
        let moved: HashSet<String> = conns
            .iter()
            .filter(|(k, _)| v2.owner(k).expect("owner").id == "node-b")
            .map(|(k, _)| k.clone())
            .collect();
        assert!(!moved.is_empty());
        let mut published = HashSet::new();
        while published.len() < moved.len() {
            let delivery = tokio::time::timeout(Duration::from_secs(15), consumer.next())
                .await
                .expect("reset event in time")
                .expect("consumer open")
                .expect("delivery");
            let event: ResetEvent = serde_json::from_slice(&delivery.data).expect("event json");
            assert_eq!(event.member, "node-a");
            assert_eq!(event.ring_version, 2);
            assert!(event.retry_after_ms <= 100);
            published.extend(event.keys);
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
        }
        assert_eq!(published, moved);
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .expect("delete exchange");
    })
    .await
    .expect("test finished in time");
}
