//! systemd readiness protocol (`sd_notify`): READY, WATCHDOG, STOPPING, STATUS. Every call is a no-op when the
//! daemon was not started by systemd (`NOTIFY_SOCKET` unset).

use sd_notify::NotifyState;
use std::time::Duration;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Startup finished: the admin endpoint is listening and every configured portal runs.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A status line for `systemctl status`, before READY (a standby says it waits).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The event loop answered its health probe in time.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// A graceful shutdown started; `extend` is how long it may take (systemd extends its stop timeout to match).
pub fn stopping(extend: Duration) {
    let usec = u32::try_from(extend.as_micros()).unwrap_or(u32::MAX);
    send(&[NotifyState::Stopping, NotifyState::ExtendTimeoutUsec(usec), NotifyState::Status("draining")]);
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}
