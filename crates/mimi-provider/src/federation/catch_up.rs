//! Copying a followed room's log from its hub: after a gap (a notify ahead of our copy), when the hub says the
//! room moved on, and for every followed room at start. A hub that no longer holds what we miss (410) leaves the
//! copy lost until one of our members joins the room again ([`crate::service::Provider::fetch_gone`]).

use super::Federation;
use mimi_protocol::follower::{CatchUpBackoff, CatchUpStep};

impl Federation {
    /// Fetches the hub's log of `room` after `after` until the local copy is complete. A page that makes no
    /// progress (the hub's log does not hold what the follower waits for, yet) is asked for again after a backoff
    /// ([`CatchUpBackoff`]); after too many such pages the catch-up stops and leaves the gap to the next notify or
    /// resync.
    pub async fn catch_up(&self, room: &str, mut after: u64) {
        let provider = &self.provider;
        let Ok(Some(hub)) = provider.hub_of(room) else { return };
        if !self.peers.is_peer(&hub) {
            tracing::warn!(room, hub, "the hub of a followed room is not a configured peer");
            return;
        }
        let mut pace = CatchUpBackoff::default();
        loop {
            let page = match self.peers.log(&hub, room, after).await {
                Ok(page) => page,
                // The hub's retention removed what we miss: the copy cannot be completed (until a rejoin).
                Err(crate::peer_client::PeerError::Status { status: 410, .. }) => {
                    provider.fetch_gone(room, after);
                    return;
                }
                Err(e) => {
                    tracing::info!(room, error = %e, "hub unreachable; catch-up later");
                    provider.fetch_failed(room);
                    return;
                }
            };
            match provider.accept_entries(room, page.0, true).await {
                Ok(Some(next)) => match pace.on_page(after, next) {
                    CatchUpStep::Now => after = next,
                    CatchUpStep::Wait(wait) => {
                        tracing::debug!(room, after, ?wait, "the hub's log page made no progress; asking again later");
                        tokio::time::sleep(wait).await;
                        after = next;
                    }
                    CatchUpStep::GiveUp => {
                        tracing::warn!(room, after, "the hub's log makes no progress; catch-up at the next notify");
                        provider.fetch_failed(room);
                        return;
                    }
                },
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(room, error = %e, "catch-up failed");
                    provider.fetch_failed(room);
                    return;
                }
            }
        }
    }

    /// [`Federation::catch_up`] in a task of its own.
    pub fn spawn_catch_up(&self, room: &str, after: u64) {
        let (this, room) = (self.clone(), room.to_owned());
        tokio::spawn(async move { this.catch_up(&room, after).await });
    }

    /// Catches `room` up from its hub now (the hub said it moved on), so the client finds the commit it missed.
    pub(crate) async fn catch_up_now(&self, room: &str) {
        // A copy made for a join on its way: the log before the join is not ours to read (its start is set when
        // the join settles).
        if self.provider.is_joining(room) {
            return;
        }
        if let Ok(after) = self.provider.last_seq(room) {
            self.catch_up(room, after).await;
        }
    }

    /// On start: catches up every followed room.
    pub async fn resync_followed(&self) {
        for (room, _) in self.provider.followed() {
            let after = self.provider.last_seq(&room).unwrap_or(0);
            self.catch_up(&room, after).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::peer_client::{HubAnswer, PeerClient, PeerError};
    use crate::service::Provider;
    use crate::tests_support::entry;
    use crate::{Federation, tests_support};
    use async_trait::async_trait;
    use mimi_protocol::wire::{
        FanoutMessage, GroupInfoRequest, GroupInfoResponse, KeyMaterialRequest, KeyMaterialResponse, LogPage,
        SubmitMessageRequest, SubmitMessageResponse, UpdateRequest, UpdateRoomResponse,
    };
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const ROOM: &str = "mimi://a.test/r/x";

    /// A hub whose log is empty (although it notified entry 2), counting the pages asked for.
    struct EmptyLog(Arc<AtomicUsize>);

    fn unused<T>() -> Result<T, PeerError> {
        Err(PeerError::Unclear("not in this test".into()))
    }

    #[async_trait]
    impl PeerClient for EmptyLog {
        fn is_peer(&self, domain: &str) -> bool {
            domain == "a.test"
        }
        async fn submit_message(
            &self,
            _: &str,
            _: &str,
            _: &SubmitMessageRequest,
        ) -> Result<HubAnswer<SubmitMessageResponse>, PeerError> {
            unused()
        }
        async fn update(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: &UpdateRequest,
        ) -> Result<HubAnswer<UpdateRoomResponse>, PeerError> {
            unused()
        }
        async fn group_info(&self, _: &str, _: &str, _: &GroupInfoRequest) -> Result<GroupInfoResponse, PeerError> {
            unused()
        }
        async fn key_material(&self, _: &str, _: &KeyMaterialRequest) -> Result<KeyMaterialResponse, PeerError> {
            unused()
        }
        async fn log(&self, _: &str, _: &str, _: u64) -> Result<LogPage, PeerError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(LogPage(Vec::new()))
        }
        async fn notify(&self, _: &str, _: &str, _: u64, _: &FanoutMessage) -> Result<(), PeerError> {
            unused()
        }
    }

    #[tokio::test]
    async fn a_catch_up_whose_pages_make_no_progress_backs_off_instead_of_spinning() {
        let asked = Arc::new(AtomicUsize::new(0));
        let (_dir, store) = tests_support::store();
        let provider = Provider::open("b.test", store).expect("provider");
        provider.follow(ROOM, "a.test").await.expect("follow");
        let fetch = provider.accept_entries(ROOM, vec![entry(2, 10)], false).await.expect("notify");
        assert_eq!(fetch, Some(0), "a gap");
        let federation = Federation::new(provider, Arc::new(EmptyLog(asked.clone())));

        let task = tokio::spawn(async move { federation.catch_up(ROOM, 0).await });
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
        let n = asked.load(Ordering::SeqCst);
        assert!((2..=4).contains(&n), "200 ms, then 400 ms between pages that make no progress: {n} requests");
        assert!(!task.is_finished(), "still trying");
        task.abort();
    }
}
