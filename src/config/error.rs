//! A configuration problem, naming the file, the key and, for syntax and type errors, the line.

use std::path::PathBuf;

/// A configuration problem, naming the file or key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or type error, with the line and, for a type error, the key.
    #[error("{path}:{line}:{column}: {key}{message}", path = path.display(), key = key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The key whose value has the wrong type (`difficulty.initial`); none for syntax.
        key: Option<String>,
        /// The parser's message.
        message: String,
    },
    /// A value that parses but is not acceptable.
    #[error("{key}: {message}")]
    Invalid {
        /// Key path, e.g. `difficulty.min`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A problem in a named file, at the line of its key where it could be found.
    #[error("{path}{at}: {source}", path = path.display(), at = line.map(|l| format!(":{l}")).unwrap_or_default())]
    InFile {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key the problem names.
        line: Option<usize>,
        /// The problem.
        #[source]
        source: Box<ConfigError>,
    },
}

/// A value that parses but is not acceptable, at `key`.
pub(super) fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message,
    }
}
