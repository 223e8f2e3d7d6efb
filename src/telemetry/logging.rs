//! Log output for both daemons: human-readable text or one JSON object per line, on
//! standard error, filtered by a level (`info`) or a full `tracing` filter directive
//! (`info,keycard::audit=info,h2=warn`). `RUST_LOG`, when set, overrides the configured
//! level so that an operator can turn up detail without editing the config file.
//!
//! Text lines are coloured only when standard error is a terminal and `NO_COLOR` is unset
//! (or empty), so that files and pipes get plain text. Times in fields are written in
//! RFC 3339 with [`rfc3339`], never as a `SystemTime` debug dump.

use std::ffi::OsString;
use std::fmt;
use std::io::IsTerminal as _;
use std::str::FromStr;
use std::time::SystemTime;

use tracing_subscriber::EnvFilter;

/// The environment variable that overrides the configured log level.
pub const LOG_ENV: &str = "RUST_LOG";

/// How log lines are written. Config and flag names: `text` (the default), `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// The configuration name: `text` or `json`.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LogFormat {
    type Err = LoggingError;
    fn from_str(s: &str) -> Result<Self, LoggingError> {
        [LogFormat::Text, LogFormat::Json]
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| LoggingError::UnknownFormat(s.to_string()))
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The log format is neither `text` nor `json`.
    #[error("unknown log format {0:?}; expected \"text\" or \"json\"")]
    UnknownFormat(String),
    /// The level is not a valid `tracing` filter directive.
    #[error(
        "invalid log level {level:?} (expected a level such as \"info\" or a filter such as \"info,h2=warn\"): {reason}"
    )]
    BadLevel {
        /// What was given.
        level: String,
        /// The filter parser's message.
        reason: String,
    },
    /// `RUST_LOG` is set to something that is not a valid filter.
    #[error("invalid {LOG_ENV} value {value:?}: {reason}")]
    BadEnv {
        /// The variable's value.
        value: String,
        /// The filter parser's message.
        reason: String,
    },
}

/// Parses a level or filter directive (`info`, `debug,h2=warn`) as configured.
pub fn parse_level(level: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::builder()
        .parse(level)
        .map_err(|e| LoggingError::BadLevel { level: level.to_string(), reason: e.to_string() })
}

/// The filter in force: `RUST_LOG` when it is set and not empty, else `level`.
fn filter(level: &str) -> Result<EnvFilter, LoggingError> {
    match std::env::var(LOG_ENV) {
        Ok(value) if !value.trim().is_empty() => EnvFilter::builder()
            .parse(&value)
            .map_err(|e| LoggingError::BadEnv { value, reason: e.to_string() }),
        _ => parse_level(level),
    }
}

/// The environment variable that turns colours off when set to anything (no-color.org).
pub const NO_COLOR_ENV: &str = "NO_COLOR";

/// Whether log lines get ANSI colours: only on a terminal, and only without `NO_COLOR`.
fn colours_wanted(stderr_is_terminal: bool, no_color: Option<OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

/// A time for a log field: `expires_at = %rfc3339(at)` logs `2026-12-02T11:52:59Z`.
pub fn rfc3339(at: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(at)
}

/// Installs the global log subscriber, writing to standard error. Returns `Ok(false)`
/// without changing anything when a global subscriber is already installed (a second
/// call, or a test harness), so tests may call it freely.
pub fn init(format: LogFormat, level: &str) -> Result<bool, LoggingError> {
    let colours = colours_wanted(std::io::stderr().is_terminal(), std::env::var_os(NO_COLOR_ENV));
    install(format, level, std::io::stderr, colours)
}

/// The subscriber's settings, before the format is chosen.
fn builder<W>(
    filter: EnvFilter,
    writer: W,
    colours: bool,
) -> tracing_subscriber::fmt::SubscriberBuilder<
    tracing_subscriber::fmt::format::DefaultFields,
    tracing_subscriber::fmt::format::Format,
    EnvFilter,
    W,
>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    // A daemon must outlive its log reader: with internal-error logging on, a write to a
    // closed stderr makes the subscriber `eprintln!`, which panics the logging task.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(colours)
        .log_internal_errors(false)
}

/// [`init`] with any writer (tests use the harness's captured writer).
fn install<W>(
    format: LogFormat,
    level: &str,
    writer: W,
    colours: bool,
) -> Result<bool, LoggingError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = builder(filter(level)?, writer, colours);
    let installed = match format {
        LogFormat::Text => builder.try_init().is_ok(),
        LogFormat::Json => builder.json().with_current_span(false).try_init().is_ok(),
    };
    Ok(installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip() {
        for f in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(f.name().parse::<LogFormat>().unwrap(), f);
        }
        assert_eq!(LogFormat::default(), LogFormat::Text);
        assert!(matches!("yaml".parse::<LogFormat>(), Err(LoggingError::UnknownFormat(_))));
    }

    #[test]
    fn levels_are_checked() {
        assert!(parse_level("info").is_ok());
        assert!(parse_level("debug,h2=warn,keycard::audit=info").is_ok());
        assert!(matches!(parse_level("info,h2=loud"), Err(LoggingError::BadLevel { .. })));
    }

    #[test]
    fn init_twice_is_harmless() {
        let writer = tracing_subscriber::fmt::TestWriter::new;
        let first = install(LogFormat::Json, "info", writer, false).unwrap();
        let second = install(LogFormat::Text, "debug", writer, false).unwrap();
        assert!(!second, "a second init must not replace the subscriber");
        // The first may be false too when another test installed one already.
        let _ = first;
        assert!(
            matches!(
                install(LogFormat::Text, "info,x=loud", writer, false),
                Err(LoggingError::BadLevel { .. })
            ) || std::env::var(LOG_ENV).is_ok()
        );
        tracing::info!(target: "keycard::test", "logging works after init");
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours_wanted(true, None));
        assert!(colours_wanted(true, Some(OsString::new())), "an empty NO_COLOR does not count");
        assert!(!colours_wanted(true, Some("1".into())));
        assert!(!colours_wanted(false, None), "a file or a pipe gets no colours");
    }

    /// A writer that keeps what is logged, for reading back.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_log_written_to_a_pipe_is_plain_text_with_rfc3339_times() {
        let captured = Captured::default();
        let writer = {
            let captured = captured.clone();
            move || captured.clone()
        };
        // What init chooses when stderr is a pipe or a file.
        let colours = colours_wanted(false, None);
        let subscriber = builder(parse_level("info").unwrap(), writer, colours).finish();
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(expires_at = %rfc3339(at), "agent identity ready");
        });
        let line = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(line.contains("agent identity ready"), "{line}");
        assert!(!line.contains('\x1b'), "ANSI escapes in a pipe: {line:?}");
        assert!(line.contains("expires_at=2023-11-14T22:13:20Z"), "{line}");
        assert!(!line.contains("SystemTime"), "{line}");
    }
}
