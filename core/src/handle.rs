//! Container handles: which ones are acceptable, and the hostname a handle gives.

use thiserror::Error;

/// A handle names the container's directory in the depot, so it must be one safe path component.
pub const MAX_HANDLE_BYTES: usize = 255;

/// Linux allows 64 bytes of hostname; guardian keeps the last 49 characters of a long handle.
pub const HOSTNAME_CHARS: usize = 49;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidHandle {
    #[error("handle is empty")]
    Empty,
    #[error("handle is longer than {MAX_HANDLE_BYTES} bytes")]
    TooLong,
    #[error("handle may not contain '/'")]
    Slash,
    #[error("handle may not contain NUL or control characters")]
    ControlCharacter,
    #[error("handle may not be '.' or '..'")]
    DotPath,
}

pub fn validate(handle: &str) -> Result<(), InvalidHandle> {
    if handle.trim().is_empty() {
        return Err(InvalidHandle::Empty);
    }
    if handle.len() > MAX_HANDLE_BYTES {
        return Err(InvalidHandle::TooLong);
    }
    if handle.contains('/') {
        return Err(InvalidHandle::Slash);
    }
    if handle.chars().any(|c| c.is_control()) {
        return Err(InvalidHandle::ControlCharacter);
    }
    if handle == "." || handle == ".." {
        return Err(InvalidHandle::DotPath);
    }
    Ok(())
}

/// The container's hostname: the handle, or its last 49 characters when longer.
pub fn hostname(handle: &str) -> String {
    let chars: Vec<char> = handle.chars().collect();
    chars[chars.len().saturating_sub(HOSTNAME_CHARS)..]
        .iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unsafe_handles() {
        assert_eq!(validate(""), Err(InvalidHandle::Empty));
        assert_eq!(validate("  \t"), Err(InvalidHandle::Empty));
        assert_eq!(validate("a/b"), Err(InvalidHandle::Slash));
        assert_eq!(validate("a\0b"), Err(InvalidHandle::ControlCharacter));
        assert_eq!(validate("a\nb"), Err(InvalidHandle::ControlCharacter));
        assert_eq!(validate(".."), Err(InvalidHandle::DotPath));
        assert_eq!(validate(&"x".repeat(256)), Err(InvalidHandle::TooLong));
        assert_eq!(validate(&"x".repeat(255)), Ok(()));
        assert_eq!(validate("my-handle_1.2"), Ok(()));
    }

    #[test]
    fn hostname_keeps_the_last_49_characters() {
        assert_eq!(hostname("short"), "short");
        let long = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQR"; // 54 chars
        assert_eq!(hostname(long), &long[5..]);
        assert_eq!(hostname(long).len(), 49);
    }
}
