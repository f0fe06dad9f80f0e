//! Who may connect: CIDR lists decided on the peer address before any TLS work (or, behind
//! a trusted load balancer, on the client address its PROXY header carries).

use std::net::IpAddr;

use ipnet::IpNet;
use nakama_edge_config::Firewall as FirewallConfig;

/// The compiled firewall of one config snapshot.
#[derive(Debug)]
pub struct Firewall {
    allow: CidrSet,
    deny: CidrSet,
    console_allow: CidrSet,
    trusted_proxies: CidrSet,
    admin_allow: CidrSet,
}

fn contains(list: &CidrSet, ip: IpAddr) -> bool {
    list.contains(ip)
}

impl Firewall {
    /// Compile the `[firewall]` lists.
    pub fn new(config: &FirewallConfig) -> Self {
        Firewall {
            allow: CidrSet::new(&config.allow),
            deny: CidrSet::new(&config.deny),
            console_allow: CidrSet::new(&config.console_allow),
            trusted_proxies: CidrSet::new(&config.trusted_proxies),
            admin_allow: CidrSet::new(&config.admin_allow),
        }
    }

    /// Whether a player at `ip` may connect: not denied, and allowed. Deny wins.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !contains(&self.deny, ip) && contains(&self.allow, ip)
    }

    /// Whether `ip` may use the console listener: in `console_allow` and not denied.
    pub fn allows_console(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !contains(&self.deny, ip) && contains(&self.console_allow, ip)
    }

    /// Whether `ip` may use the admin API.
    pub fn allows_admin(&self, ip: IpAddr) -> bool {
        contains(&self.admin_allow, canonical(ip))
    }

    /// Whether `ip` is a load balancer whose PROXY header is believed.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        contains(&self.trusted_proxies, canonical(ip))
    }
}

/// A set of CIDRs as sorted, merged address ranges: a lookup is a binary search, so a list of
/// 10,000 entries costs about what a list of ten does.
#[derive(Debug, Default, Clone)]
struct CidrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl CidrSet {
    fn new(nets: &[IpNet]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        CidrSet {
            v4: merged(v4),
            v6: merged(v6),
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => within(&self.v4, u32::from(a)),
            IpAddr::V6(a) => within(&self.v6, u128::from(a)),
        }
    }
}

/// Sort ranges and merge the overlapping ones.
fn merged<T: Ord + Copy>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

fn within<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|&(start, _)| start <= x);
    i > 0 && x <= ranges[i - 1].1
}

/// IPv4 peers on a dual-stack socket arrive as `::ffff:a.b.c.d`; rules are written for `a.b.c.d`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> CidrSet {
        CidrSet::new(
            &list
                .iter()
                .map(|s| s.parse().unwrap())
                .collect::<Vec<IpNet>>(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_wins() {
        let f = Firewall {
            allow: nets(&["127.0.0.0/8"]),
            deny: nets(&["127.0.0.2/32"]),
            console_allow: nets(&["127.0.0.0/8"]),
            trusted_proxies: nets(&["127.0.0.9/32"]),
            admin_allow: nets(&["127.0.0.1/32"]),
        };
        assert!(f.allows(ip("127.0.0.1")));
        assert!(!f.allows(ip("127.0.0.2")));
        assert!(!f.allows(ip("10.0.0.1")));
        assert!(!f.allows(ip("::ffff:127.0.0.2")), "mapped v4 is v4");
        assert!(f.allows(ip("::ffff:127.0.0.1")));
        assert!(!f.allows(ip("::1")));
        assert!(f.allows_console(ip("127.0.0.1")));
        assert!(
            !f.allows_console(ip("127.0.0.2")),
            "deny wins for the console too"
        );
        assert!(f.is_trusted_proxy(ip("::ffff:127.0.0.9")));
        assert!(!f.is_trusted_proxy(ip("127.0.0.1")));
    }

    #[test]
    fn the_console_is_closed_by_default() {
        let f = Firewall::new(&FirewallConfig {
            allow: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
            deny: vec![],
            console_allow: vec![],
            trusted_proxies: vec![],
            admin_allow: vec![],
        });
        assert!(f.allows(ip("127.0.0.1")));
        assert!(!f.allows_console(ip("127.0.0.1")));
    }

    /// The range set answers as a linear scan of the CIDRs would, on random lists and
    /// addresses (overlapping, nested and adjacent networks included).
    #[test]
    fn range_set_agrees_with_a_scan() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..50 {
            let list: Vec<IpNet> = (0..(next() % 40))
                .map(|_| {
                    let bits = next();
                    if bits % 4 == 0 {
                        let addr = std::net::Ipv6Addr::from(
                            u128::from(bits) << 64 | u128::from(next()) & 0xff,
                        );
                        IpNet::V6(
                            ipnet::Ipv6Net::new(addr, (next() % 129) as u8)
                                .unwrap()
                                .trunc(),
                        )
                    } else {
                        let addr = std::net::Ipv4Addr::from(
                            ((bits as u32) & 0xff00_0000) | (next() as u32 & 0x00ff_ffff),
                        );
                        IpNet::V4(
                            ipnet::Ipv4Net::new(addr, (8 + next() % 25) as u8)
                                .unwrap()
                                .trunc(),
                        )
                    }
                })
                .collect();
            let set = CidrSet::new(&list);
            for _ in 0..400 {
                let probe = match list.get((next() % (list.len() as u64 + 1)) as usize) {
                    Some(IpNet::V4(n)) => IpAddr::V4(
                        u32::from(n.network())
                            .wrapping_add(next() as u32 % 600)
                            .into(),
                    ),
                    Some(IpNet::V6(n)) => IpAddr::V6(
                        u128::from(n.network())
                            .wrapping_add(u128::from(next() % 600))
                            .into(),
                    ),
                    None => IpAddr::V4((next() as u32).into()),
                };
                let scan = list.iter().any(|n| n.contains(&probe));
                assert_eq!(set.contains(probe), scan, "{probe} in {list:?}");
            }
        }
    }
}
