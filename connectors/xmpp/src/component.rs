//! IO: one XEP-0114 component stream (component mode), handshaken, as a [`Link`].
//!
//! Our own small stream, not tokio-xmpp's `Component` (which needs the `component` feature and rejects Prosody
//! 0.12's stream header, which has no `version`): TCP, rxml raw events cut into stanzas by [`crate::framing`]
//! (bounded size and depth; a hostile stanza is dropped, the stream goes on), the namespace rewritten to
//! `jabber:client` for the typed parsers and back for the wire. A refused secret is [`ConnectError::Auth`].

use crate::framing::{self, Frame, Framer};
use crate::link::{ConnectError, Link};
use minidom::Element;
use rxml::{AsyncRawReader, RawParser};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use xmpp_parsers::component::Handshake;
use xmpp_parsers::jid::FullJid;
use xmpp_parsers::stanza::Stanza;

/// What a component connection needs.
#[derive(Debug, Clone)]
pub struct ComponentLogin {
    /// `host:port` of the server's component port.
    pub server: String,
    /// The component's domain (`bridge.example.org`).
    pub domain: String,
    /// The shared secret.
    pub secret: String,
}

type Reader = AsyncRawReader<BufReader<OwnedReadHalf>>;

async fn next_frame(reader: &mut Reader, framer: &mut Framer) -> Result<Frame, String> {
    loop {
        match reader.read().await {
            Ok(Some(ev)) => match framer.push(ev) {
                Frame::None => continue,
                f => return Ok(f),
            },
            Ok(None) => return Ok(Frame::End),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Connects and handshakes.
pub async fn connect(login: &ComponentLogin) -> Result<Link, ConnectError> {
    let jid = FullJid::new(&format!("{}/bridge", login.domain))
        .map_err(|e| ConnectError::Config(format!("domain {:?}: {e}", login.domain)))?;
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&login.server))
        .await
        .map_err(|_| ConnectError::Other(format!("connect to {}: timed out", login.server)))?
        .map_err(|e| ConnectError::Other(format!("connect to {}: {e}", login.server)))?;
    let (r, mut w) = tcp.into_split();
    let options = rxml::Options { max_token_length: framing::MAX_TOKEN, ..rxml::Options::default() };
    let mut reader: Reader =
        AsyncRawReader::wrap(BufReader::new(r), <RawParser as rxml::WithOptions>::with_options(options));
    let mut framer = Framer::new();
    // The domain is a valid JID domain (checked above): no quote or markup can be in it.
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{}'>",
        jid.domain()
    );
    let io = |e: std::io::Error| ConnectError::Other(format!("component stream: {e}"));
    w.write_all(header.as_bytes()).await.map_err(io)?;
    let handshake = async {
        let id = loop {
            match next_frame(&mut reader, &mut framer).await.map_err(ConnectError::Other)? {
                Frame::Header(h) => break h.get("id").cloned().ok_or(ConnectError::Other("no stream id".into()))?,
                Frame::End => return Err(ConnectError::Other("stream closed before its header".into())),
                _ => continue,
            }
        };
        let hs = Element::from(Handshake::from_stream_id_and_password(id, &login.secret));
        w.write_all(String::from(&hs).as_bytes()).await.map_err(io)?;
        loop {
            match next_frame(&mut reader, &mut framer).await.map_err(ConnectError::Other)? {
                Frame::Element(e) if e.is("handshake", crate::ns::COMPONENT) => return Ok(()),
                Frame::Element(e) if e.name() == "error" => {
                    let condition = e.children().next().map(|c| c.name().to_owned()).unwrap_or_default();
                    return Err(if condition == "not-authorized" {
                        ConnectError::Auth("the server refused the component secret (not-authorized)".into())
                    } else {
                        ConnectError::Other(format!("stream error during handshake: {condition}"))
                    });
                }
                Frame::End => return Err(ConnectError::Other("stream closed during the handshake".into())),
                _ => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), handshake)
        .await
        .map_err(|_| ConnectError::Other("handshake timed out".into()))??;
    let (in_tx, in_rx) = mpsc::channel(64);
    let (out_tx, out_rx) = mpsc::channel(64);
    let task = tokio::spawn(pump(reader, framer, w, in_tx, out_rx, login.domain.clone()));
    Ok(Link { jid, inbound: in_rx, outbound: out_tx, task })
}

async fn pump(
    mut reader: Reader,
    mut framer: Framer,
    mut w: OwnedWriteHalf,
    inbound: mpsc::Sender<Stanza>,
    mut outbound: mpsc::Receiver<Stanza>,
    domain: String,
) {
    loop {
        tokio::select! {
            frame = next_frame(&mut reader, &mut framer) => match frame {
                Ok(Frame::Element(e)) => match Stanza::try_from(framing::to_client_ns(&e)) {
                    Ok(s) => {
                        if inbound.send(s).await.is_err() {
                            break;
                        }
                    }
                    Err(err) if e.name() == "error" => {
                        tracing::warn!(%domain, "stream error from the server: {}", String::from(&e));
                        let _ = err;
                        break;
                    }
                    Err(err) => tracing::warn!(%domain, "dropping a stanza that does not parse: {err}"),
                },
                Ok(Frame::Dropped(why)) => tracing::warn!(%domain, why, "dropping a hostile or malformed stanza"),
                Ok(Frame::End) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::info!(%domain, "component stream ended: {e}");
                    break;
                }
            },
            out = outbound.recv() => match out {
                Some(s) => {
                    let el = framing::to_component_ns(&Element::from(s));
                    if let Err(e) = w.write_all(String::from(&el).as_bytes()).await {
                        tracing::info!(%domain, "write failed: {e}");
                        break;
                    }
                }
                None => {
                    let _ = w.write_all(b"</stream:stream>").await;
                    break;
                }
            },
        }
    }
}
