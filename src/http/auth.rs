//! HTTP Basic authentication with one read user and one write user.
//!
//! Credentials are compared as SHA-256 digests with a constant-time equality, so
//! neither the user name nor the password leaks through timing, whatever their length.

use base64::Engine as _;
use hyper::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Credentials;

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// GET or HEAD.
    Read,
    /// PUT.
    Write,
}

/// Who a request was authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credentials were sent.
    Anonymous,
    /// The configured read user.
    Reader(String),
    /// The configured write user.
    Writer(String),
}

impl Principal {
    /// The name written to the access log.
    pub fn log_name(&self) -> &str {
        match self {
            Principal::Anonymous => "-",
            Principal::Reader(n) | Principal::Writer(n) => n,
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Missing credentials: the client should retry with some.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Credentials that match no user: a wrong password, or a guess.
    #[error("{0}")]
    BadCredentials(&'static str),
    /// Valid credentials (or anonymous access) that do not allow this.
    #[error("{0}")]
    Forbidden(&'static str),
}

struct User {
    name: String,
    digest: [u8; 32],
}

impl User {
    fn new(c: &Credentials) -> Self {
        User {
            name: c.user.clone(),
            digest: digest(c.user.as_bytes(), c.password.as_bytes()),
        }
    }
}

fn digest(user: &[u8], password: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((user.len() as u64).to_le_bytes());
    h.update(user);
    h.update(password);
    h.finalize().into()
}

/// The access policy of the server.
pub struct Auth {
    read: Option<User>,
    write: Option<User>,
    anonymous_writes: bool,
}

impl Auth {
    /// Builds the policy. `anonymous_writes` is only honoured without a write user.
    pub fn new(
        read: Option<&Credentials>,
        write: Option<&Credentials>,
        anonymous_writes: bool,
    ) -> Self {
        Auth {
            read: read.map(User::new),
            write: write.map(User::new),
            anonymous_writes: anonymous_writes && write.is_none(),
        }
    }

    /// Whether reads need credentials (responses are then not for shared caches).
    pub fn reads_are_private(&self) -> bool {
        self.read.is_some()
    }

    /// Decides whether a request with these headers may do `access`.
    pub fn check(&self, headers: &HeaderMap, access: Access) -> Result<Principal, AuthError> {
        let principal = self.identify(headers)?;
        match (access, &principal) {
            (_, Principal::Writer(_)) => Ok(principal),
            (Access::Read, Principal::Reader(_)) => Ok(principal),
            (Access::Read, Principal::Anonymous) if self.read.is_none() => Ok(principal),
            (Access::Read, Principal::Anonymous) => {
                Err(AuthError::Unauthorized("credentials are required to read from this cache"))
            }
            (Access::Write, Principal::Reader(_)) => {
                Err(AuthError::Forbidden("the read user cannot upload to this cache"))
            }
            (Access::Write, Principal::Anonymous) if self.anonymous_writes => Ok(principal),
            (Access::Write, Principal::Anonymous) if self.write.is_some() => {
                Err(AuthError::Unauthorized("credentials are required to upload to this cache"))
            }
            (Access::Write, Principal::Anonymous) => Err(AuthError::Forbidden(
                "uploads are disabled: no write user is configured (NIX_STORED_USER_WRITE) and NIX_STORED_ANONYMOUS_WRITES is not true",
            )),
        }
    }

    fn identify(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        const WRONG: AuthError = AuthError::BadCredentials("wrong user name or password");
        let Some(value) = headers.get(hyper::header::AUTHORIZATION) else {
            return Ok(Principal::Anonymous);
        };
        let value = value.to_str().map_err(|_| WRONG)?;
        let (scheme, encoded) = value.split_once(' ').ok_or(WRONG)?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(AuthError::BadCredentials(
                "only HTTP Basic authentication is supported",
            ));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| WRONG)?;
        let colon = decoded.iter().position(|&b| b == b':').ok_or(WRONG)?;
        let given = digest(&decoded[..colon], &decoded[colon + 1..]);
        // Evaluate both comparisons unconditionally: which user matched must not
        // show in the timing either.
        let is_write = self
            .write
            .as_ref()
            .map_or(subtle::Choice::from(0), |u| u.digest.ct_eq(&given));
        let is_read = self
            .read
            .as_ref()
            .map_or(subtle::Choice::from(0), |u| u.digest.ct_eq(&given));
        match (
            bool::from(is_write),
            bool::from(is_read),
            &self.write,
            &self.read,
        ) {
            (true, _, Some(w), _) => Ok(Principal::Writer(w.name.clone())),
            (_, true, _, Some(r)) => Ok(Principal::Reader(r.name.clone())),
            _ => Err(WRONG),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(u: &str, p: &str) -> Credentials {
        Credentials {
            user: u.into(),
            password: p.into(),
        }
    }

    fn headers(auth: Option<(&str, &str)>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some((u, p)) = auth {
            let v = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            h.insert("authorization", format!("Basic {v}").parse().unwrap());
        }
        h
    }

    #[test]
    fn matrix_with_both_users() {
        let auth = Auth::new(Some(&creds("r", "rp")), Some(&creds("w", "wp")), true);
        let none = headers(None);
        let read = headers(Some(("r", "rp")));
        let write = headers(Some(("w", "wp")));
        let wrong = headers(Some(("w", "rp")));
        assert!(matches!(
            auth.check(&none, Access::Read),
            Err(AuthError::Unauthorized(_))
        ));
        assert!(matches!(
            auth.check(&read, Access::Read),
            Ok(Principal::Reader(_))
        ));
        assert!(matches!(
            auth.check(&write, Access::Read),
            Ok(Principal::Writer(_))
        ));
        assert!(matches!(
            auth.check(&wrong, Access::Read),
            Err(AuthError::BadCredentials(_))
        ));
        assert!(matches!(
            auth.check(&none, Access::Write),
            Err(AuthError::Unauthorized(_))
        ));
        assert!(matches!(
            auth.check(&read, Access::Write),
            Err(AuthError::Forbidden(_))
        ));
        assert!(matches!(
            auth.check(&write, Access::Write),
            Ok(Principal::Writer(_))
        ));
    }

    #[test]
    fn anonymous_policy() {
        let open = Auth::new(None, None, true);
        assert!(open.check(&headers(None), Access::Write).is_ok());
        assert!(open
            .check(&headers(Some(("x", "y"))), Access::Read)
            .is_err());
        let exposed = Auth::new(None, None, false);
        assert!(matches!(
            exposed.check(&headers(None), Access::Write),
            Err(AuthError::Forbidden(_))
        ));
        assert!(exposed.check(&headers(None), Access::Read).is_ok());
    }
}
