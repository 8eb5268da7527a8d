//! The SSRF guard: which IP addresses a webhook may be delivered to.
//!
//! [`TargetPolicy`] is checked twice for every request: once for an IP-literal URL host
//! before anything is sent (reqwest does not pass literals through the resolver), and once
//! for every address a host name resolves to, inside [`PolicyResolver`], so a DNS record
//! pointing at `127.0.0.1` cannot get around it.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The hint appended to every refusal, naming the switch that lifts it.
const ALLOW_HINT: &str = "allow it with --allow-target";

/// Which targets may be called.
///
/// Private, loopback, link-local, unspecified, multicast, broadcast, documentation,
/// benchmarking, reserved, CGNAT (`100.64.0.0/10`), unique-local (`fc00::/7`) addresses and
/// IPv6 forms that embed such an IPv4 address (IPv4-mapped, NAT64, 6to4) are refused unless
/// they fall inside one of the `allow` CIDRs. Everything else (the public internet) is permitted.
#[derive(Clone, Debug, Default)]
pub struct TargetPolicy {
    /// CIDRs that are permitted even though they are special-purpose (e.g. `127.0.0.0/8` in tests).
    pub allow: Vec<IpNet>,
}

impl TargetPolicy {
    /// Whether a connection to `ip` is permitted.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.refusal(ip).is_none()
    }

    /// Why `ip` is refused, as a message naming the address and its category
    /// (e.g. "127.0.0.1 is a loopback address; allow it with --allow-target"),
    /// or `None` when it is permitted.
    pub fn refusal(&self, ip: IpAddr) -> Option<String> {
        if self.allowed(ip) {
            return None;
        }
        special_purpose(ip).map(|category| format!("{ip} is {category}; {ALLOW_HINT}"))
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 address is the IPv4 address on the wire: let an IPv4 allow
        // entry cover it too.
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allow.iter().any(|net| net.contains(&ip) || mapped.is_some_and(|m| net.contains(&m)))
    }
}

/// The category of a special-purpose address, or `None` for a globally routable one.
fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_purpose_v4(v4),
        IpAddr::V6(v6) => special_purpose_v6(v6),
    }
}

fn in_v4(addr: u32, net: [u8; 4], prefix: u32) -> bool {
    let net = u32::from_be_bytes(net);
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    addr & mask == net & mask
}

fn special_purpose_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let a = u32::from(ip);
    if ip.is_broadcast() {
        return Some("the broadcast address");
    }
    let table: &[([u8; 4], u32, &'static str)] = &[
        ([0, 0, 0, 0], 8, "an unspecified (\"this network\") address"),
        ([10, 0, 0, 0], 8, "a private address"),
        ([100, 64, 0, 0], 10, "a shared (CGNAT) address"),
        ([127, 0, 0, 0], 8, "a loopback address"),
        ([169, 254, 0, 0], 16, "a link-local address"),
        ([172, 16, 0, 0], 12, "a private address"),
        ([192, 0, 0, 0], 24, "an IETF protocol assignment address"),
        ([192, 0, 2, 0], 24, "a documentation address"),
        ([192, 88, 99, 0], 24, "a 6to4 relay anycast address"),
        ([192, 168, 0, 0], 16, "a private address"),
        ([198, 18, 0, 0], 15, "a benchmarking address"),
        ([198, 51, 100, 0], 24, "a documentation address"),
        ([203, 0, 113, 0], 24, "a documentation address"),
        ([224, 0, 0, 0], 4, "a multicast address"),
        ([240, 0, 0, 0], 4, "a reserved address"),
    ];
    table.iter().find(|(net, prefix, _)| in_v4(a, *net, *prefix)).map(|(_, _, category)| *category)
}

fn in_v6(addr: u128, net: u128, prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
    addr & mask == net & mask
}

fn special_purpose_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let a = u128::from(ip);
    if ip.is_unspecified() {
        return Some("the unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    // Forms that carry an IPv4 address: judge the embedded address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return special_purpose_v4(v4).map(|_| "an IPv4-mapped address of a refused IPv4 address");
    }
    if in_v6(a, 0x0064_ff9b << 96, 96) {
        // NAT64 well-known prefix: the low 32 bits are the IPv4 destination.
        let v4 = Ipv4Addr::from((a & 0xffff_ffff) as u32);
        return special_purpose_v4(v4).map(|_| "a NAT64 address of a refused IPv4 address");
    }
    if in_v6(a, 0x2002 << 112, 16) {
        // 6to4: bits 16..48 are the IPv4 address of the relay/target.
        let v4 = Ipv4Addr::from(((a >> 80) & 0xffff_ffff) as u32);
        return special_purpose_v4(v4).map(|_| "a 6to4 address of a refused IPv4 address");
    }
    let table: &[(u128, u32, &'static str)] = &[
        (0, 96, "an IPv4-compatible (deprecated) address"),
        (0x0064_ff9b_0001 << 80, 48, "a local-use NAT64 address"),
        (0x0100 << 112, 64, "a discard-only address"),
        (0x2001_0db8 << 96, 32, "a documentation address"),
        (0x2001_0002 << 96, 48, "a benchmarking address"),
        (0x2001 << 112, 32, "a Teredo address"),
        (0x3fff << 112, 20, "a documentation address"),
        (0xfc00 << 112, 7, "a unique-local address"),
        (0xfe80 << 112, 10, "a link-local address"),
        (0xfec0 << 112, 10, "a site-local (deprecated) address"),
        (0xff00 << 112, 8, "a multicast address"),
    ];
    table.iter().find(|(net, prefix, _)| in_v6(a, *net, *prefix)).map(|(_, _, category)| *category)
}

/// The error a refused target produces; found again in reqwest's error source chain so the
/// reason reaches [`crate::SendError::TargetRefused`].
#[derive(Debug, Clone)]
pub(crate) struct TargetRefusedError(pub(crate) String);

impl fmt::Display for TargetRefusedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for TargetRefusedError {}

/// Finds a [`TargetRefusedError`] anywhere in an error's source chain.
pub(crate) fn find_refusal<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a TargetRefusedError> {
    let mut current: Option<&'a (dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<TargetRefusedError>() {
            return Some(refused);
        }
        current = e.source();
    }
    None
}

/// A reqwest resolver that resolves with the system resolver (`tokio::net::lookup_host`) and
/// keeps only the addresses the policy permits.
pub(crate) struct PolicyResolver {
    pub(crate) policy: Arc<TargetPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs = filter_addrs(&policy, &host, resolved)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Keeps the permitted addresses; fails with a [`TargetRefusedError`] naming the first refused
/// one when none is left.
fn filter_addrs(
    policy: &TargetPolicy,
    host: &str,
    resolved: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, Box<dyn StdError + Send + Sync>> {
    if resolved.is_empty() {
        return Err(format!("{host} resolved to no addresses").into());
    }
    let mut first_refusal = None;
    let mut permitted = Vec::with_capacity(resolved.len());
    for addr in resolved {
        match policy.refusal(addr.ip()) {
            None => permitted.push(addr),
            Some(reason) => {
                tracing::debug!(host, address = %addr.ip(), "resolved address refused by target policy");
                first_refusal.get_or_insert(reason);
            }
        }
    }
    if permitted.is_empty() {
        let reason = first_refusal.unwrap_or_default();
        return Err(Box::new(TargetRefusedError(format!("{host} resolves only to refused addresses: {reason}"))));
    }
    Ok(permitted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn default_policy_table() {
        let policy = TargetPolicy::default();
        let refused = [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "100.64.0.1",
            "240.0.0.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "::127.0.0.1",
        ];
        for addr in refused {
            assert!(!policy.permits(ip(addr)), "{addr} should be refused");
        }
        let permitted = [
            "93.184.216.34",
            "1.1.1.1",
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:93.184.216.34",
            "64:ff9b::5db8:d822",
        ];
        for addr in permitted {
            assert!(policy.permits(ip(addr)), "{addr} should be permitted");
        }
    }

    #[test]
    fn allow_list_overrides() {
        let policy = TargetPolicy { allow: vec!["127.0.0.0/8".parse().expect("cidr")] };
        assert!(policy.permits(ip("127.0.0.1")));
        assert!(policy.permits(ip("127.1.2.3")));
        assert!(policy.permits(ip("::ffff:127.0.0.1")));
        assert!(!policy.permits(ip("::1")));
        assert!(!policy.permits(ip("10.0.0.1")));
    }

    #[test]
    fn refusal_message_names_address_and_category() {
        let policy = TargetPolicy::default();
        assert_eq!(
            policy.refusal(ip("127.0.0.1")).as_deref(),
            Some("127.0.0.1 is a loopback address; allow it with --allow-target")
        );
        assert_eq!(
            policy.refusal(ip("100.64.0.1")).as_deref(),
            Some("100.64.0.1 is a shared (CGNAT) address; allow it with --allow-target")
        );
        assert_eq!(policy.refusal(ip("93.184.216.34")), None);
    }

    #[test]
    fn resolver_filter_keeps_permitted_and_refuses_all_private() {
        let policy = TargetPolicy::default();
        let addrs: Vec<SocketAddr> =
            vec!["127.0.0.1:0".parse().expect("addr"), "93.184.216.34:0".parse().expect("addr")];
        let kept = filter_addrs(&policy, "mixed.example", addrs).expect("one permitted");
        assert_eq!(kept, vec!["93.184.216.34:0".parse::<SocketAddr>().expect("addr")]);

        let err =
            filter_addrs(&policy, "evil.example", vec!["10.0.0.1:0".parse().expect("addr")]).expect_err("all refused");
        let refused = find_refusal(err.as_ref()).expect("refusal in chain");
        assert_eq!(
            refused.0,
            "evil.example resolves only to refused addresses: 10.0.0.1 is a private address; allow it with --allow-target"
        );
    }
}
