//! As a hub: notifying our followers of every entry of the rooms we host. One worker per follower drains its
//! [`NotifyQueue`] in order, with backoff while the follower is unreachable.

use super::Federation;
use crate::service::PeerNotify;
use mimi_protocol::NotifyQueue;
use mimi_protocol::notifier::Outcome;
use std::collections::HashMap;
use tokio::sync::mpsc;

impl Federation {
    /// Sends the hub's notifies to followers, forever (spawn it once): one task per follower, each draining its
    /// [`NotifyQueue`] in order, with backoff while the follower is unreachable. Aborting this task stops them
    /// all. Returns at once if another notifier took the provider's queue.
    pub async fn run_notifier(self) {
        let Some(mut rx) = self.provider.take_outbound() else { return };
        let mut workers: HashMap<String, mpsc::UnboundedSender<(String, u64)>> = HashMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        while let Some(PeerNotify { peer, room, seq }) = rx.recv().await {
            if !self.peers.is_peer(&peer) {
                tracing::warn!(peer, room, "a follower of the room is not a configured peer; not notified");
                continue;
            }
            let tx = workers.entry(peer.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tasks.spawn(self.clone().notify_follower(peer, rx));
                tx
            });
            let _ = tx.send((room, seq));
        }
    }

    /// The notifies of one follower.
    async fn notify_follower(self, peer: String, mut rx: mpsc::UnboundedReceiver<(String, u64)>) {
        let mut queue = NotifyQueue::default();
        loop {
            while let Ok((room, seq)) = rx.try_recv() {
                queue.push(&room, seq);
            }
            let Some((room, seq)) = queue.next().map(|(r, s)| (r.to_owned(), s)) else {
                match rx.recv().await {
                    Some((room, seq)) => queue.push(&room, seq),
                    None => return,
                }
                continue;
            };
            let outcome = self.send_notify(&peer, &room, seq).await;
            if outcome != Outcome::Delivered {
                tracing::debug!(peer, room, seq, ?outcome, "notify not delivered");
            }
            if let Some(wait) = queue.on_result(outcome) {
                let until = tokio::time::Instant::now() + wait;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => break,
                        m = rx.recv() => match m {
                            Some((room, seq)) => queue.push(&room, seq),
                            None => return,
                        },
                    }
                }
            }
        }
    }

    async fn send_notify(&self, peer: &str, room: &str, seq: u64) -> Outcome {
        let Some(entry) = self.provider.entry(room, seq).ok().flatten() else {
            tracing::warn!(room, seq, "a log entry to notify is unreadable; skipped");
            return Outcome::Refused;
        };
        match self.peers.notify(peer, room, seq, &entry.fanout).await {
            Ok(()) => Outcome::Delivered,
            Err(crate::PeerError::Status { status, .. }) => Outcome::of_status(status),
            Err(e) if e.surely_refused() => Outcome::Refused,
            Err(_) => Outcome::Unreachable,
        }
    }
}
