//! An in-process toychat server for the template's tests. (A real connector is tested against its real server.)

use crate::proto::{ClientLine, ServerLine, Verb};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

struct Conn {
    nick: Option<String>,
    rooms: HashSet<String>,
    tx: mpsc::UnboundedSender<String>,
    kill: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct State {
    next_conn: u64,
    next_id: u64,
    conns: HashMap<u64, Conn>,
    authors: HashMap<String, String>,
    last_event: Option<String>,
}

/// A running fake server; stops when dropped.
pub struct FakeServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    /// Starts a server on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, st.clone()));
            }
        });
        Ok(Self { addr, state, task })
    }

    /// Sends the last room event again to every connection of `nick` (an at-least-once network redelivering
    /// after a lost acknowledgement); returns how many got it.
    pub fn redeliver_last(&self, nick: &str) -> usize {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(last) = st.last_event.clone() else { return 0 };
        st.conns
            .values()
            .filter(|c| c.nick.as_deref() == Some(nick))
            .filter(|c| c.tx.send(last.clone()).is_ok())
            .count()
    }

    /// Drops every connection of `nick`; returns how many were dropped.
    pub fn kick(&self, nick: &str) -> usize {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for c in st.conns.values_mut() {
            if c.nick.as_deref() == Some(nick)
                && let Some(k) = c.kill.take()
            {
                let _ = k.send(());
                n += 1;
            }
        }
        n
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(sock: TcpStream, state: Arc<Mutex<State>>) {
    let (r, mut w) = sock.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let (kill, mut killed) = oneshot::channel();
    let id = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.next_conn += 1;
        let id = st.next_conn;
        st.conns.insert(id, Conn { nick: None, rooms: HashSet::new(), tx, kill: Some(kill) });
        id
    };
    let mut lines = BufReader::new(r).lines();
    loop {
        tokio::select! {
            l = lines.next_line() => match l {
                Ok(Some(l)) => handle(&state, id, &l),
                _ => break,
            },
            out = rx.recv() => match out {
                Some(o) => if w.write_all(format!("{o}\n").as_bytes()).await.is_err() { break },
                None => break,
            },
            _ = &mut killed => break,
        }
    }
    state.lock().unwrap_or_else(|p| p.into_inner()).conns.remove(&id);
}

fn handle(state: &Mutex<State>, conn: u64, line: &str) {
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    let reply = |st: &State, l: ServerLine| {
        if let Some(c) = st.conns.get(&conn) {
            let _ = c.tx.send(l.to_line());
        }
    };
    let parsed = match ClientLine::parse(line) {
        Ok(p) => p,
        Err(e) => return reply(&st, ServerLine::Err { tag: "-".into(), reason: e.to_string() }),
    };
    let nick = st.conns.get(&conn).and_then(|c| c.nick.clone());
    match (parsed, nick) {
        (ClientLine::Hello(n), _) => {
            if let Some(c) = st.conns.get_mut(&conn) {
                c.nick = Some(n.clone());
            }
            reply(&st, ServerLine::Welcome(n));
        }
        (_, None) => reply(&st, ServerLine::Err { tag: "-".into(), reason: "HELLO first".into() }),
        (ClientLine::Join(room), Some(_)) => {
            if let Some(c) = st.conns.get_mut(&conn) {
                c.rooms.insert(room);
            }
        }
        (ClientLine::Tagged { tag, verb }, Some(nick)) => {
            let joined = st.conns.get(&conn).is_some_and(|c| c.rooms.contains(verb.room()));
            if !joined {
                return reply(&st, ServerLine::Err { tag, reason: "not in that room".into() });
            }
            if let Verb::Edit { target, .. } | Verb::Del { target, .. } = &verb
                && st.authors.get(target) != Some(&nick)
            {
                return reply(&st, ServerLine::Err { tag, reason: "not your message".into() });
            }
            st.next_id += 1;
            let id = format!("m{}", st.next_id);
            st.authors.insert(id.clone(), nick.clone());
            reply(&st, ServerLine::Ack { tag, id: id.clone() });
            let room = verb.room().to_owned();
            let evt = ServerLine::Evt { id, nick, verb }.to_line();
            st.last_event = Some(evt.clone());
            for c in st.conns.values().filter(|c| c.rooms.contains(&room)) {
                let _ = c.tx.send(evt.clone());
            }
        }
    }
}
