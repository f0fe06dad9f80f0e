//! Who may connect: CIDR allow and deny lists, decided on the peer address before any TLS work.

use std::net::IpAddr;

use ipnet::IpNet;
use nakama_edge_config::Firewall as FirewallConfig;

/// The compiled firewall of one config snapshot.
#[derive(Debug)]
pub struct Firewall {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl Firewall {
    /// Compile the `[firewall]` lists.
    pub fn new(config: &FirewallConfig) -> Self {
        Firewall {
            allow: config.allow.clone(),
            deny: config.deny.clone(),
        }
    }

    /// Whether `ip` may connect: not denied, and allowed. Deny wins.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !self.deny.iter().any(|n| n.contains(&ip)) && self.allow.iter().any(|n| n.contains(&ip))
    }
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

    fn fw(allow: &[&str], deny: &[&str]) -> Firewall {
        Firewall {
            allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
            deny: deny.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn deny_wins() {
        let f = fw(&["127.0.0.0/8"], &["127.0.0.2/32"]);
        assert!(f.allows("127.0.0.1".parse().unwrap()));
        assert!(!f.allows("127.0.0.2".parse().unwrap()));
        assert!(!f.allows("10.0.0.1".parse().unwrap()));
        assert!(
            !f.allows("::ffff:127.0.0.2".parse().unwrap()),
            "mapped v4 is v4"
        );
        assert!(f.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!f.allows("::1".parse().unwrap()));
    }
}
