//! One live XMPP stream as the account sees it: stanzas in, stanzas out, whatever the mode.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use xmpp_parsers::jid::FullJid;
use xmpp_parsers::stanza::Stanza;

/// A logged-in stream. Dropping it (or its `outbound` sender) closes the stream; `inbound` ends when the stream
/// does.
pub struct Link {
    /// The JID the stream is bound to (client mode) or the component's domain (component mode).
    pub jid: FullJid,
    /// Stanzas from the server, in order, in the `jabber:client` namespace.
    pub inbound: mpsc::Receiver<Stanza>,
    /// Stanzas to the server.
    pub outbound: mpsc::Sender<Stanza>,
    /// The task that moves bytes.
    pub task: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a stream could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The server refused the credentials (password, component secret): retrying is pointless.
    #[error("credentials refused: {0}")]
    Auth(String),
    /// The configuration cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// Anything else (network, protocol): retry later.
    #[error("{0}")]
    Other(String),
}
