//! Helpers the IRC tests share: a plain IRC client as a test user, and a slice of the bridge (router, store, a
//! loopback leg and the IRC account in one portal).
// Each test file uses a part of these.
#![allow(dead_code)]

pub mod fake_ircd;

use bridge_api::{Account, AccountContext, AccountId, Connector, Health, LegId, PortalId};
use bridge_core::repo::{MlsIdentity, PortalRecord};
use bridge_core::room_of_record::LocalRoom;
use bridge_core::router::{RouterConfig, RouterHandle};
use bridge_testkit::loopback::LoopbackNetwork;
use connector_irc::message::Message;
use connector_irc::{Config, IrcConnector};
use mimi_store::{Backend, CommitConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub const CHANNEL: &str = "#kit";
pub const BRIDGE: &str = "bridge";

/// A plain IRC client, as a test user.
pub struct Client {
    pub nick: String,
    pub lines: mpsc::UnboundedReceiver<Message>,
    pub tx: mpsc::UnboundedSender<String>,
}

impl Client {
    /// Registers as `nick` and joins `channel`.
    pub async fn connect(port: u16, nick: &str, channel: &str) -> Result<Self, String> {
        let s = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
        let (r, mut w) = s.into_split();
        let (tx, mut out) = mpsc::unbounded_channel::<String>();
        let (in_tx, mut lines) = mpsc::unbounded_channel();
        let pong = tx.clone();
        tokio::spawn(async move {
            while let Some(l) = out.recv().await {
                if w.write_all(format!("{l}\r\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let mut r = BufReader::new(r).lines();
            while let Ok(Some(l)) = r.next_line().await {
                let Ok(m) = Message::parse(&l) else { continue };
                if m.command == "PING" {
                    let _ = pong.send(format!("PONG :{}", m.param(0).unwrap_or_default()));
                    continue;
                }
                if in_tx.send(m).is_err() {
                    break;
                }
            }
        });
        let _ = tx.send(format!("NICK {nick}"));
        // The user name is fixed: ngIRCd refuses some nick characters (`[`, `]`) in user names.
        let _ = tx.send(format!("USER test 0 * :{nick}"));
        let _ = tx.send(format!("JOIN {channel}"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match tokio::time::timeout_at(deadline, lines.recv()).await {
                Ok(Some(m)) if m.command == "366" => break,
                Ok(Some(_)) => {}
                _ => return Err(format!("{nick} could not join {channel}")),
            }
        }
        Ok(Self { nick: nick.into(), lines, tx })
    }

    /// Sends a PRIVMSG.
    pub fn say(&self, channel: &str, text: &str) {
        let _ = self.tx.send(format!("PRIVMSG {channel} :{text}"));
    }
}

/// Router + store + loopback leg + the IRC account in one portal.
pub struct Slice {
    pub router: RouterHandle,
    pub lb: Arc<LoopbackNetwork>,
    pub account: Arc<dyn Account>,
    _dir: tempfile::TempDir,
}

/// Starts the slice with the IRC account on `server` (`host:port`), configured by `cfg`; returns once it is
/// connected and in [`CHANNEL`].
pub async fn slice(server: &str, cfg: impl FnOnce(&mut Config)) -> Slice {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = bridge_core::open_store(dir.path(), Some(Backend::Redb), CommitConfig::default()).expect("store");
    let router = RouterHandle::start(RouterConfig::new("irc.test"), store, Arc::new(LocalRoom)).await.expect("router");
    let lb_id = AccountId::parse("lb.other").expect("id");
    let lb = LoopbackNetwork::new(lb_id.clone(), AccountContext::new(lb_id, router.clone(), "irc.test"));
    router.add_account(lb.clone());
    let id = AccountId::parse("irc.t").expect("id");
    let mut c = Config::new(server, BRIDGE);
    cfg(&mut c);
    let account = IrcConnector
        .start(id.clone(), c, AccountContext::new(id.clone(), router.clone(), "irc.test"))
        .await
        .expect("start");
    router.add_account(account.clone());
    let p = PortalId::new("p").expect("portal");
    router.create_portal(PortalRecord { id: p.clone(), mls_identity: MlsIdentity::Shared }).await.expect("portal");
    router.link(lb.leg("#lb"), &p).await.expect("link");
    let joined = router.link_and_join(LegId::new(id, CHANNEL).expect("leg"), &p).await.expect("link");
    joined.expect("the account runs").expect("join");
    let mut h = account.health();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while *h.borrow_and_update() != Health::Connected {
        tokio::time::timeout_at(deadline, h.changed()).await.expect("connects in time").expect("health");
    }
    Slice { router, lb, account, _dir: dir }
}

/// The texts of up to `n` PRIVMSGs from the bridge the client sees within `timeout`.
pub async fn collect(c: &mut Client, n: usize, timeout: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, c.lines.recv()).await {
            Ok(Some(m)) if m.command == "PRIVMSG" && m.source_nick() == Some(BRIDGE) => {
                got.push(m.param(1).unwrap_or_default().to_owned())
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    got
}

/// Lines per second over `times` (arrivals, in order), leaving out the first `skip` (the burst): the slope of a
/// least-squares line through (arrival time, index), so that servers releasing lines in batches (ngIRCd: 3 per
/// second) are measured at their average pace.
pub fn sustained_rate(times: &[Instant], skip: usize) -> f64 {
    let window = &times[skip.min(times.len())..];
    let Some(first) = window.first() else { return 0.0 };
    let xs: Vec<f64> = window.iter().map(|t| (*t - *first).as_secs_f64()).collect();
    let n = xs.len() as f64;
    let mean_x = xs.iter().sum::<f64>() / n;
    let mean_y = (n - 1.0) / 2.0;
    let cov: f64 = xs.iter().enumerate().map(|(i, x)| (x - mean_x) * (i as f64 - mean_y)).sum();
    let var: f64 = xs.iter().map(|x| (x - mean_x).powi(2)).sum();
    if var > 0.0 { cov / var } else { f64::INFINITY }
}
