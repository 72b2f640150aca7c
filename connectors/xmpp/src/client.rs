//! IO: one client-to-server stream (client mode), logged in and bound, as a [`Link`].
//!
//! Built from tokio-xmpp's parts (`ServerConnector`, `auth`) rather than its `Client`, which reconnects by
//! itself (without jitter, retrying bad passwords forever) and acknowledges XEP-0198 on receipt: here every
//! connection attempt is the account's decision (`account.rs`), a refused login is [`ConnectError::Auth`], and
//! there is no stream management (the MUC archive is the recovery path).
//!
//! Stanzas that fail to parse are logged and dropped; the stream goes on.

use crate::link::{ConnectError, Link};
use futures::{SinkExt, StreamExt};
use std::borrow::Cow;
use tokio::sync::mpsc;
use tokio_xmpp::connect::{DnsConfig, ServerConnector, StartTlsServerConnector, TcpServerConnector};
use tokio_xmpp::parsers::bind::{BindQuery, BindResponse};
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::jid::{FullJid, Jid};
use tokio_xmpp::parsers::ping::Ping;
use tokio_xmpp::parsers::stanza::Stanza;
use tokio_xmpp::xmlstream::{FallibleStreamElement, ReadError, StreamHeader, Timeouts, XmppStream, XmppStreamElement};

/// How the stream is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// STARTTLS, required (the server's certificate is checked against the system roots).
    #[default]
    Starttls,
    /// Plain TCP: only for a server on the same host or a test server.
    InsecureTcp,
}

/// What a client-mode connection needs.
#[derive(Debug, Clone)]
pub struct Login {
    /// `host:port` of the server's client port.
    pub server: String,
    /// The account JID (bare; the resource is chosen here).
    pub jid: Jid,
    /// The account password.
    pub password: String,
    /// TLS or not.
    pub transport: Transport,
    /// The resource to bind.
    pub resource: String,
}

/// Connects, logs in and binds a resource.
pub async fn connect(login: &Login) -> Result<Link, ConnectError> {
    let dns = DnsConfig::addr(&login.server);
    match login.transport {
        Transport::Starttls => connect_with(StartTlsServerConnector::from(dns), login).await,
        Transport::InsecureTcp => connect_with(TcpServerConnector::from(dns), login).await,
    }
}

async fn connect_with<C: ServerConnector>(connector: C, login: &Login) -> Result<Link, ConnectError> {
    let timeouts = Timeouts::tight();
    let other = |what: &str, e: &dyn std::fmt::Display| ConnectError::Other(format!("{what}: {e}"));
    let username =
        login.jid.node().map(|n| n.to_string()).ok_or(ConnectError::Config("the jid has no localpart".into()))?;
    let (pending, binding) = connector
        .connect(&login.jid, tokio_xmpp::parsers::ns::JABBER_CLIENT, timeouts)
        .await
        .map_err(|e| other("connect", &e))?;
    let (features, stream) = pending
        .recv_features::<FallibleStreamElement>()
        .await
        .map_err(|e| other("stream features", &format!("{e:?}")))?;
    let creds = sasl::common::Credentials::default()
        .with_username(username)
        .with_password(login.password.clone())
        .with_channel_binding(binding);
    let stream = match tokio_xmpp::client_login(stream, features.sasl_mechanisms, creds).await {
        Ok(s) => s,
        Err(tokio_xmpp::Error::Auth(e)) => return Err(ConnectError::Auth(e.to_string())),
        Err(e) => return Err(other("login", &e)),
    };
    let pending = stream
        .send_header(StreamHeader { to: Some(Cow::Borrowed(login.jid.domain().as_str())), from: None, id: None })
        .await
        .map_err(|e| other("stream restart", &e))?;
    let (_, mut stream): (_, XmppStream<C::Stream>) =
        pending.recv_features().await.map_err(|e| other("stream features", &format!("{e:?}")))?;
    let bind = Iq::from_set("bind", BindQuery::new(Some(login.resource.clone())));
    stream.send(&XmppStreamElement::Stanza(Stanza::Iq(bind))).await.map_err(|e| other("bind", &e))?;
    let jid = loop {
        match stream.next().await {
            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(Stanza::Iq(Iq::Result {
                id,
                payload: Some(payload),
                ..
            })))))
                if id == "bind" =>
            {
                let bound = BindResponse::try_from(payload).map_err(|e| other("bind", &e))?;
                break FullJid::from(bound);
            }
            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(Stanza::Iq(Iq::Error {
                id, error, ..
            })))))
                if id == "bind" =>
            {
                return Err(ConnectError::Other(format!("bind refused: {error:?}")));
            }
            Some(Err(ReadError::SoftTimeout | ReadError::ParseError(_))) | Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(other("bind", &e)),
            None => return Err(ConnectError::Other("stream closed during bind".into())),
        }
    };
    let (in_tx, in_rx) = mpsc::channel(64);
    let (out_tx, out_rx) = mpsc::channel(64);
    let task = tokio::spawn(pump(stream, in_tx, out_rx, jid.clone()));
    Ok(Link { jid, inbound: in_rx, outbound: out_tx, task })
}

/// Moves stanzas between the stream and the channels until either side ends.
async fn pump<S: tokio_xmpp::connect::AsyncReadAndWrite>(
    mut stream: XmppStream<S>,
    inbound: mpsc::Sender<Stanza>,
    mut outbound: mpsc::Receiver<Stanza>,
    jid: FullJid,
) {
    loop {
        tokio::select! {
            read = stream.next() => match read {
                Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(s)))) => {
                    if inbound.send(s).await.is_err() {
                        break;
                    }
                }
                Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::StreamError(e)))) => {
                    tracing::warn!(%jid, "stream error from the server: {e:?}");
                    break;
                }
                Some(Ok(FallibleStreamElement::Ok(other))) => tracing::debug!(%jid, "ignoring nonza {other:?}"),
                Some(Ok(FallibleStreamElement::Err(e))) => tracing::warn!(%jid, "dropping a stanza that does not parse: {e:?}"),
                Some(Err(ReadError::ParseError(e))) => tracing::warn!(%jid, "dropping unparseable input: {e}"),
                Some(Err(ReadError::SoftTimeout)) => {
                    // Quiet stream: ask the server for an answer before the hard timeout ends the stream.
                    let mut ping = Iq::from_get("keepalive", Ping);
                    if let Iq::Get { to, .. } = &mut ping {
                        *to = Some(Jid::from(jid.domain().to_owned()));
                    }
                    if stream.send(&XmppStreamElement::Stanza(Stanza::Iq(ping))).await.is_err() {
                        break;
                    }
                }
                Some(Err(e)) => {
                    tracing::info!(%jid, "stream ended: {e}");
                    break;
                }
                None => break,
            },
            out = outbound.recv() => match out {
                Some(s) => {
                    if let Err(e) = stream.send(&XmppStreamElement::Stanza(s)).await {
                        tracing::info!(%jid, "write failed: {e}");
                        break;
                    }
                }
                None => {
                    let _ = SinkExt::<&XmppStreamElement>::close(&mut stream).await;
                    break;
                }
            },
        }
    }
}
