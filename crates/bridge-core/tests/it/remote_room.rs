//! How a portal shows a member that speaks for a legacy user (the `legacySender` extension): only another
//! bridge's leaf is shown as the legacy user it speaks for, and only for a user of its own domain.

use bridge_api::{AccountId, LegacyUser, PortalId};
use bridge_core::mls_rooms::decode_incoming;
use mimi_content::Message;
use mimi_content::builder::ContentBuilder;
use mimi_mls::LegacySender;

const ROOM: &str = "mimi://a.test/r/rust";

/// A member's message with the `legacySender` extension naming `user` as a legacy user of the bridge of `domain`.
fn speaking_for(member: &str, user: &str, domain: &str) -> Vec<u8> {
    let mut content = ContentBuilder::new(member, ROOM).plain_text("hi").build().expect("content");
    let mut legacy = LegacyUser::new(AccountId::parse("xmpp.t").expect("account"), user);
    legacy.display_name = Some(user.to_owned());
    LegacySender::from_user(&legacy, domain).attach(&mut content.extensions).expect("extension");
    Message::encode(content).expect("encoded").bytes().to_vec()
}

#[test]
fn a_member_speaks_for_legacy_users_of_its_own_domain_only() {
    let portal = PortalId::new("rust").expect("id");
    let bridge = "mimi://b.test/u/bridge";
    let (_, msg) =
        decode_incoming(&portal, ROOM, bridge.as_bytes(), &speaking_for(bridge, "xavier", "b.test")).expect("decoded");
    assert_eq!((msg.sender.display_name.as_str(), msg.sender.network.as_str()), ("xavier", "xmpp"));
    assert!(msg.sender.uri.starts_with("mimi://b.test/u/xmpp.t~"), "{}", msg.sender.uri);
    // A user of another domain: the member itself is shown, not the name it claims.
    let (_, msg) =
        decode_incoming(&portal, ROOM, bridge.as_bytes(), &speaking_for(bridge, "xavier", "a.test")).expect("decoded");
    assert_eq!((msg.sender.uri.as_str(), msg.sender.display_name.as_str()), (bridge, "bridge"));
    // A bridge speaks for legacy users only, not for its provider's native users.
    let mut content = ContentBuilder::new(bridge, ROOM).plain_text("hi").build().expect("content");
    let native = LegacySender { uri: "mimi://b.test/u/alice".into(), display_name: None, network: "mimi".into() };
    native.attach(&mut content.extensions).expect("extension");
    let claim = Message::encode(content).expect("encoded").bytes().to_vec();
    let (_, msg) = decode_incoming(&portal, ROOM, bridge.as_bytes(), &claim).expect("decoded");
    assert_eq!(msg.sender.uri, bridge);
    // A native user is shown as themselves, whoever they claim to speak for.
    let mallory = "mimi://b.test/u/mallory";
    let (_, msg) = decode_incoming(&portal, ROOM, mallory.as_bytes(), &speaking_for(mallory, "xavier", "b.test"))
        .expect("decoded");
    assert_eq!((msg.sender.uri.as_str(), msg.sender.display_name.as_str()), (mallory, "mallory"));
}
