//! Who is at the other end of a connection, as far as the TCP peer address tells.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// A client's address: the TCP peer, with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
/// what a dual-stack `[::]` listener sees of IPv4 clients) taken as the IPv4 address,
/// so that one client counts as one whichever way the server listens.
///
/// The server puts it into every request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(IpAddr);

impl ClientAddr {
    /// The client address of a TCP peer.
    pub fn of(peer: SocketAddr) -> Self {
        ClientAddr(peer.ip().to_canonical())
    }

    /// The client address of an address a trusted proxy forwarded.
    pub fn from_ip(ip: IpAddr) -> Self {
        ClientAddr(ip.to_canonical())
    }

    /// The address itself.
    pub fn ip(self) -> IpAddr {
        self.0
    }

    /// The network an address belongs to for throttling: the IPv4 address itself, or
    /// the /64 of an IPv6 address. One IPv6 host usually holds a whole /64, and would
    /// otherwise get a fresh allowance from each of its 2^64 addresses.
    pub fn network(self) -> IpAddr {
        match self.0 {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        }
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv4_is_ipv4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:1234".parse().unwrap();
        let plain: SocketAddr = "192.0.2.7:80".parse().unwrap();
        assert_eq!(ClientAddr::of(mapped), ClientAddr::of(plain));
        assert_eq!(ClientAddr::of(mapped).to_string(), "192.0.2.7");
    }

    #[test]
    fn ipv6_networks_are_slash_64() {
        let a = ClientAddr::of("[2001:db8:1:2:aaaa::1]:1".parse().unwrap());
        let b = ClientAddr::of("[2001:db8:1:2:bbbb::2]:1".parse().unwrap());
        let c = ClientAddr::of("[2001:db8:1:3::1]:1".parse().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.network(), b.network());
        assert_ne!(a.network(), c.network());
        let v4 = ClientAddr::of("10.0.0.1:1".parse().unwrap());
        assert_eq!(v4.network(), v4.ip());
    }
}
