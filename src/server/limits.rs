//! Descriptor limits, and the connection limits derived from them.

use std::io;

/// Connection limit when none is configured and descriptors allow it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Descriptors kept out of the per-connection budget: the listener, the log, the
/// runtime's epoll and eventfds, inotify, the root directory, the blocking pool's
/// occasional files.
const RESERVED_FDS: u64 = 64;
/// Descriptors a connection can hold at once: its socket, and the object it
/// streams or the temporary file it uploads into (HTTP/1 has one request at a time).
const FDS_PER_CONNECTION: u64 = 2;
/// Bounds of the default per-address connection limit, a quarter of the connection
/// limit: one Nix process opens up to 25 connections (`http-connections`), and every
/// nix-daemon worker has its own; 256 holds ten of them behind one address (a CI
/// runner with parallel jobs, a NAT).
const PER_ADDRESS_FLOOR: usize = 32;
const PER_ADDRESS_CEILING: usize = 256;

/// Raises the soft limit on open files to the hard limit (the default soft limit
/// of 1024 is far below what a server with thousands of clients needs) and returns
/// the limit in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to the hard
        // one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// The connection limit: `configured` if set, else the default lowered to what
/// `nofile` descriptors can hold.
pub fn connection_limit(configured: Option<usize>, nofile: u64) -> usize {
    let fits = nofile.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION;
    let fits = usize::try_from(fits).unwrap_or(usize::MAX).max(1);
    configured.unwrap_or_else(|| DEFAULT_MAX_CONNECTIONS.min(fits))
}

/// The per-address connection limit: `configured` if set, else a quarter of
/// `max_connections` within [`PER_ADDRESS_FLOOR`] and [`PER_ADDRESS_CEILING`].
pub fn per_address_limit(configured: Option<usize>, max_connections: usize) -> usize {
    configured
        .unwrap_or_else(|| (max_connections / 4).clamp(PER_ADDRESS_FLOOR, PER_ADDRESS_CEILING))
        .max(1)
}

/// Whether `limit` connections can run out of descriptors under `nofile`.
pub fn limit_exceeds_descriptors(limit: usize, nofile: u64) -> bool {
    (limit as u64).saturating_mul(FDS_PER_CONNECTION) + RESERVED_FDS > nofile
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limit_fits_the_descriptors() {
        assert_eq!(connection_limit(None, 1_048_576), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(connection_limit(None, 1024), 480);
        assert_eq!(connection_limit(None, 10), 1);
        assert_eq!(connection_limit(Some(50_000), 1024), 50_000);
        assert!(limit_exceeds_descriptors(50_000, 1024));
        assert!(!limit_exceeds_descriptors(480, 1024));
    }

    #[test]
    fn per_address_limit_is_a_quarter_within_bounds() {
        assert_eq!(per_address_limit(None, DEFAULT_MAX_CONNECTIONS), 256);
        assert_eq!(per_address_limit(None, 480), 120);
        assert_eq!(per_address_limit(None, 20), 32);
        assert_eq!(per_address_limit(Some(4), 10_000), 4);
    }
}
