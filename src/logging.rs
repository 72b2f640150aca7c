//! Log output: human-readable text, JSON lines, or journald-friendly lines with syslog priority prefixes.
//!
//! `MIMI_BRIDGE_LOG` (a tracing filter) overrides `log.level`, `MIMI_BRIDGE_LOG_FORMAT` (`auto`, `text`, `json`,
//! `journald`) overrides `log.format`. Spans opened by the core (`portal`, `leg`, `inbound`, `deliver`) carry the
//! portal, the leg and the message id into every line logged inside them.

use crate::config::{LogConfig, LogFormat};
use std::fmt;
use std::io::IsTerminal;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The format in force: the environment variable, else the config, with `auto` decided now.
pub fn effective_format(cfg: &LogConfig) -> LogFormat {
    let chosen = match std::env::var("MIMI_BRIDGE_LOG_FORMAT").ok().as_deref().map(str::trim) {
        Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some("journald") => LogFormat::Journald,
        Some("auto") => LogFormat::Auto,
        _ => cfg.format,
    };
    match chosen {
        // systemd sets JOURNAL_STREAM when stdout/stderr are connected to the journal.
        LogFormat::Auto if std::env::var_os("JOURNAL_STREAM").is_some() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    }
}

/// Installs the global subscriber (once; later calls are ignored).
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_env("MIMI_BRIDGE_LOG")
        .or_else(|_| EnvFilter::try_new(cfg.level.get_ref()))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let _ = match effective_format(cfg) {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).try_init(),
        LogFormat::Journald => builder.with_ansi(false).event_format(Journald).try_init(),
        LogFormat::Text | LogFormat::Auto => builder.with_ansi(std::io::stdout().is_terminal()).try_init(),
    };
}

/// journald's stdout protocol: `<PRIORITY>` prefix (sd-daemon(3)), no timestamp (the journal adds its own), no
/// colour; then spans (with their fields) and the event.
struct Journald;

fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        write!(w, "<{}>{} ", priority(meta.level()), meta.level())?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(w, "{}", span.name())?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(w, "{{{fields}}}")?;
                }
                w.write_str(": ")?;
            }
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}
