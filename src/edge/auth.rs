//! API keys (`--api-keys FILE`): each key names the endpoint groups it may call, and every call
//! but a probe must carry one as `authorization: Bearer <key>`, on gRPC and REST alike.
//!
//! The file holds one key per line followed by its groups, comma-separated (`*` for all):
//!
//! ```text
//! # who         key                               groups
//! 3f1c9a7be2d84c6f9a1e0b7d5c2f8e4a  inference,metadata
//! 9b2e7d1f4c8a6e3b0d5f2a9c7e1b4d8f  model-repository,statistics,metrics
//! ```
//!
//! Keys are compared in constant time (every key, every byte), so the time a refusal takes
//! says nothing about how close a guess was; they are never logged.

use std::path::Path;

use http::HeaderMap;

use crate::edge::routes::Group;
use crate::edge::status::ApiError;
use crate::error::ErrorKind;

/// The shortest key accepted: 128 bits of hex, so keys cannot be guessed.
pub const MIN_KEY_LEN: usize = 32;

/// The groups a key may call, one bit per [`Group::index`].
type Groups = u16;
/// Set in a match's mask whenever the key was one of ours, whatever its groups.
const KNOWN: Groups = 1 << 15;

/// The keys the server accepts.
#[derive(Clone)]
pub struct ApiKeys {
    keys: Vec<(Vec<u8>, Groups)>,
}

impl std::fmt::Debug for ApiKeys {
    /// Never the keys themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.keys.len())
    }
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// It cannot be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// A line is wrong.
    #[error("{path} line {line}: {reason}")]
    Line {
        /// The file.
        path: String,
        /// Its number, from 1.
        line: usize,
        /// What is wrong (never the key).
        reason: String,
    },
    /// It holds no key: every call but probes would be refused.
    #[error("{path} holds no key")]
    Empty {
        /// The file.
        path: String,
    },
}

/// The names a key file may give groups: Triton's restricted-protocol names.
fn group_named(name: &str) -> Option<Groups> {
    if name == "*" {
        return Some(Group::ALL.iter().fold(0, |m, g| m | 1 << g.index()));
    }
    Group::ALL
        .iter()
        .find(|g| **g != Group::Other && g.label() == name)
        .map(|g| 1 << g.index())
}

impl ApiKeys {
    /// Reads the key file at `path`.
    pub fn load(path: &Path) -> Result<ApiKeys, KeysError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| KeysError::Read {
            path: shown.clone(),
            error,
        })?;
        ApiKeys::parse(&text, &shown)
    }

    /// Parses a key file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<ApiKeys, KeysError> {
        let mut keys: Vec<(Vec<u8>, Groups)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: String| KeysError::Line {
                path: path.to_string(),
                line: i + 1,
                reason,
            };
            let mut words = line.split_whitespace();
            let (Some(key), Some(groups), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad(
                    "expected a key and its groups, e.g. `<key> inference,metadata`".into(),
                ));
            };
            if key.len() < MIN_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(format!(
                    "a key must be at least {MIN_KEY_LEN} printable characters (e.g. `openssl rand -hex 16`)"
                )));
            }
            let mut mask = 0;
            for name in groups.split(',').filter(|n| !n.is_empty()) {
                mask |= group_named(name).ok_or_else(|| {
                    bad(format!(
                        "unknown group '{name}'; the groups are health, metadata, inference, statistics, model-repository, metrics, or * for all"
                    ))
                })?;
            }
            if keys.iter().any(|(k, _)| k == key.as_bytes()) {
                return Err(bad("the same key is listed twice".into()));
            }
            keys.push((key.as_bytes().to_vec(), mask));
        }
        if keys.is_empty() {
            return Err(KeysError::Empty {
                path: path.to_string(),
            });
        }
        Ok(ApiKeys { keys })
    }

    /// Whether a call to `group` with `headers` may go on: probes always may; anything else
    /// needs a known key (UNAUTHENTICATED / 401) that lists the group (PERMISSION_DENIED / 403).
    /// A path in no group needs a key, any key, so that it is answered by its protocol.
    pub fn check(&self, headers: &HeaderMap, group: Group) -> Result<(), ApiError> {
        if group == Group::Health {
            return Ok(());
        }
        let Some(presented) = bearer(headers) else {
            return Err(ApiError::new(
                ErrorKind::Unauthenticated,
                "this server needs an API key: send `authorization: Bearer <key>`",
            ));
        };
        let granted = self.groups_of(presented);
        if granted & KNOWN == 0 {
            return Err(ApiError::new(
                ErrorKind::Unauthenticated,
                "the API key is not one this server accepts",
            ));
        }
        if group != Group::Other && granted & (1 << group.index()) == 0 {
            return Err(ApiError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "this API key may not call the {} endpoints; its line in --api-keys lists the groups it may",
                    group.label()
                ),
            ));
        }
        Ok(())
    }

    /// The groups of `presented` (with [`KNOWN`]) if it is one of the keys, else 0: every key
    /// is compared, every byte, whatever matched.
    fn groups_of(&self, presented: &[u8]) -> Groups {
        let mut granted: Groups = 0;
        for (key, groups) in &self.keys {
            let same = constant_time_eq(key, presented);
            // All ones when same, zero otherwise, without a branch.
            let mask = Groups::from(same).wrapping_neg();
            granted |= (groups | KNOWN) & mask;
        }
        granted
    }
}

/// The key in `authorization: Bearer <key>` (the scheme is case-insensitive, RFC 6750).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let key = rest.trim_ascii();
    (!key.is_empty()).then_some(key)
}

/// Whether `a` and `b` are equal, looking at every byte of `a` whatever differs: `a` is ours,
/// so the time depends on our key's length and the guess's, never on its content.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFER: &str = "0123456789abcdef0123456789abcdef";
    const ADMIN: &str = "fedcba9876543210fedcba9876543210";

    fn keys() -> ApiKeys {
        ApiKeys::parse(
            &format!("# comment\n\n{INFER} inference,metadata\n{ADMIN} *  # all\n"),
            "keys",
        )
        .unwrap()
    }

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    fn kind(result: Result<(), ApiError>) -> Option<ErrorKind> {
        result.err().map(|e| e.kind())
    }

    #[test]
    fn keys_open_their_groups_only() {
        let keys = keys();
        let infer = with(&format!("Bearer {INFER}"));
        assert_eq!(kind(keys.check(&infer, Group::Inference)), None);
        assert_eq!(kind(keys.check(&infer, Group::Metadata)), None);
        assert_eq!(
            kind(keys.check(&infer, Group::ModelRepository)),
            Some(ErrorKind::PermissionDenied)
        );
        assert_eq!(kind(keys.check(&infer, Group::Other)), None);
        let admin = with(&format!("bearer {ADMIN}"));
        for group in Group::ALL {
            assert_eq!(kind(keys.check(&admin, group)), None, "{group:?}");
        }
    }

    #[test]
    fn missing_malformed_and_wrong_keys_are_unauthenticated_but_probes_pass() {
        let keys = keys();
        let wrong = &INFER[..31];
        for headers in [
            HeaderMap::new(),
            with(INFER),
            with(&format!("Basic {INFER}")),
            with("Bearer "),
            with(&format!("Bearer {wrong}")),
            with(&format!("Bearer {INFER}0")),
        ] {
            assert_eq!(
                kind(keys.check(&headers, Group::Inference)),
                Some(ErrorKind::Unauthenticated),
                "{headers:?}"
            );
            assert_eq!(kind(keys.check(&headers, Group::Health)), None);
        }
    }

    #[test]
    fn bad_key_files_name_the_line_and_never_the_key() {
        for (text, line, words) in [
            ("short inference", 1, "at least 32"),
            (&format!("{INFER}\n") as &str, 1, "a key and its groups"),
            (
                &format!("\n{INFER} inference,admin"),
                2,
                "unknown group 'admin'",
            ),
            (&format!("{INFER} *\n{INFER} metadata"), 2, "twice"),
        ] {
            let error = ApiKeys::parse(text, "keys").unwrap_err().to_string();
            assert!(
                error.contains(&format!("line {line}")) && error.contains(words),
                "{error}"
            );
            assert!(!error.contains(INFER), "{error}");
        }
        assert!(matches!(
            ApiKeys::parse("# nothing\n", "keys"),
            Err(KeysError::Empty { .. })
        ));
        assert_eq!(format!("{:?}", keys()), "ApiKeys(2 keys)");
    }
}
