//! One portal linking three real networks — a Matrix room (appservice, real Synapse), an XMPP MUC (client mode, real
//! Prosody) and an IRC channel (real ngIRCd) — with a user on each and two native MLS clients in its group, all
//! joined and ready: the setup of the cross-network scenarios.

use crate::common::client::{client, server_of};
use crate::common::{Daemon, cli, write_config};
use harness::{Ngircd, NgircdOptions, Prosody, Synapse, SynapseOptions};
use mimi_bench::irc::IrcUser;
use mimi_bench::matrix::MatrixClient;
use mimi_bench::measure::Arrivals;
use mimi_bench::xmpp::XmppUser;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The Matrix server name.
pub const SERVER_NAME: &str = "hs.test";
/// The portal's room URI (what the native clients join).
pub const ROOM: &str = "mimi://bridge.example.org/r/rust";
/// The linked MUC.
pub const MUC: &str = "lobby@muc.localhost";
/// The linked IRC channel.
pub const CHANNEL: &str = "#chan";

/// The three networks, the daemon and the users. Fields drop in order: users, daemon, servers, files.
pub struct Three {
    /// The XMPP user `xavier`, in the MUC.
    pub xavier: XmppUser,
    /// The IRC user `ircuser`, in the channel (reader name `irc` in [`Three::arrivals`]).
    pub ircuser: IrcUser,
    /// The Matrix user `mxuser`, in the room.
    pub mx: MatrixClient,
    /// The runtime the IRC and XMPP users run on.
    pub rt: tokio::runtime::Runtime,
    /// The daemon.
    pub d: Daemon,
    /// Where every reader noted the markers it saw.
    pub arrivals: Arrivals,
    /// The Matrix room id.
    pub room: String,
    /// The daemon's config file.
    pub cfg: PathBuf,
    /// The daemon's client API (for the native clients).
    pub server: String,
    /// The native clients' state directories (registered and joined to [`ROOM`]).
    pub alice: PathBuf,
    /// See `alice`.
    pub bob: PathBuf,
    /// Synapse.
    pub hs: Arc<Synapse>,
    /// ngIRCd.
    pub irc: Ngircd,
    /// Prosody.
    pub prosody: Prosody,
    _dir: tempfile::TempDir,
}

/// How [`Three::start_with`] sets things up.
#[derive(Debug, Default, Clone)]
pub struct ThreeOptions {
    /// ngIRCd without its penalty delays, for streams faster than a person types.
    pub irc_no_penalty: bool,
}

/// The accounts and the portal's legs of the daemon's config.
fn accounts(dir: &Path, homeserver: &str, listen: u16, room_id: &str, irc: &str, c2s: &str) -> String {
    format!(
        "legs = [{{ account = \"matrix.hs\", room = \"{room_id}\" }}, {{ account = \"irc.t\", room = \"{CHANNEL}\" }}, \
         {{ account = \"xmpp.t\", room = \"{MUC}\" }}]\n\n\
         [matrix.hs]\nmode = \"appservice\"\nhomeserver_url = \"{homeserver}\"\nserver_name = \"{SERVER_NAME}\"\n\
         listen = \"127.0.0.1:{listen}\"\nas_token_file = {as_token:?}\nhs_token_file = {hs_token:?}\n\
         registration_id = \"mimi-bridge-it\"\n\n[irc.t]\nserver = \"{irc}\"\nnick = \"bridge\"\n\n\
         [xmpp.t]\nmode = \"client\"\nserver = \"{c2s}\"\njid = \"bridge@localhost\"\npassword = \"bridge-pw\"\n\
         transport = \"insecure-tcp\"\n",
        as_token = dir.join("as.token").display().to_string(),
        hs_token = dir.join("hs.token").display().to_string(),
    )
}

/// The IRC user `ircuser` in `channel` and the XMPP user `xavier` in `muc` (reader names `irc` and `xmpp:MUC` in
/// `arrivals`), once the bridge is in both rooms.
pub async fn irc_and_xmpp_users(
    irc: &Ngircd,
    channel: &str,
    prosody: &Prosody,
    muc: &str,
    arrivals: &Arrivals,
) -> (IrcUser, XmppUser) {
    let ircuser =
        IrcUser::join(&irc.addr(), "ircuser", channel, "irc", arrivals.clone()).await.expect("IRC user joins");
    let xavier = XmppUser::login(&prosody.c2s_addr(), "xavier", "xavier", arrivals.clone()).await.expect("XMPP login");
    xavier.join(muc).await.expect("xavier joins the MUC");
    xavier.wait_occupant(muc, "mimi-bridge").await.expect("the bridge is in the MUC");
    ircuser.wait_member("bridge").await.expect("the bridge is in the channel");
    (ircuser, xavier)
}

impl Three {
    /// Starts the servers and the daemon, and waits until every user and the bridge are in their rooms.
    pub fn start() -> Three {
        Self::start_with(&ThreeOptions::default())
    }

    /// As [`Three::start`], set up as `opts` says.
    pub fn start_with(opts: &ThreeOptions) -> Three {
        let dir = tempfile::tempdir().expect("tempdir");
        let listen = harness::free_port().expect("port");
        let prosody = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
        prosody.register("bridge", "bridge-pw").expect("bridge account");
        prosody.register("xavier", "pw").expect("xmpp user");
        let irc = Ngircd::start_with(NgircdOptions { no_penalty: opts.irc_no_penalty, ..NgircdOptions::default() })
            .expect("ngircd starts (installed by ./scripts/test)");
        let (cfg, _) = write_config(
            dir.path(),
            &accounts(dir.path(), "http://127.0.0.1:1", listen, "!x:hs.test", &irc.addr(), &prosody.c2s_addr()),
        );
        let cfg_s = cfg.to_str().expect("utf-8").to_owned();
        let reg = dir.path().join("registration.yaml");
        let (code, out, err) =
            cli(&["generate-registration", "--config", &cfg_s, "--out", reg.to_str().expect("utf-8")]);
        assert_eq!(code, 0, "{out}{err}");
        let hs = Arc::new(
            Synapse::start_with(SynapseOptions {
                appservice_registrations: vec![reg],
                server_name: Some(SERVER_NAME.into()),
            })
            .expect("synapse starts (installed by ./scripts/test)"),
        );
        let arrivals = Arrivals::default();
        let mx = MatrixClient::register(hs.clone(), "mxuser", arrivals.clone()).expect("matrix user");
        let room =
            mx.call("POST", "/_matrix/client/v3/createRoom", Some(json!({"preset": "public_chat"}))).expect("room");
        let room = room["room_id"].as_str().expect("room id").to_owned();
        let text = accounts(dir.path(), &hs.url(), listen, &room, &irc.addr(), &prosody.c2s_addr());
        write_config(dir.path(), &text);
        let mut d = Daemon::start(&cfg, &[]);
        let server = server_of(&cfg);

        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (ircuser, xavier) = rt.block_on(irc_and_xmpp_users(&irc, CHANNEL, &prosody, MUC, &arrivals));
        mx.wait_member(&room, &format!("@mimi-bridge:{SERVER_NAME}")).unwrap_or_else(|e| panic!("{e}: {}", d.log()));
        let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
        for (state, name) in [(&alice, "alice"), (&bob, "bob")] {
            client(state, &server, &["register", name]);
            client(state, &server, &["join", ROOM]);
        }
        Three { xavier, ircuser, mx, rt, d, arrivals, room, cfg, server, alice, bob, hs, irc, prosody, _dir: dir }
    }

    /// The reader name of the Matrix user in [`Three::arrivals`].
    pub fn mx_reader(&self) -> String {
        format!("mx:{}", self.room)
    }

    /// The reader name of the XMPP user in [`Three::arrivals`].
    pub fn xmpp_reader() -> String {
        format!("xmpp:{MUC}")
    }
}
