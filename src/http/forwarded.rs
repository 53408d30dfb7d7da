//! The client behind a trusted reverse proxy, as its `X-Forwarded-For` or
//! `Forwarded` header says.
//!
//! Only the proxies named in `NIX_STORED_TRUSTED_PROXIES` are believed: anyone else
//! can write these headers. The address found is used for the access log and the
//! password-failure throttle, never for authorisation.

use std::net::IpAddr;

use hyper::HeaderMap;

use super::client::ClientAddr;

/// An address block: an address and how many leading bits of it count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

/// Why a block does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an IP address or CIDR block (e.g. 10.0.0.1, 192.168.0.0/16, fd00::/8)")]
pub struct CidrError(String);

impl std::str::FromStr for Cidr {
    type Err = CidrError;

    /// `a.b.c.d`, `a.b.c.d/n`, an IPv6 address, or one with `/n`.
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let bad = || CidrError(s.to_owned());
        let (addr, bits) = match s.split_once('/') {
            Some((a, n)) => (a, Some(n)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            // Digits only: `u8::from_str` takes a leading `+`.
            Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                n.parse::<u8>().ok().filter(|&b| b <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
        };
        Ok(Cidr { addr, bits })
    }
}

impl Cidr {
    /// Whether `ip` lies in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(u32::from(net)) << 96,
                u128::from(u32::from(ip)) << 96,
                self.bits,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), self.bits)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
    a & mask == b & mask
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

/// The reverse proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Parses a list of addresses and blocks separated by commas and/or spaces.
    pub fn parse(list: &str) -> Result<Self, CidrError> {
        list.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client of a request from TCP peer `peer`: the peer itself unless it is a
    /// trusted proxy; then, walking the forwarding chain from the nearest hop, the
    /// first address that is no trusted proxy (each trusted hop vouches for the one
    /// before it, an untrusted one for nothing). `X-Forwarded-For` is read if present,
    /// else `Forwarded`: proxies append to the one they set and pass the other through
    /// as the client wrote it.
    pub fn client(&self, peer: ClientAddr, headers: &HeaderMap) -> ClientAddr {
        if !self.trusts(peer.ip()) {
            return peer;
        }
        let mut hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        if hops.is_empty() {
            hops = headers
                .get_all(hyper::header::FORWARDED)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(forwarded_for)
                .collect();
        }
        let mut client = peer;
        for hop in hops.iter().rev() {
            match node_ip(hop) {
                Some(ip) => {
                    client = ClientAddr::from_ip(ip);
                    if !self.trusts(ip) {
                        break;
                    }
                }
                // `unknown`, an obfuscated name, garbage: the chain ends at the last
                // hop that could be read.
                None => break,
            }
        }
        client
    }
}

/// The `for=` parameter of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
    })
}

/// The address of a node as forwarding headers write it: `192.0.2.1`,
/// `192.0.2.1:443`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:443`, maybe quoted.
fn node_ip(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> ClientAddr {
        ClientAddr::from_ip(s.parse().unwrap())
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        assert!(!all.contains("::2".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "host",
            "10.0.0/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_split_on_commas_and_spaces() {
        let t = TrustedProxies::parse(" 127.0.0.1, ::1  10.0.0.0/8,").unwrap();
        assert_eq!(t.0.len(), 3);
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        assert!(TrustedProxies::parse("127.0.0.1 nope").is_err());
    }

    #[test]
    fn headers_of_untrusted_peers_are_ignored() {
        let t = TrustedProxies::parse("127.0.0.1").unwrap();
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(t.client(peer("198.51.100.1"), &h), peer("198.51.100.1"));
        assert_eq!(t.client(peer("127.0.0.1"), &h), peer("203.0.113.9"));
    }

    #[test]
    fn the_first_untrusted_hop_from_the_right_is_the_client() {
        let t = TrustedProxies::parse("127.0.0.1 10.0.0.0/8").unwrap();
        // The client forged the first entry; the proxies appended the rest.
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4, 203.0.113.9"),
            ("x-forwarded-for", "10.0.0.5"),
        ]);
        assert_eq!(t.client(peer("127.0.0.1"), &h), peer("203.0.113.9"));
        // Only trusted hops: the farthest one.
        let h = headers(&[("x-forwarded-for", "10.0.0.7, 10.0.0.5")]);
        assert_eq!(t.client(peer("127.0.0.1"), &h), peer("10.0.0.7"));
        // Garbage ends the chain at the last readable hop.
        let h = headers(&[("x-forwarded-for", "203.0.113.9, unknown, 10.0.0.5")]);
        assert_eq!(t.client(peer("127.0.0.1"), &h), peer("10.0.0.5"));
        // No header: the peer.
        assert_eq!(
            t.client(peer("127.0.0.1"), &HeaderMap::new()),
            peer("127.0.0.1")
        );
    }

    #[test]
    fn forwarded_is_read_without_x_forwarded_for() {
        let t = TrustedProxies::parse("::1").unwrap();
        let h = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=https, For=\"[2001:db8:cafe::17]:4711\"",
        )]);
        assert_eq!(t.client(peer("::1"), &h), peer("2001:db8:cafe::17"));
        let h = headers(&[
            ("forwarded", "for=\"192.0.2.43:47011\""),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(t.client(peer("::1"), &h), peer("203.0.113.9"));
        let h = headers(&[("forwarded", "for=_hidden")]);
        assert_eq!(t.client(peer("::1"), &h), peer("::1"));
    }
}
