//! The leader lease: exactly one daemon writes to a database at a time, and one that lost the lease writes
//! nothing more, even if it was paused while another took over.
//!
//! The lease is the one row of `mimi_leader`: a holder, an expiry on the server's clock, and an **epoch** that grows
//! by one at every takeover. A daemon takes the lease only when it has expired, renews it every third of its
//! length, and gives it up on a clean stop (a standby then takes over at once).
//!
//! Fencing: every write transaction begins by locking the row `FOR SHARE` and checking that holder and epoch are
//! still its own and the lease unexpired. A takeover's `UPDATE` waits for that lock, so a write is either committed
//! before the takeover or refused after it; a daemon resumed after a `SIGSTOP` finds another epoch and its store
//! fails (fail-stop, see [`crate::commit`]). The write connection has `idle_in_transaction_session_timeout` set,
//! so a daemon stopped in the middle of a transaction cannot hold the row lock, and the takeover, for long.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Takes the lease if it has expired: returns the new epoch.
pub(crate) const ACQUIRE: &str = "UPDATE mimi_leader
     SET holder = $1, epoch = epoch + 1, expires_at = clock_timestamp() + make_interval(secs => $2)
     WHERE id = 1 AND expires_at < clock_timestamp()
     RETURNING epoch";

/// Who holds the lease, and for how many more seconds.
pub(crate) const HOLDER: &str =
    "SELECT holder, extract(epoch FROM expires_at - clock_timestamp())::float8 FROM mimi_leader WHERE id = 1";

/// Extends our lease; touches no row if it is not ours any more or has expired.
pub(crate) const RENEW: &str = "UPDATE mimi_leader
     SET expires_at = clock_timestamp() + make_interval(secs => $3)
     WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > clock_timestamp()";

/// The fence at the start of every write transaction: one row only while the lease is ours.
pub(crate) const FENCE: &str = "SELECT 1 FROM mimi_leader
     WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > clock_timestamp()
     FOR SHARE";

/// Gives the lease up (a clean stop).
pub(crate) const RELEASE: &str = "UPDATE mimi_leader SET expires_at = 'epoch'
     WHERE id = 1 AND holder = $1 AND epoch = $2";

/// The lease this daemon holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// This daemon's name in `mimi_leader.holder`: host, process id and a random part, so that a restarted
    /// daemon is a new holder.
    pub holder: String,
    /// The fencing token: the number of takeovers so far, this one included.
    pub epoch: i64,
}

impl Lease {
    /// A fresh holder name for this process.
    pub(crate) fn holder_name() -> String {
        // uname(2), not /proc: the shipped systemd unit hides /proc/sys (ProcSubset=pid).
        let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
        let nonce: u32 =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
                ^ std::process::id().rotate_left(16);
        format!("{host}/{}/{nonce:08x}", std::process::id())
    }
}

/// What the renewer knows: since when the lease is surely ours, and why it was lost, if it was.
pub(crate) struct LeaseState {
    lease: Duration,
    inner: Mutex<Inner>,
}

struct Inner {
    /// The lease is ours until this instant at least (renewal time + length, on our own monotonic clock; the
    /// server's expiry is later, since the server set it after we sent the renewal).
    valid_until: Instant,
    lost: Option<String>,
}

/// What to do after a renewal attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// Renew again after this long.
    Again(Duration),
    /// The lease is lost: stop.
    Lost,
}

impl LeaseState {
    /// The state right after taking the lease at `now` (sans-IO: the caller passes the time).
    pub(crate) fn new(lease: Duration, now: Instant) -> Self {
        Self { lease, inner: Mutex::new(Inner { valid_until: now + lease, lost: None }) }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How often to renew.
    pub(crate) fn interval(&self) -> Duration {
        self.lease / 3
    }

    /// Records the result of a renewal sent at `sent`: `Ok(true)` renewed, `Ok(false)` the row was not ours any
    /// more (another daemon took over), `Err` the server did not answer. An error is retried until the lease
    /// would have run out.
    pub(crate) fn renewed(&self, sent: Instant, result: Result<bool, String>, now: Instant) -> Renewal {
        let mut inner = self.inner();
        if inner.lost.is_some() {
            return Renewal::Lost;
        }
        match result {
            Ok(true) => {
                inner.valid_until = sent + self.lease;
                Renewal::Again(self.interval())
            }
            Ok(false) => {
                inner.lost = Some(
                    "the leader lease is no longer this daemon's (it ran out, or another mimi-bridge took over)".into(),
                );
                Renewal::Lost
            }
            Err(e) if now >= inner.valid_until => {
                inner.lost = Some(format!("the leader lease ran out: it could not be renewed ({e})"));
                Renewal::Lost
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the leader lease; retrying");
                Renewal::Again(Duration::from_millis(200).min(inner.valid_until - now))
            }
        }
    }

    /// Why the lease is lost, if it is.
    pub(crate) fn lost(&self) -> Option<String> {
        self.inner().lost.clone()
    }

    /// Why this daemon may not act as the leader at `now`, if it may not: the lease is lost, or it ran out on our
    /// own clock without a renewal (a process resumed after a pause learns so here before any renewal fails).
    pub(crate) fn refused_at(&self, now: Instant) -> Option<String> {
        let inner = self.inner();
        if let Some(why) = &inner.lost {
            return Some(why.clone());
        }
        (now >= inner.valid_until).then(|| {
            "the leader lease ran out without a renewal (was this daemon paused?): another mimi-bridge may be active"
                .to_owned()
        })
    }

    /// Marks the lease lost (a write's fence found it so).
    pub(crate) fn lose(&self, why: String) {
        let mut inner = self.inner();
        if inner.lost.is_none() {
            inner.lost = Some(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_failures_are_retried_until_the_lease_would_run_out() {
        let t0 = Instant::now();
        let s = LeaseState::new(Duration::from_secs(6), t0);
        assert_eq!(s.interval(), Duration::from_secs(2));
        assert_eq!(s.renewed(t0, Ok(true), t0), Renewal::Again(Duration::from_secs(2)));
        let t2 = t0 + Duration::from_secs(2);
        assert!(matches!(s.renewed(t2, Err("timeout".into()), t2), Renewal::Again(_)));
        assert!(s.lost().is_none());
        let t7 = t0 + Duration::from_secs(7);
        assert_eq!(s.renewed(t7, Err("timeout".into()), t7), Renewal::Lost);
        assert!(s.lost().is_some_and(|w| w.contains("ran out")));
    }

    #[test]
    fn a_lease_taken_over_is_lost_for_good() {
        let t0 = Instant::now();
        let s = LeaseState::new(Duration::from_secs(3), t0);
        assert_eq!(s.renewed(t0, Ok(false), t0), Renewal::Lost);
        assert_eq!(s.renewed(t0, Ok(true), t0), Renewal::Lost, "a later renewal does not bring it back");
        assert!(s.lost().is_some_and(|w| w.contains("took over")));
    }

    #[test]
    fn a_lease_run_out_on_our_clock_refuses_before_any_renewal_fails() {
        let t0 = Instant::now();
        let s = LeaseState::new(Duration::from_secs(3), t0);
        assert_eq!(s.refused_at(t0 + Duration::from_secs(2)), None);
        let resumed = t0 + Duration::from_secs(10);
        assert!(s.refused_at(resumed).is_some_and(|w| w.contains("paused")), "a resumed process refuses at once");
        assert!(s.lost().is_none(), "without calling it lost: a renewal decides that");
    }
}
