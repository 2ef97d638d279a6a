//! The shard's Redis connection (with `--redis`): the hand-off between messaging's
//! cluster owner (sans-IO, `cluster::owner`) and the connection task
//! (`cluster::conn`), both on this shard's executor.
//!
//! In: the batch of Redis commands a turn produced (taken at the end of every turn, so
//! one turn costs at most one round trip), replies and pub/sub pushes. Out: replies and
//! pushes handed to messaging in the pump task's turns, whose output leaves like any
//! turn's.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use crate::cluster::owner::{ClusterConfig, ClusterOwner};
use crate::cluster::{ConnConfig, Driver, Failed, Redis, Value};

use super::Shard;
use super::ShardState;

/// What came back from Redis, waiting for the pump.
enum Event {
    Replies(u64, Result<Vec<Value>, Failed>),
    Push(Value),
}

/// Replies and pushes queued for the pump task, and its waker.
#[derive(Default)]
pub(crate) struct Events {
    queue: RefCell<VecDeque<Event>>,
    waker: RefCell<Option<Waker>>,
}

impl Events {
    fn push(&self, event: Event) {
        self.queue.borrow_mut().push_back(event);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits until something is queued.
    async fn ready(&self) {
        std::future::poll_fn(|cx| {
            if self.queue.borrow().is_empty() {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }
}

/// The shard's side of its Redis connections (one, or one per Redis Cluster master).
pub(crate) struct ClusterIo {
    redis: Vec<Redis>,
    events: Rc<Events>,
    /// Scratch: each connection's generation, read at the end of every turn.
    generations: Vec<u64>,
}

impl ClusterIo {
    /// The connection handles (metrics, closing), by master.
    pub(crate) fn redis(&self) -> &[Redis] {
        &self.redis
    }
}

impl Shard {
    /// Makes this shard a node of the fleet: a cluster owner for its messaging and a
    /// Redis connection for it. Returns the connection's task (run it on this shard's
    /// executor) and the events the pump task reads.
    pub(crate) fn attach_cluster(&mut self, conn: &ConnConfig, cluster: &ClusterConfig) -> (Vec<Driver>, Rc<Events>) {
        let events = Rc::new(Events::default());
        let mut redis = Vec::new();
        let mut drivers = Vec::new();
        for master in &cluster.topology.masters {
            let (handle, driver) = Redis::new(ConnConfig {
                addrs: vec![*master],
                ..conn.clone()
            });
            let pushes = events.clone();
            handle.set_push_handler(Box::new(move |v| pushes.push(Event::Push(v))));
            redis.push(handle);
            drivers.push(driver);
        }
        if let Some(msg) = self.msg.as_mut() {
            let seed = self.epoch.elapsed().as_nanos() as u64 ^ std::process::id() as u64;
            let seed = seed
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
            msg.attach_cluster(ClusterOwner::new(
                self.id as u16,
                self.cfg.shards,
                &self.cfg.msg,
                cluster,
                seed,
            ));
        }
        self.cluster = Some(ClusterIo {
            generations: Vec::with_capacity(redis.len()),
            redis,
            events: events.clone(),
        });
        (drivers, events)
    }

    /// Hands this turn's Redis commands to the connection (end of every turn). A
    /// refused batch (Redis down, outbox full) fails at once through the pump, so its
    /// requests are answered `unavailable` in the next pump turn.
    pub(super) fn flush_cluster(&mut self) {
        let (Some(io), Some(msg)) = (self.cluster.as_mut(), self.msg.as_mut()) else {
            return;
        };
        // Every turn ends here: the connections' generations go into a kept buffer
        // rather than a new one per turn.
        io.generations.clear();
        io.generations.extend(io.redis.iter().map(Redis::generation));
        for (id, conn, batch) in msg.take_cluster_batches(&io.generations) {
            match io.redis[conn].send(batch) {
                Ok(reply) => {
                    let events = io.events.clone();
                    glommio::spawn_local(async move {
                        let replies = reply.await;
                        events.push(Event::Replies(id, replies));
                    })
                    .detach();
                }
                Err(_) => io.events.push(Event::Replies(id, Err(Failed::NotSent))),
            }
        }
    }

    /// A pump turn: every reply and push queued so far into messaging, then the turn's
    /// output.
    fn on_cluster_events(&mut self) -> ShardState {
        self.now = Instant::now();
        if let Some(io) = self.cluster.as_ref() {
            let events = std::mem::take(&mut *io.events.queue.borrow_mut());
            if let Some(msg) = self.msg.as_mut() {
                for event in events {
                    match event {
                        Event::Replies(id, replies) => msg.handle_cluster_replies(id, replies, self.now),
                        Event::Push(value) => msg.handle_cluster_push(&value, self.now),
                    }
                }
            }
        }
        self.end_turn()
    }

    /// The shard is finishing (drained): what messaging still owes Redis (the
    /// disconnects of the last connections) and the node's leave of the live set go
    /// out now; [`close_cluster`](Self::close_cluster) waits for them to be written.
    pub(super) fn leave_cluster(&mut self) {
        if let Some(msg) = self.msg.as_mut() {
            msg.leave_cluster();
        }
        self.flush_cluster();
    }

    /// Stops the Redis connections' tasks once what was queued is written (at most
    /// `CLOSE_WAIT`): the commands then run in Redis even though nobody reads their
    /// replies.
    pub(crate) async fn close_cluster(shard: &RefCell<Shard>) {
        const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
        let deadline = Instant::now() + CLOSE_WAIT;
        loop {
            let queued = shard.borrow().cluster.as_ref().map_or(0, |io| {
                io.redis
                    .iter()
                    .filter(|r| r.is_up())
                    .map(Redis::queued_commands)
                    .sum::<usize>()
            });
            if queued == 0 || Instant::now() >= deadline {
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
        if let Some(io) = &shard.borrow().cluster {
            for redis in &io.redis {
                redis.close();
            }
        }
    }
}

/// The pump task: a turn of the shard for each batch of Redis events.
pub(crate) async fn pump(shard: Rc<RefCell<Shard>>, events: Rc<Events>) {
    loop {
        events.ready().await;
        if shard.borrow_mut().on_cluster_events() == ShardState::Finished {
            return;
        }
    }
}
