//! The read and write users: a name and exactly one password source.

use std::path::Path;

use super::{err, ConfigError};

/// A user name and its password.
#[derive(Clone)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (password redacted)", self.user)
    }
}

/// The user of `role` (`READ` or `WRITE`, as in the variable names), from its name and
/// its password (`NIX_STORED_USER_<role>_PASS`) or password file.
pub(super) fn credentials(
    role: &str,
    user: Option<String>,
    pass: Option<String>,
    passfile: Option<&Path>,
) -> Result<Option<Credentials>, ConfigError> {
    let var = format!("NIX_STORED_USER_{role}");
    let password = match (pass, passfile) {
        (Some(_), Some(_)) => {
            return Err(err(format!(
                "{var}_PASS and {var}_PASSFILE are both set; use one"
            )))
        }
        (Some(p), None) => Some(p),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file).map_err(|e| {
                err(format!(
                    "{var}_PASSFILE {}: cannot read it: {e}",
                    file.display()
                ))
            })?;
            Some(text.strip_suffix('\n').unwrap_or(&text).to_owned())
        }
        (None, None) => None,
    };
    match (user, password) {
        (None, None) => Ok(None),
        (Some(user), Some(password)) => {
            if user.is_empty() || user.contains(':') {
                return Err(err(format!("{var} must be a non-empty name without ':'")));
            }
            if password.is_empty() {
                return Err(err(format!("{var}: the password is empty")));
            }
            Ok(Some(Credentials { user, password }))
        }
        (Some(_), None) => Err(err(format!(
            "{var} is set but has no password: set {var}_PASS or {var}_PASSFILE"
        ))),
        (None, Some(_)) => Err(err(format!(
            "a password is set but {var} (the user name) is not"
        ))),
    }
}
