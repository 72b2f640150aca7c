//! Who a commit may add to a room this provider hosts ([`LocalAdds`], the hub's [`AddRule`]).
//!
//! A member of this provider's domain is added only with a KeyPackage this provider handed out for that user (a
//! claim, recorded under `'R'` in `mimi_users`), so nobody can put a leaf under a local user's name with keys of
//! their own. The bridge's identities (`…/u/bridge` and legacy users' `…/u/NET.ACCT~…`) are added only by the
//! bridge's own member (its per-user leaves). A user of another domain is added by our users only with a
//! KeyPackage we fetched for them from their provider (recorded the same way); a follower provider's commits are
//! its own users' business (it fetched the KeyPackages). A URI naming our domain in another spelling (case, a
//! trailing dot, a port) is refused.

use crate::log::Records;
use crate::native_clients::RESERVED_USERS;
use mimi_protocol::hub::AddRule;
use mimi_protocol::{Origin, uri_domain};
use mimi_store::Store;

/// The [`AddRule`] of the rooms of the provider of `domain`, over its records on `store`.
#[derive(Clone)]
pub struct LocalAdds {
    store: Store,
    domain: String,
}

impl std::fmt::Debug for LocalAdds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAdds").field("domain", &self.domain).finish_non_exhaustive()
    }
}

impl LocalAdds {
    /// The rule of `domain`'s provider.
    pub fn new(store: Store, domain: &str) -> Self {
        Self { store, domain: domain.to_owned() }
    }

    /// True if `uri` (of our domain) names one of the bridge's identities.
    fn is_bridge_identity(&self, uri: &str) -> bool {
        let prefix = format!("mimi://{}/u/", self.domain);
        uri.strip_prefix(&prefix).is_some_and(|name| RESERVED_USERS.contains(&name) || name.contains('~'))
    }
}

impl AddRule for LocalAdds {
    fn check(&self, identity: &str, kp_ref: &[u8], origin: &Origin) -> Result<(), String> {
        let domain = uri_domain(identity).unwrap_or("");
        let canonical = domain.to_ascii_lowercase();
        let canonical = canonical.trim_end_matches('.');
        let canonical = canonical.split(':').next().unwrap_or("");
        if domain != self.domain && canonical == self.domain {
            return Err(format!("{identity} names this provider's domain in another spelling"));
        }
        if domain != self.domain {
            return match origin {
                Origin::Follower(_) => Ok(()),
                _ => match Records(&self.store).claimed_by(kp_ref) {
                    Ok(Some(user)) if user == identity => Ok(()),
                    Ok(_) => Err(format!("{identity} may be added only with a KeyPackage fetched from their provider")),
                    Err(e) => Err(format!("the KeyPackage records cannot be read: {e}")),
                },
            };
        }
        if self.is_bridge_identity(identity) {
            return match origin {
                Origin::Portal => Ok(()),
                _ => Err(format!("{identity} is the bridge's: only the bridge adds it")),
            };
        }
        match Records(&self.store).claimed_by(kp_ref) {
            Ok(Some(user)) if user == identity => Ok(()),
            Ok(_) => Err(format!("{identity} may be added only with a KeyPackage this provider handed out for them")),
            Err(e) => Err(format!("the KeyPackage records cannot be read: {e}")),
        }
    }
}
