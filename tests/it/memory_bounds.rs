//! Memory stays bounded under floods, against the real binary (issue #15's acceptance): a non-member's 1 MB
//! Welcomes are refused (and count against her byte quota all the same), and a member's 1 MB messages are stopped by the per-user byte quota, each with the
//! daemon's resident memory growing by less than 64 MB. (Before the hub validated messages, 400 such Welcomes
//! took a daemon from 13 to 809 MB.)

use crate::client_support::daemon;
use crate::common::api::{call, group_info, register};
use crate::common::heavy;

/// The resident set size of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

const MB: u64 = 1 << 20;

#[test]
fn floods_of_1_mb_messages_leave_the_daemon_s_memory_bounded() {
    let _heavy = heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = daemon::free_port();
    let d = daemon::start(dir.path(), "a.test", port, &[]);
    let pid = d.child.id();
    let addr = format!("127.0.0.1:{port}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let alice = register(&addr, "alice").await;
        let mallory = register(&addr, "mallory").await;
        let room = "mimi://a.test/r/flood";
        let (mut group, info) = group_info(&dir.path().join("alice"), &alice.0, room).await;
        let body = serde_json::json!({ "name": "flood", "group_info": hex::encode(info.as_bytes()) });
        assert_eq!(call(&addr, "POST", "/client/v1/rooms", Some(&alice), body.to_string()).await.0, 200);
        let submit = "/client/v1/submit/a.test/r/flood";
        let hello = group.encrypt(b"hello").durable().await.expect("encrypt");
        assert_eq!(call(&addr, "POST", submit, Some(&alice), hello).await.0, 200);
        let before = rss(pid);

        // 200 Welcomes of 1 MB from a registered non-member: every one refused (403 — or 429 once her refused
        // bytes passed her quota too).
        for _ in 0..200 {
            let w = crate::hub_validation::junk_welcome(1_000_000);
            let (status, body) = call(&addr, "POST", submit, Some(&mallory), w).await;
            assert!(status == 403 || status == 429, "{status}: {body}");
        }
        let after_stranger = rss(pid);

        // A member's 1 MB messages: a minute's worth of bytes accepted, then 429.
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..30 {
            let m = group.encrypt(&vec![b'x'; 1_000_000]).durable().await.expect("encrypt");
            match call(&addr, "POST", submit, Some(&alice), m).await {
                (200, _) => accepted += 1,
                (429, _) => refused += 1,
                (status, body) => panic!("{status}: {body}"),
            }
        }
        let after_member = rss(pid);
        eprintln!(
            "RSS: {} MB before, {} MB after 200 refused 1 MB Welcomes, {} MB after {accepted} accepted and {refused} \
             refused 1 MB messages",
            before / MB,
            after_stranger / MB,
            after_member / MB
        );
        assert!(refused > 0 && accepted > 0, "the byte quota stopped the member: {accepted} accepted");
        assert!(after_stranger < before + 64 * MB, "a stranger's flood: {} → {} MB", before / MB, after_stranger / MB);
        assert!(after_member < before + 64 * MB, "a member's flood: {} → {} MB", before / MB, after_member / MB);
    });
    drop(d);
}
