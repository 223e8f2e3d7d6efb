//! Log output for both daemons: human-readable text or one JSON object per line, on
//! standard error, filtered by a level (`info`) or a full `tracing` filter directive
//! (`info,keycard::audit=info,h2=warn`). `RUST_LOG`, when set, overrides the configured
//! level so that an operator can turn up detail without editing the config file.

use std::fmt;
use std::str::FromStr;

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

/// Installs the global log subscriber, writing to standard error. Returns `Ok(false)`
/// without changing anything when a global subscriber is already installed (a second
/// call, or a test harness), so tests may call it freely.
pub fn init(format: LogFormat, level: &str) -> Result<bool, LoggingError> {
    install(format, level, std::io::stderr)
}

/// [`init`] with any writer (tests use the harness's captured writer).
fn install<W>(format: LogFormat, level: &str, writer: W) -> Result<bool, LoggingError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = filter(level)?;
    // A daemon must outlive its log reader: with internal-error logging on, a write to a
    // closed stderr makes the subscriber `eprintln!`, which panics the logging task.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .log_internal_errors(false);
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
        let first = install(LogFormat::Json, "info", writer).unwrap();
        let second = install(LogFormat::Text, "debug", writer).unwrap();
        assert!(!second, "a second init must not replace the subscriber");
        // The first may be false too when another test installed one already.
        let _ = first;
        assert!(
            matches!(
                install(LogFormat::Text, "info,x=loud", writer),
                Err(LoggingError::BadLevel { .. })
            ) || std::env::var(LOG_ENV).is_ok()
        );
        tracing::info!(target: "keycard::test", "logging works after init");
    }
}
