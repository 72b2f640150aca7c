//! # bridge-testkit
//!
//! The connector conformance kit, and [`loopback`], an in-memory connector for tests of the core. A dev-dependency
//! of connector crates; never part of the daemon.
//!
//! A connector crate runs the kit from its own tests against its **real** server by implementing [`Harness`]:
//! start the server and the account, create a test user, make that user act natively, and report what that user
//! sees. The kit wires the account into a real router and store, links its room into a portal together with an
//! in-memory loopback leg (the "other side"), and checks:
//!
//! | check | what must hold |
//! |---|---|
//! | `health` | the account reports `Connecting` (or `BackingOff`) and then `Connected` |
//! | `inbound` | a message from the test user reaches the other side once, attributed to that user |
//! | `outbound` | a message from the other side reaches the test user once |
//! | `ordering` | 10 messages each way arrive in order |
//! | `echo` | the bridge's own deliveries never come back as inbound events |
//! | `dedup` | an event the network delivers twice reaches the other side once (skipped where the network never redelivers) |
//! | `replies`, `edits`, `deletes`, `reactions` | outbound, per the declared [`Grade`]: `full` arrives as that feature, `degraded` as the harness's documented fallback text, `notice` as a notice message, `unsupported` is refused and the sender is told; inbound, `full` features round-trip |
//! | `hostile` | text with CR/LF, protocol keywords and HTML arrives as text only; the connection survives |
//! | `reconnect` | after the server drops the connection, the account reconnects by itself and messages flow both ways |
//!
//! [`run`] returns a [`Report`]; [`Report::assert_passed`] panics with every failure spelled out.

mod checks;
pub mod loopback;
mod report;

pub use report::{CheckResult, Report};

use async_trait::async_trait;
use bridge_api::capability::Feature;
use bridge_api::connector::{Account, AccountContext};
use bridge_api::event::OutboundEvent;
use std::sync::Arc;
use std::time::Duration;

/// A user on the real server, created by the harness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestUser {
    /// The name other users see (nick, display name).
    pub name: String,
    /// The id the connector reports for this user in [`bridge_api::LegacyUser::native_id`].
    pub native_id: String,
}

/// Something a test user does natively on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NativeAction {
    /// Post a message.
    Message {
        /// The text.
        text: String,
    },
    /// Reply to a message, named by its native id as the user sees it.
    Reply {
        /// Native id of the parent.
        to: String,
        /// The text.
        text: String,
    },
    /// Edit one of the user's own messages.
    Edit {
        /// Native id of the message.
        target: String,
        /// The new text.
        text: String,
    },
    /// Delete one of the user's own messages.
    Delete {
        /// Native id of the message.
        target: String,
    },
    /// React to a message.
    React {
        /// Native id of the message.
        target: String,
        /// The reaction.
        key: String,
    },
}

/// What a test user saw, in network-neutral terms. The harness translates its network's events into these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// A message (or notice), with the sender as the network shows it.
    Message {
        /// Who sent it (nick / display name / user id as shown).
        from: String,
        /// The text as shown.
        text: String,
        /// Its native id, if the network has ids.
        native_id: Option<String>,
        /// True for notices (IRC NOTICE, m.notice…).
        notice: bool,
    },
    /// A native reply.
    Reply {
        /// Who sent it.
        from: String,
        /// The text.
        text: String,
        /// Native id of the parent.
        to: String,
    },
    /// A native edit.
    Edit {
        /// Who edited.
        from: String,
        /// The new text.
        text: String,
        /// Native id of the edited message.
        target: String,
    },
    /// A native deletion.
    Delete {
        /// Who deleted.
        from: String,
        /// Native id of the deleted message.
        target: String,
    },
    /// A native reaction.
    Reaction {
        /// Who reacted.
        from: String,
        /// The reaction.
        key: String,
        /// Native id of the message reacted to.
        target: String,
    },
}

impl Observed {
    /// The text this observation carries, if any.
    pub fn text(&self) -> Option<&str> {
        match self {
            Observed::Message { text, .. } | Observed::Reply { text, .. } | Observed::Edit { text, .. } => Some(text),
            _ => None,
        }
    }
}

/// What a connector crate implements to run the kit against its real server.
#[async_trait]
pub trait Harness: Send {
    /// The id of the account the harness starts (`network.name`).
    fn account_id(&self) -> bridge_api::AccountId;

    /// Starts the connector's account against the server, feeding `ctx`. The kit joins [`Harness::room`].
    async fn start_account(&mut self, ctx: AccountContext) -> Result<Arc<dyn Account>, String>;

    /// The native name of the room the kit bridges (it exists or is created by joining).
    fn room(&self) -> String;

    /// Creates a user on the server and has it join [`Harness::room`].
    async fn create_user(&mut self, name: &str) -> Result<TestUser, String>;

    /// Makes `user` do `action`; returns the native id the network gave it, if it has ids.
    async fn act(&mut self, user: &TestUser, action: NativeAction) -> Result<Option<String>, String>;

    /// Everything `user` saw in the room since the last call, waiting up to `wait` for at least one new item.
    async fn observe(&mut self, user: &TestUser, wait: Duration) -> Result<Vec<Observed>, String>;

    /// Makes the network deliver the most recent event the bridge account received a second time, as a network
    /// with at-least-once delivery does after a lost acknowledgement (a Matrix appservice transaction retried, an
    /// XMPP stream-management resend). `Ok(false)`: this network never redelivers, and the `dedup` check is skipped
    /// with that reason.
    async fn redeliver_last(&mut self) -> Result<bool, String> {
        Ok(false)
    }

    /// Makes the server drop the bridge account's connection (kill and restart the server, or kick the
    /// connection), so the kit can check reconnection.
    async fn drop_bridge_connection(&mut self) -> Result<(), String>;

    /// For a feature graded `degraded`: a piece of text the test user must see for `event` (the documented
    /// fallback form, e.g. `"alice: "` for a reply rendered as a prefix). `None` checks only that the event's own
    /// text arrives.
    fn degraded_contains(&self, _feature: Feature, _event: &OutboundEvent) -> Option<String> {
        None
    }
}

/// Kit tuning.
#[derive(Debug, Clone)]
pub struct KitOptions {
    /// How long to wait for anything to arrive.
    pub timeout: Duration,
    /// How long to wait for a reconnect.
    pub reconnect_timeout: Duration,
    /// Checks to skip, by name, each with the reason printed in the report (e.g. `("reconnect", "…")`).
    pub skip: Vec<(&'static str, &'static str)>,
}

impl Default for KitOptions {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(20), reconnect_timeout: Duration::from_secs(60), skip: Vec::new() }
    }
}

/// Runs every check against `harness`.
pub async fn run<H: Harness>(harness: &mut H, options: KitOptions) -> Report {
    checks::run(harness, options).await
}
