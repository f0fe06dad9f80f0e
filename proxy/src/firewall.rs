//! Who may connect: CIDR lists decided on the peer address before any TLS work (or, behind
//! a trusted load balancer, on the client address its PROXY header carries).

use std::net::IpAddr;

use ipnet::IpNet;
use nakama_edge_config::Firewall as FirewallConfig;

/// The compiled firewall of one config snapshot.
#[derive(Debug)]
pub struct Firewall {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    console_allow: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
    admin_allow: Vec<IpNet>,
}

fn contains(list: &[IpNet], ip: IpAddr) -> bool {
    list.iter().any(|n| n.contains(&ip))
}

impl Firewall {
    /// Compile the `[firewall]` lists.
    pub fn new(config: &FirewallConfig) -> Self {
        Firewall {
            allow: config.allow.clone(),
            deny: config.deny.clone(),
            console_allow: config.console_allow.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            admin_allow: config.admin_allow.clone(),
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

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
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
            allow: nets(&["0.0.0.0/0", "::/0"]),
            deny: vec![],
            console_allow: vec![],
            trusted_proxies: vec![],
            admin_allow: vec![],
        });
        assert!(f.allows(ip("127.0.0.1")));
        assert!(!f.allows_console(ip("127.0.0.1")));
    }
}
