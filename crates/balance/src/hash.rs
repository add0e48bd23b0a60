//! Stable hashing (the same on every machine, release and restart): FNV-1a 64 with the MurmurHash3 64-bit
//! finaliser for avalanche. Used for endpoint identifiers in persistence cookies and for rendezvous hashing.

use std::net::{IpAddr, SocketAddr};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// MurmurHash3's fmix64: a bijection with full avalanche.
pub(crate) fn mix(mut z: u64) -> u64 {
    z ^= z >> 33;
    z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
    z ^= z >> 33;
    z = z.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

/// Hash of a byte string.
pub(crate) fn bytes(data: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    mix(h)
}

/// Hash of a client address; an IPv4-mapped IPv6 address hashes as the IPv4 address.
pub(crate) fn ip(address: IpAddr) -> u64 {
    match address.to_canonical() {
        IpAddr::V4(v4) => bytes(&v4.octets()),
        IpAddr::V6(v6) => bytes(&v6.octets()),
    }
}

/// The stable identifier of an endpoint: a hash of its `ip:port` text (so `10.0.0.1:8080` has the same
/// identifier everywhere). It is what a persistence cookie carries.
pub(crate) fn endpoint_id(address: SocketAddr) -> u64 {
    bytes(address.to_string().as_bytes())
}

/// The rendezvous score of a key on an endpoint (whose `seed` is a mixed identifier).
pub(crate) fn score(key: u64, seed: u64) -> u64 {
    mix(mix(key ^ seed) ^ seed.rotate_left(32))
}

/// A hash as a number in (0, 1), for weighted rendezvous scores.
pub(crate) fn unit(hash: u64) -> f64 {
    // 52 bits keep `n + 0.5` exact, so the result is never 0 or 1.
    ((hash >> 12) as f64 + 0.5) / (1u64 << 52) as f64
}

/// A persistence cookie's value: 16 lower-case hex digits.
pub(crate) fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

/// Reads a cookie value written by [`format_id`].
pub(crate) fn parse_id(text: &str) -> Option<u64> {
    if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable() {
        // Pinned values: a change breaks every persistence cookie in the field.
        assert_eq!(format_id(endpoint_id("10.0.0.1:8080".parse().expect("address"))), "e8c721156ed52b14");
        assert_eq!(ip("::ffff:10.0.0.1".parse().expect("address")), ip("10.0.0.1".parse().expect("address")));
    }

    #[test]
    fn ids_round_trip() {
        for id in [0, 1, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(parse_id(&format_id(id)), Some(id));
        }
        assert_eq!(parse_id("10.0.0.1:8080"), None);
        assert_eq!(parse_id("+123456789abcdef"), None);
    }

    #[test]
    fn units_are_strictly_inside_zero_and_one() {
        for h in [0, 1, u64::MAX, u64::MAX / 2] {
            let u = unit(h);
            assert!(u > 0.0 && u < 1.0, "{u}");
        }
    }
}
