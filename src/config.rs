//! TEMPORARY stub (replaced by the ops branch).
use std::net::SocketAddr;
use std::time::Duration;
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub shards: usize,
    pub max_connections: usize,
    pub max_handshakes_per_shard: usize,
    pub handshake_timeout: Duration,
    pub listen_backlog: u32,
    pub send_queue_bytes: usize,
    pub shard_send_budget_bytes: usize,
    pub read_buffer_bytes: usize,
    pub drain_window: Duration,
    pub drain_timeout: Duration,
    pub echo: bool,
    pub limits: crate::limits::Limits,
    pub paths: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub subprotocols: Vec<String>,
    pub tick: Duration,
}
impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".parse().unwrap(),
            admin_listen: "127.0.0.1:9090".parse().unwrap(),
            shards: 2,
            max_connections: 1_000_000,
            max_handshakes_per_shard: 1024,
            handshake_timeout: Duration::from_secs(10),
            listen_backlog: 65535,
            send_queue_bytes: 256 * 1024,
            shard_send_budget_bytes: 1 << 30,
            read_buffer_bytes: 64 * 1024,
            drain_window: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            echo: false,
            limits: Default::default(),
            paths: vec!["/ws".into()],
            allowed_origins: vec![],
            subprotocols: vec![],
            tick: Duration::from_millis(100),
        }
    }
}
