//! Tokens: read from a file or the environment, never printed.

use std::path::{Path, PathBuf};

use super::ConfigError;

/// A secret whose `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// The token in `file` (surrounding whitespace trimmed) if one is named,
    /// else in the environment variable `env`; `what` names it in errors.
    /// An empty token is refused: it would accept anyone.
    pub fn load(file: Option<&Path>, env: &str, what: &str) -> Result<Option<Secret>, ConfigError> {
        let secret = match file {
            Some(path) => {
                let raw = std::fs::read(path).map_err(|source| ConfigError::Token {
                    path: PathBuf::from(path),
                    source,
                })?;
                Some(Secret(raw.trim_ascii().to_vec()))
            }
            None => std::env::var(env)
                .ok()
                .map(|t| Secret(t.trim().as_bytes().to_vec())),
        };
        if secret.as_ref().is_some_and(|t| t.0.is_empty()) {
            return Err(ConfigError::Invalid(format!(
                "the {what} token is empty: put a non-empty token in the token file (or unset it)"
            )));
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_not_printed() {
        assert_eq!(
            format!("{:?}", Secret(b"hunter2".to_vec())),
            "Secret(<redacted>)"
        );
    }
}
