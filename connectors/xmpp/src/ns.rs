//! XML namespaces the connector reads and writes that `xmpp_parsers::ns` does not name.

/// XEP-0461 Message Replies.
pub const REPLY: &str = "urn:xmpp:reply:0";
/// XEP-0428 Fallback Indication.
pub const FALLBACK: &str = "urn:xmpp:fallback:0";
/// XEP-0424 Message Retraction (version 0.4 and later).
pub const RETRACT: &str = "urn:xmpp:message-retract:1";
/// XEP-0424 Message Retraction before version 0.4 (inside a XEP-0422 `apply-to`).
pub const RETRACT_0: &str = "urn:xmpp:message-retract:0";
/// XEP-0422 Message Fastening (the wrapper of the older retraction and moderation forms).
pub const FASTEN: &str = "urn:xmpp:fasten:0";
/// XEP-0425 Moderated Message Retraction (version 0.3 and later).
pub const MODERATE: &str = "urn:xmpp:message-moderate:1";
/// XEP-0425 before version 0.3.
pub const MODERATE_0: &str = "urn:xmpp:message-moderate:0";
/// XEP-0393 Message Styling (the `<unstyled/>` hint).
pub const STYLING: &str = "urn:xmpp:styling:0";
/// XEP-0334 Message Processing Hints.
pub const HINTS: &str = "urn:xmpp:hints";
/// XEP-0203 Delayed Delivery.
pub const DELAY: &str = "urn:xmpp:delay";
/// XEP-0380 Explicit Message Encryption.
pub const EME: &str = "urn:xmpp:eme:0";
/// XEP-0384 OMEMO (the 0.3 "legacy" namespace most clients still send).
pub const OMEMO_LEGACY: &str = "eu.siacs.conversations.axolotl";
/// XEP-0384 OMEMO 2.
pub const OMEMO: &str = "urn:xmpp:omemo:2";
/// The client stream namespace, which the typed parsers expect.
pub const CLIENT: &str = "jabber:client";
/// The XEP-0114 component stream namespace.
pub const COMPONENT: &str = "jabber:component:accept";
