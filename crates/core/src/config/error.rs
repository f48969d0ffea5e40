//! Errors: which file, which key, what value, what was expected.

use super::*;

/// A bad config: which file, which key, what value and what was expected.
///
/// Displayed as ``{file}: key `{key}`: bad value {value}: expected {expected}`` (without
/// the file part when `file` is `None`). For errors found by the TOML parser, `expected`
/// ends with the line and column, e.g. `(line 5, column 1)`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigError {
    /// The config file, when known.
    pub file: Option<PathBuf>,
    /// Dotted key, e.g. `postgresql.port`.
    pub key: String,
    /// The offending value as written (a TOML literal), or `(unknown key)`, `(missing)`,
    /// `(not set)`.
    pub value: String,
    /// What would have been accepted.
    pub expected: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        write!(
            f,
            "key `{}`: bad value {}: expected {}",
            self.key, self.value, self.expected
        )
    }
}

impl ConfigError {
    pub(crate) fn new(
        key: impl Into<String>,
        value: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: None,
            key: key.into(),
            value: value.into(),
            expected: expected.into(),
        }
    }

    pub(super) fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_path_buf());
        self
    }
}
