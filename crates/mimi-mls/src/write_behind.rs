//! Write-behind of a group's message secrets: what keeps the cost of an application message flat in group size.
//!
//! OpenMLS hands the group's whole message-secrets state to storage on every encrypt and decrypt: the secret tree
//! of the current epoch (~2N nodes) and, for each past epoch kept, its tree and the list of its N members. Encoding
//! that is O(N) — milliseconds a message at 10 000 members. So application messages do not write it: their writes
//! are *deferred* ([`crate::MlsStorage`]), and the state is encoded every
//! [`crate::MlsBackend::set_write_behind_ops`] operations (default [`crate::WRITE_BEHIND_OPS`], at most a quarter of
//! the group's `maximum_forward_distance`), at a decrypt 2 s or more after the last encoding (checked then: no
//! timer), when an encrypt needs a new reservation, when the group is closed, and by every operation
//! that makes OpenMLS write the secrets itself (merging a commit, joining, creating). The past epochs are stored
//! apart from the rest ([`crate::MlsStorage`]) and not encoded again when only current-epoch messages were
//! handled since: their member lists are neither encoded nor written.
//!
//! On disk, the message secrets are therefore *behind* the group in memory. Two rules make that safe across a
//! kill -9:
//!
//! * **Receiving.** Stale receive ratchets can only decrypt *more*, never less: after a crash the group processes
//!   the log again from its cursor and decrypts what the stale state had not yet durably consumed. (The kept list of
//!   decrypted messages is sealed with each operation, and a batch is never durable before the ones sealed earlier,
//!   so the state on disk never consumed a message whose plaintext was lost.) The gap must stay below the ratchet's
//!   `maximum_forward_distance` (1 000): at most 200 operations behind (and, while decrypting, 2 s), plus what
//!   senders burnt meanwhile.
//! * **Sending.** Reusing a generation after a crash would reuse an AEAD nonce. So encrypts run under a durable
//!   **reservation**: a record sealed with the group's state, in the same atomic batch, saying "the sender ratchet
//!   on disk is at count `sent`; ciphertexts up to count `reserved` may have been released". A ciphertext is
//!   released only once the reservation covering it is durable. After a crash, the group loaded from disk first
//!   **burns** `reserved − sent` generations (encrypts that are thrown away; only successful ones count), so its
//!   next real message uses a generation no ciphertext used before. Reservations start at 16 encrypts per epoch
//!   and double up to the encoding interval, so a group that sends little burns little; a clean close records
//!   that nothing beyond what was sent was used, and burns nothing.
//!
//! Counts are relative: `sent` counts encrypts in the epoch since the group was opened, and only `reserved − sent`
//! matters. Every encoding of the state writes the record in the same operation. (Where they can disagree — write
//! -through mode leaves an old record, a record that failed to encode — the burn is larger, never smaller.)
//!
//! This module is the bookkeeping, sans IO: [`crate::PortalGroup`] asks it what to do and tells it what happened.

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The record's name in the group's partition.
pub(crate) const RECORD: &[u8] = b"ratchet-reservation";

/// The reservation record, sealed with every encoding of the group's message secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Reservation {
    /// The epoch of the state it was written with.
    pub epoch: u64,
    /// Encrypt attempts in `epoch` counted into the state written with the record.
    pub sent: u64,
    /// Encrypt attempts in `epoch` that may have been released: `reserved − sent` generations to burn after a
    /// crash.
    pub reserved: u64,
}

/// What the group must do before an encrypt ([`WriteBehind::before_encrypt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BeforeEncrypt {
    /// Throw away this many generations first (the state was loaded after a crash).
    Burn(u64),
    /// Encode the state and seal a bigger reservation (its durability covers this encrypt and the next ones).
    Reserve,
    /// Encrypt: the reservation covers it.
    Go,
}

/// What an encoding of the state does to the reservation ([`WriteBehind::encoded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extend {
    /// Reserve the next step (doubling, up to the interval): an encrypt needs it.
    Grow,
    /// Keep the reservation sealed before (a new epoch starts with the smallest step).
    Keep,
    /// Nothing more will be sent from this object (it is closed): reserve nothing beyond what was sent, so that a
    /// clean restart burns nothing.
    Shrink,
}

/// The first reservation of an epoch; each next one doubles, up to the encoding interval. A group that sends
/// little burns little after a crash.
const FIRST_STEP: u64 = 16;

/// Deferred decrypts are encoded after this long even if fewer than the interval happened, so that a receiver's
/// state on disk trails by little time too (a sender that crashed several times meanwhile jumps ahead by up to
/// one reservation each time; the ratchet accepts jumps up to `maximum_forward_distance`).
const ENCODE_AFTER: Duration = Duration::from_secs(2);

/// The write-behind bookkeeping of one group, for one local member. See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct WriteBehind {
    /// Operations between two encodings of the state; 0: write-through (no deferral).
    every: u64,
    epoch: u64,
    sent: u64,
    reserved: u64,
    /// The size of the next reservation.
    step: u64,
    /// Generations still to burn before the next encrypt.
    burn: u64,
    /// Deferred operations since the state was last encoded.
    behind: u64,
    /// When the state was last encoded (or the group opened).
    encoded_at: Instant,
    /// The storage operation that sealed the current reservation (wait for it before releasing a ciphertext).
    reservation_seq: Option<u64>,
}

impl WriteBehind {
    /// Bookkeeping for a group at `epoch`, as loaded at `now`: `record` is the reservation found on disk, if any.
    pub(crate) fn loaded(every: u64, epoch: u64, record: Option<Reservation>, now: Instant) -> Self {
        let mut wb = Self {
            every,
            epoch,
            sent: 0,
            reserved: 0,
            step: FIRST_STEP.min(every.max(1)),
            burn: 0,
            behind: 0,
            encoded_at: now,
            reservation_seq: None,
        };
        if let Some(r) = record.filter(|r| r.epoch == epoch && r.reserved > r.sent) {
            // Ciphertexts up to `reserved` may be out there, made by a state newer than the one on disk.
            wb.sent = r.sent;
            wb.reserved = r.reserved;
            wb.burn = r.reserved - r.sent;
        }
        wb
    }

    /// Bookkeeping for a group just created or joined (its state was written through).
    #[cfg(test)]
    pub(crate) fn fresh(every: u64, epoch: u64, now: Instant) -> Self {
        Self::loaded(every, epoch, None, now)
    }

    /// Whether application messages defer their writes.
    pub(crate) fn enabled(&self) -> bool {
        self.every > 0
    }

    /// Deferred operations since the state was last encoded.
    pub(crate) fn behind(&self) -> u64 {
        self.behind
    }

    /// Whether encrypts were reserved beyond those made (a clean close should record that they were not).
    pub(crate) fn reserved_ahead(&self) -> bool {
        self.reserved > self.sent
    }

    /// What to do before the next encrypt.
    pub(crate) fn before_encrypt(&self) -> BeforeEncrypt {
        if self.burn > 0 {
            BeforeEncrypt::Burn(self.burn)
        } else if self.sent >= self.reserved {
            BeforeEncrypt::Reserve
        } else {
            BeforeEncrypt::Go
        }
    }

    /// `n` generations were burnt (each a successful encrypt, deferred). Only those that succeeded count: a
    /// failed one did not advance the ratchet.
    pub(crate) fn burnt(&mut self, n: u64) {
        self.burn = self.burn.saturating_sub(n);
        self.sent += n;
        self.behind += n;
    }

    /// An encrypt attempt, deferred.
    pub(crate) fn encrypted(&mut self) {
        self.sent += 1;
        self.behind += 1;
    }

    /// A decrypt (or another deferred operation) at `now`; true if the state should now be encoded.
    pub(crate) fn decrypted(&mut self, now: Instant) -> bool {
        self.behind += 1;
        self.behind >= self.every || now.saturating_duration_since(self.encoded_at) >= ENCODE_AFTER
    }

    /// The state was encoded at `now` (by a flush, or by an operation that wrote through) with the group at
    /// `epoch`: returns the record to seal with it.
    pub(crate) fn encoded(&mut self, epoch: u64, extend: Extend, now: Instant) -> Reservation {
        if epoch != self.epoch {
            // A new epoch: a fresh sender ratchet, nothing sent in it yet, nothing to burn.
            self.epoch = epoch;
            self.sent = 0;
            self.reserved = 0;
            self.burn = 0;
            self.step = FIRST_STEP.min(self.every.max(1));
        }
        match extend {
            Extend::Grow => {
                self.reserved = self.sent + self.step;
                self.step = (self.step * 2).min(self.every.max(1));
            }
            Extend::Keep => {}
            // Not while generations are still to burn: the record must keep saying so.
            Extend::Shrink if self.burn == 0 => self.reserved = self.sent,
            Extend::Shrink => {}
        }
        self.behind = 0;
        self.encoded_at = now;
        Reservation { epoch: self.epoch, sent: self.sent, reserved: self.reserved.max(self.sent) }
    }

    /// The storage operation `seq` sealed the record [`WriteBehind::encoded`] returned.
    pub(crate) fn sealed(&mut self, seq: Option<u64>) {
        if seq.is_some() {
            self.reservation_seq = seq;
        }
    }

    /// The state was encoded but its record could not be written: no encrypt may rest on the reservation in
    /// memory; the next one writes a new record and waits for it.
    pub(crate) fn unreserve(&mut self) {
        self.reserved = self.sent;
    }

    /// The storage operation a ciphertext must wait for.
    pub(crate) fn reservation_seq(&self) -> Option<u64> {
        self.reservation_seq
    }

    /// The group's state is gone (deleted): nothing left to encode.
    pub(crate) fn forget(&mut self) {
        self.behind = 0;
        self.every = 0;
        self.reserved = self.sent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn reservations_start_small_and_double_up_to_the_interval() {
        let now = t0();
        let mut wb = WriteBehind::fresh(40, 1, now);
        let mut reserved = Vec::new();
        for _ in 0..5 {
            assert_eq!(wb.before_encrypt(), BeforeEncrypt::Reserve);
            let r = wb.encoded(1, Extend::Grow, now);
            reserved.push(r.reserved - r.sent);
            while wb.before_encrypt() == BeforeEncrypt::Go {
                wb.encrypted();
            }
        }
        assert_eq!(reserved, [16, 32, 40, 40, 40]);
    }

    #[test]
    fn after_a_crash_the_released_but_unwritten_generations_are_burnt() {
        let now = t0();
        let mut wb = WriteBehind::loaded(200, 4, Some(Reservation { epoch: 4, sent: 10, reserved: 210 }), now);
        assert_eq!(wb.before_encrypt(), BeforeEncrypt::Burn(200));
        // A partial burn (an encrypt failed) leaves the rest to burn, and the record keeps saying so.
        wb.burnt(150);
        assert_eq!(wb.before_encrypt(), BeforeEncrypt::Burn(50));
        assert_eq!(wb.encoded(4, Extend::Shrink, now), Reservation { epoch: 4, sent: 160, reserved: 210 });
        wb.burnt(50);
        // Burnt up to the reservation: a new one (durable) before the next real message.
        assert_eq!(wb.before_encrypt(), BeforeEncrypt::Reserve);
        assert_eq!(wb.encoded(4, Extend::Grow, now), Reservation { epoch: 4, sent: 210, reserved: 226 });
    }

    #[test]
    fn a_record_of_another_epoch_or_without_reservation_burns_nothing() {
        let now = t0();
        let old = WriteBehind::loaded(200, 5, Some(Reservation { epoch: 4, sent: 0, reserved: 200 }), now);
        assert_eq!(old.before_encrypt(), BeforeEncrypt::Reserve);
        let none = WriteBehind::loaded(200, 5, Some(Reservation { epoch: 5, sent: 7, reserved: 7 }), now);
        assert_eq!(none.before_encrypt(), BeforeEncrypt::Reserve);
    }

    #[test]
    fn a_new_epoch_resets_the_counts_and_a_clean_close_reserves_nothing_ahead() {
        let now = t0();
        let mut wb = WriteBehind::fresh(200, 1, now);
        wb.encoded(1, Extend::Grow, now);
        wb.encrypted();
        assert_eq!(wb.encoded(2, Extend::Keep, now), Reservation { epoch: 2, sent: 0, reserved: 0 });
        assert_eq!(wb.before_encrypt(), BeforeEncrypt::Reserve);
        wb.encoded(2, Extend::Grow, now);
        wb.encrypted();
        assert!(wb.reserved_ahead());
        assert_eq!(wb.encoded(2, Extend::Shrink, now), Reservation { epoch: 2, sent: 1, reserved: 1 });
    }

    #[test]
    fn an_encoding_that_keeps_keeps_the_reservation_already_sealed() {
        let now = t0();
        let mut wb = WriteBehind::fresh(200, 1, now);
        wb.encoded(1, Extend::Grow, now);
        for _ in 0..5 {
            wb.encrypted();
        }
        assert_eq!(wb.encoded(1, Extend::Keep, now), Reservation { epoch: 1, sent: 5, reserved: 16 });
    }

    #[test]
    fn decrypts_ask_for_an_encoding_every_n_or_after_a_while() {
        let now = t0();
        let mut wb = WriteBehind::fresh(3, 1, now);
        assert!(!wb.decrypted(now));
        assert!(!wb.decrypted(now));
        assert!(wb.decrypted(now));
        wb.encoded(1, Extend::Keep, now);
        assert_eq!(wb.behind(), 0);
        assert!(wb.decrypted(now + ENCODE_AFTER));
    }
}
