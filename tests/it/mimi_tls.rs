//! Mutual TLS on the MIMI endpoints, over real sockets: a peer with a certificate valid for the domain it claims
//! is heard on `/v1/…`; a peer claiming another domain, a client without a certificate, and a certificate from an
//! untrusted CA are refused; native clients (no certificate) still reach the client API.

use axum::Router;
use axum::routing::get;
use harness::pki::{Ca, Issued};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mimi_bridge::listener::{self, Limits};
use mimi_bridge::mimi_tls::{MimiTls, require_peer};
use std::path::Path;

struct Pki {
    _dir: tempfile::TempDir,
    ca: Ca,
    a: Issued,
    b: Issued,
    rogue: Issued,
    rogue_ca: Ca,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "federation");
    let a = ca.issue("a", &["a.test", "localhost"], true, true);
    let b = ca.issue("b", &["b.test", "localhost"], true, true);
    let rogue_ca = Ca::new(dir.path(), "rogue");
    let rogue = rogue_ca.issue("b", &["b.test", "localhost"], true, true);
    Pki { _dir: dir, ca, a, b, rogue, rogue_ca }
}

fn tls(id: &Issued, anchors: &Path) -> MimiTls {
    MimiTls::load(&id.cert, &id.key, Some(anchors)).expect("TLS settings load")
}

/// Serves `/v1/ping` (behind [`require_peer`]) and `/client/ping` with `server`'s TLS; returns `localhost:PORT`.
async fn serve(server: MimiTls) -> String {
    let peer_routes =
        Router::new().route("/v1/ping", get(|| async { "pong" })).layer(axum::middleware::from_fn(require_peer));
    let app = Router::new().merge(peer_routes).route("/client/ping", get(|| async { "client pong" }));
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = tcp.local_addr().expect("addr").port();
    tokio::spawn(listener::serve("test", tcp, server, app, Limits::default(), std::future::pending()));
    format!("localhost:{port}")
}

/// GET `path` over a TLS connection made by `client`, claiming `from`; (status, body) or the connection error.
async fn get_as(client: &MimiTls, authority: &str, path: &str, from: Option<&str>) -> Result<(u16, String), String> {
    let stream = client.connect(authority).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header("host", authority);
    if let Some(f) = from {
        req = req.header("from", format!("mimi@{f}"));
    }
    let resp = send.send_request(req.body(Empty::<Bytes>::new()).expect("request")).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn peers_are_authenticated_by_certificate_and_domain() {
    let p = pki();
    let authority = serve(tls(&p.a, &p.ca.cert)).await;
    let b = tls(&p.b, &p.ca.cert);

    assert_eq!(get_as(&b, &authority, "/v1/ping", Some("b.test")).await, Ok((200, "pong".into())));
    // b's certificate is not valid for a.test (nor for c.test).
    for claimed in ["a.test", "c.test"] {
        let (status, body) = get_as(&b, &authority, "/v1/ping", Some(claimed)).await.expect("answered");
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("not valid for"), "{body}");
    }
    let (status, body) = get_as(&b, &authority, "/v1/ping", None).await.expect("answered");
    assert_eq!((status, body.contains("From")), (403, true), "{body}");
    // Native clients need no certificate on the client API.
    assert_eq!(get_as(&b, &authority, "/client/ping", None).await, Ok((200, "client pong".into())));
}

#[tokio::test]
async fn a_client_without_a_certificate_reaches_the_client_api_only() {
    let p = pki();
    let authority = serve(tls(&p.a, &p.ca.cert)).await;
    // A TLS client that trusts the CA but presents no certificate (a native MLS client).
    let roots = bridge_net::tls::roots(Some(&p.ca.cert), "ca").expect("roots");
    let config = rustls::ClientConfig::builder_with_provider(bridge_net::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&authority).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.expect("TLS");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("http");
    tokio::spawn(conn);
    for (path, want) in [("/v1/ping", 403), ("/client/ping", 200)] {
        let req = hyper::Request::get(path)
            .header("host", &authority)
            .header("from", "mimi@b.test")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("answer");
        assert_eq!(resp.status().as_u16(), want, "{path}");
    }
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_is_refused_at_the_handshake() {
    let p = pki();
    let authority = serve(tls(&p.a, &p.ca.cert)).await;
    // The rogue peer trusts our CA (so it accepts our server certificate) but its own is signed by another CA.
    let rogue = tls(&p.rogue, &p.ca.cert);
    let r = get_as(&rogue, &authority, "/v1/ping", Some("b.test")).await;
    assert!(r.is_err(), "the server must refuse the rogue certificate: {r:?}");
    // And a server with a certificate we do not trust is refused by our client.
    let rogue_server = serve(tls(&p.rogue, &p.rogue_ca.cert)).await;
    let r = get_as(&tls(&p.b, &p.ca.cert), &rogue_server, "/client/ping", None).await;
    let e = r.expect_err("our client must refuse the rogue server");
    assert!(e.contains("TLS with"), "{e}");
}

#[test]
fn bad_files_are_named_in_errors() {
    let p = pki();
    let e = MimiTls::load(Path::new("/nonexistent/cert.pem"), &p.a.key, Some(&p.ca.cert)).expect_err("no cert");
    assert!(e.contains("mimi.tls_cert") && e.contains("/nonexistent/cert.pem"), "{e}");
    let e = MimiTls::load(&p.a.cert, Path::new("/nonexistent/key.pem"), Some(&p.ca.cert)).expect_err("no key");
    assert!(e.contains("mimi.tls_key"), "{e}");
    let e = MimiTls::load(&p.a.cert, &p.a.key, Some(&p.a.key)).expect_err("a key is no CA");
    assert!(e.contains("mimi.trust_anchors"), "{e}");
}

/// Writes a daemon config for `domain` serving TLS with `id` on `port`, its one peer `peer` at `peer_port`, and
/// a portal `lobby` (a room this daemon hosts). The key is made private first (the daemon refuses it otherwise).
fn tls_daemon_config(
    dir: &Path,
    domain: &str,
    port: u16,
    id: &Issued,
    anchors: &Path,
    peer: (&str, u16),
) -> mimi_bridge::config::Config {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&id.key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    let text = format!(
        "[bridge]\ndomain = \"{domain}\"\ndata_dir = {data:?}\n\n[mimi]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \
         {cert:?}\ntls_key = {key:?}\ntrust_anchors = {anchors:?}\n\n[[mimi.peer]]\ndomain = \"{}\"\nurl = \
         \"https://localhost:{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[portal]]\nname = \"lobby\"\n",
        peer.0,
        peer.1,
        data = dir.join(domain).display().to_string(),
        cert = id.cert.display().to_string(),
        key = id.key.display().to_string(),
        anchors = anchors.display().to_string(),
    );
    let path = dir.join(format!("{domain}.toml"));
    std::fs::write(&path, &text).expect("config");
    mimi_bridge::config::Config::parse(&path, &text).expect("valid config")
}

/// A request with a body to a daemon's client API over TLS (the client presents `client`'s certificate, which
/// the client API does not need).
async fn call(
    client: &MimiTls,
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<u8>) {
    let stream = client.connect(authority).await.expect("TLS to the daemon");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("http");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(http_body_util::Full::new(Bytes::from(body.to_owned()))).expect("request");
    let resp = send.send_request(req).await.expect("answer");
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.expect("body").to_bytes().to_vec())
}

/// `mimi-bridge client --state STATE --server SERVER --ca-file CA ARGS…` (the real binary); its output.
fn client(state: &Path, server: &str, ca: &Path, args: &[String]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mimi-bridge"))
        .arg("client")
        .arg("--state")
        .arg(state)
        .arg("--server")
        .arg(server)
        .arg("--ca-file")
        .arg(ca)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("mimi-bridge client runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "client {args:?}: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Two daemons federating over mutual TLS: B fetches the GroupInfo of a room A hosts (A's `/v1/groupInfo`) for
/// its native client; native clients on both sides, over HTTPS, share a room A hosts. A daemon whose certificate
/// is for another domain than the one it claims is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_federate_over_mutual_tls() {
    let p = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let (pa, pb) = (harness::free_port().expect("port"), harness::free_port().expect("port"));
    let cfg_a = tls_daemon_config(dir.path(), "a.test", pa, &p.a, &p.ca.cert, ("b.test", pb));
    let cfg_b = tls_daemon_config(dir.path(), "b.test", pb, &p.b, &p.ca.cert, ("a.test", pa));
    let networks = mimi_bridge::networks::built_in();
    let a = mimi_bridge::daemon::Daemon::start(&cfg_a, &networks).await.expect("A starts");
    let b = mimi_bridge::daemon::Daemon::start(&cfg_b, &networks).await.expect("B starts");

    let bob = tls(&p.b, &p.ca.cert);
    let b_at = format!("localhost:{pb}");
    let (status, body) = call(&bob, &b_at, "POST", "/client/v1/register", &[], r#"{"user":"bob"}"#).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let reg: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let (uri, token) = (reg["uri"].as_str().expect("uri"), reg["token"].as_str().expect("token"));
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), ("mimi-user", uri)];
    let (status, body) = call(&bob, &b_at, "GET", "/client/v1/groupInfo/a.test/r/lobby", &headers, "").await;
    assert_eq!(status, 200, "B fetched A's GroupInfo over mTLS: {}", String::from_utf8_lossy(&body));
    assert_eq!(body.get(..4), Some(&[0, 1, 0, 4][..]), "an MLS 1.0 GroupInfo");

    // Native clients on each side, over HTTPS, in a room A hosts: B follows it through A over mutual TLS.
    let (sa, sb) = (format!("https://localhost:{pa}"), format!("https://localhost:{pb}"));
    let (alice, bob_state) = (dir.path().join("alice"), dir.path().join("bob"));
    let ca = p.ca.cert.clone();
    let run = move |state: std::path::PathBuf, server: String, args: Vec<String>| {
        let ca = ca.clone();
        tokio::task::spawn_blocking(move || client(&state, &server, &ca, &args))
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    run(alice.clone(), sa.clone(), args(&["register", "alice"])).await.expect("alice registers");
    let created = run(alice.clone(), sa.clone(), args(&["create-room", "club"])).await.expect("room");
    let club = created.lines().last().expect("room URI").trim().to_owned();
    assert_eq!(club, "mimi://a.test/r/club");
    run(bob_state.clone(), sb.clone(), args(&["register", "bobby"])).await.expect("bob registers");
    run(bob_state.clone(), sb.clone(), args(&["join", &club])).await.expect("bob joins through B");
    run(alice.clone(), sa.clone(), args(&["send", &club, "hello over mutual TLS"])).await.expect("alice sends");
    let heard =
        run(bob_state.clone(), sb.clone(), args(&["listen", &club, "--json", "--count", "1", "--timeout", "20"]))
            .await
            .expect("bob listens");
    let m: serde_json::Value = serde_json::from_str(heard.lines().next().expect("a message")).expect("json");
    assert_eq!(
        (m["text"].as_str(), m["sender"].as_str()),
        (Some("hello over mutual TLS"), Some("mimi://a.test/u/alice"))
    );
    run(bob_state.clone(), sb.clone(), args(&["send", &club, "and back"])).await.expect("bob sends");
    let heard = run(alice.clone(), sa.clone(), args(&["listen", &club, "--json", "--count", "1", "--timeout", "20"]))
        .await
        .expect("alice listens");
    let m: serde_json::Value = serde_json::from_str(heard.lines().next().expect("a message")).expect("json");
    assert_eq!((m["text"].as_str(), m["sender"].as_str()), (Some("and back"), Some("mimi://b.test/u/bobby")));
    b.shutdown().await.expect("B stops");

    // B again, claiming b.test with a certificate for c.test: A refuses it.
    let c = p.ca.issue("c", &["c.test", "localhost"], true, true);
    let dir2 = tempfile::tempdir().expect("tempdir");
    let cfg_b2 = tls_daemon_config(dir2.path(), "b.test", pb, &c, &p.ca.cert, ("a.test", pa));
    let b2 = mimi_bridge::daemon::Daemon::start(&cfg_b2, &networks).await.expect("B' starts");
    let (status, body) = call(&bob, &b_at, "POST", "/client/v1/register", &[], r#"{"user":"bob"}"#).await;
    assert_eq!(status, 200);
    let reg: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let auth = format!("Bearer {}", reg["token"].as_str().expect("token"));
    let headers = [("authorization", auth.as_str()), ("mimi-user", reg["uri"].as_str().expect("uri"))];
    let (status, body) = call(&bob, &b_at, "GET", "/client/v1/groupInfo/a.test/r/lobby", &headers, "").await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not valid for"), "{body}");
    b2.shutdown().await.expect("B' stops");
    a.shutdown().await.expect("A stops");
}
