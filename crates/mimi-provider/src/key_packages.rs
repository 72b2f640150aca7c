//! Native users' KeyPackages as the provider keeps and hands them out.
//!
//! * **Upload**: each must be a KeyPackage that validates (signature, protocol version, lifetime) and whose basic
//!   credential names the uploader — nobody publishes KeyPackages in another user's name. Each is at most
//!   [`MAX_BYTES`] long and a user keeps at most [`MAX_STORED`], so one user's KeyPackages take at most 4 MiB.
//! * **Claim**: the oldest valid one is handed out and removed; one that no longer validates (expired) is dropped,
//!   never served. A last-resort KeyPackage (RFC 9420 §16.8, `last_resort` extension) is served only when no other
//!   is left, and kept: it is never consumed, so a user stays invitable.

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{BasicCredential, ExtensionType, KeyPackage, MlsMessageBodyIn, MlsMessageIn, ProtocolVersion};
use openmls_rust_crypto::RustCrypto;
use std::time::{SystemTime, UNIX_EPOCH};

/// Most KeyPackages stored for one user (an upload that would exceed it is refused).
pub const MAX_STORED: usize = 256;

/// Longest KeyPackage taken (one with a basic credential is about 300 bytes; this leaves room for extensions).
pub const MAX_BYTES: usize = 16 * 1024;

/// A KeyPackage that passed [`check`].
pub(crate) struct Checked {
    /// Its hash reference (the Welcome for it names it).
    pub hash_ref: Vec<u8>,
    /// It carries the `last_resort` extension.
    pub last_resort: bool,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Parses and validates `bytes` (a KeyPackage MLSMessage) as a KeyPackage of `user`; why not otherwise.
pub(crate) fn check(bytes: &[u8], user: &str) -> Result<Checked, String> {
    if bytes.len() > MAX_BYTES {
        return Err(format!("a KeyPackage of {} bytes: at most {MAX_BYTES} are taken", bytes.len()));
    }
    let crypto = RustCrypto::default();
    let kp = parse_valid(bytes, &crypto)?;
    let lifetime = kp.life_time();
    let now = now_secs();
    if now < lifetime.not_before() || now > lifetime.not_after() {
        return Err("the KeyPackage is outside its lifetime".into());
    }
    let credential = BasicCredential::try_from(kp.leaf_node().credential().clone())
        .map_err(|_| "the KeyPackage's credential is not a basic credential".to_owned())?;
    if credential.identity() != user.as_bytes() {
        return Err(format!(
            "the KeyPackage's credential is {:?}, not the uploader {user}",
            String::from_utf8_lossy(credential.identity())
        ));
    }
    let hash_ref = kp.hash_ref(&crypto).map_err(|e| e.to_string())?.as_slice().to_vec();
    let last_resort = kp.extensions().contains(ExtensionType::LastResort);
    Ok(Checked { hash_ref, last_resort })
}

/// The KeyPackageRef of `bytes` (a KeyPackage MLSMessage that validates), whoever it names.
pub(crate) fn hash_ref_of(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let crypto = RustCrypto::default();
    let kp = parse_valid(bytes, &crypto)?;
    Ok(kp.hash_ref(&crypto).map_err(|e| e.to_string())?.as_slice().to_vec())
}

/// `bytes` as a KeyPackage MLSMessage (nothing after it) whose signature and version validate.
fn parse_valid(bytes: &[u8], crypto: &RustCrypto) -> Result<KeyPackage, String> {
    let mut slice = bytes;
    let parsed = MlsMessageIn::tls_deserialize(&mut slice).map_err(|e| format!("not an MLSMessage: {e}"))?;
    if !slice.is_empty() {
        return Err(format!("{} bytes after the KeyPackage", slice.len()));
    }
    let MlsMessageBodyIn::KeyPackage(kp) = parsed.extract() else { return Err("not a KeyPackage".into()) };
    kp.validate(crypto, ProtocolVersion::Mls10).map_err(|e| format!("invalid KeyPackage: {e}"))
}

/// What a claim does with a user's stored KeyPackages (oldest first).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ClaimPlan {
    /// The one to hand out: its id, and whether it is removed (not a last-resort one).
    pub chosen: Option<(u64, bool)>,
    /// Ids of stored KeyPackages that no longer validate: dropped.
    pub drop: Vec<u64>,
}

/// Chooses, among `stored` (id, check result) oldest first, the KeyPackage to hand out.
pub(crate) fn plan(stored: &[(u64, Result<bool, String>)]) -> ClaimPlan {
    let mut drop = Vec::new();
    let mut last_resort = None;
    for (id, checked) in stored {
        match checked {
            Err(_) => drop.push(*id),
            Ok(false) => return ClaimPlan { chosen: Some((*id, true)), drop },
            Ok(true) => {
                last_resort.get_or_insert(*id);
            }
        }
    }
    ClaimPlan { chosen: last_resort.map(|id| (id, false)), drop }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_key_package_is_refused_before_it_is_parsed() {
        let e = check(&vec![0; MAX_BYTES + 1], "mimi://a.test/u/alice").err().expect("refused");
        assert!(e.contains("at most 16384"), "{e}");
        let e = check(&[0; 8], "mimi://a.test/u/alice").err().expect("refused");
        assert!(e.contains("not an MLSMessage"), "a short one is parsed: {e}");
    }

    #[test]
    fn a_claim_prefers_ordinary_key_packages_drops_invalid_ones_and_keeps_the_last_resort() {
        let bad = || Err("expired".to_owned());
        assert_eq!(
            plan(&[(1, bad()), (2, Ok(true)), (3, Ok(false))]),
            ClaimPlan { chosen: Some((3, true)), drop: vec![1] }
        );
        assert_eq!(plan(&[(2, Ok(true)), (4, bad())]), ClaimPlan { chosen: Some((2, false)), drop: vec![4] });
        assert_eq!(plan(&[(4, bad())]), ClaimPlan { chosen: None, drop: vec![4] });
        assert_eq!(plan(&[]), ClaimPlan { chosen: None, drop: vec![] });
    }
}
