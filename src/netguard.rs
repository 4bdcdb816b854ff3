//! Which addresses a caller may make the daemon reach, or reach the daemon from: lists of
//! networks in the configuration, and the public-address rule that keeps a webhook made
//! through the REST API from pointing the daemon at this host or its private network.

use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Networks as the configuration lists them: `"10.0.0.0/8"`, `"::1/128"`, or a bare
/// address (one host).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct Networks(pub Vec<IpNet>);

impl TryFrom<Vec<String>> for Networks {
    type Error = String;
    fn try_from(list: Vec<String>) -> Result<Self, String> {
        list.iter()
            .map(|n| {
                let n = n.trim();
                n.parse::<IpNet>()
                    .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("`{n}` is not a network: use e.g. \"10.0.0.0/8\", \"::1/128\" or one address")
                    })
            })
            .collect::<Result<_, _>>()
            .map(Networks)
    }
}

impl Networks {
    /// This host only: 127.0.0.0/8 and ::1.
    pub fn loopback() -> Networks {
        Networks(vec![
            IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8)),
            IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ])
    }

    /// An IPv4 address written as IPv6 (`::ffff:10.0.0.1`) is judged as the IPv4 one.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// A global unicast address: not this host, not a private, shared, link-local
/// (cloud metadata lives at 169.254.169.254), documentation, benchmarking, multicast or
/// reserved one.
pub fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first == 0x2001 && v6.segments()[1] == 0x0db8)
                || first == 0x0064
                || first == 0x0100)
        }
    }
}

/// Where a webhook made through the REST API may post: public addresses, and the
/// networks `[api] webhook_allow_networks` adds.
#[derive(Clone, Debug, Default)]
pub struct Reach {
    pub also: Networks,
}

impl Reach {
    pub fn of(config: &crate::Config) -> Reach {
        Reach {
            also: config.api.webhook_allow_networks.clone(),
        }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.also.contains(ip)
    }

    /// `Err` with the reason when `url` names an address (not a name) it may not reach.
    /// Names are checked as they resolve, at every connection.
    pub fn check_literal(&self, url: &reqwest::Url) -> Result<(), String> {
        let host = url.host_str().unwrap_or_default();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let Ok(ip) = host.parse::<IpAddr>() else {
            return Ok(());
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(refusal(ip))
        }
    }
}

fn refusal(ip: IpAddr) -> String {
    format!(
        "{ip} is not a public address: a webhook made through the API may reach it only when [api] webhook_allow_networks lists it"
    )
}

/// reqwest's resolver for such a webhook: the system's answer, less the addresses it may
/// not reach (checked at each connection, so a name that later resolves to this host
/// reaches nothing).
#[derive(Clone, Debug)]
pub struct GuardedResolver(pub Arc<Reach>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let reach = Arc::clone(&self.0);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| reach.permits(a.ip()))
                .collect();
            match (allowed.is_empty(), found.first()) {
                (false, _) => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
                (true, Some(first)) => Err(format!("{host}: {}", refusal(first.ip())).into()),
                (true, None) => Err(format!("{host}: no address").into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn public_and_not() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(ip(private)), "{private}");
        }
        for public in [
            "8.8.8.8",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip(public)), "{public}");
        }
    }

    #[test]
    fn networks_parse_and_contain() {
        let n = Networks::try_from(vec!["10.0.0.0/8".into(), "::1".into(), "192.0.2.7".into()])
            .unwrap();
        assert!(n.contains(ip("10.9.9.9")));
        assert!(n.contains(ip("::ffff:10.9.9.9")));
        assert!(n.contains(ip("::1")));
        assert!(n.contains(ip("192.0.2.7")));
        assert!(!n.contains(ip("192.0.2.8")));
        let e = Networks::try_from(vec!["10.0.0.0/33".into()]).unwrap_err();
        assert!(e.contains("`10.0.0.0/33` is not a network"), "{e}");
        assert!(Networks::loopback().contains(ip("127.5.5.5")));
        assert!(Networks::loopback().contains(ip("::1")));
        assert!(!Networks::loopback().contains(ip("10.0.0.1")));
    }

    #[test]
    fn reach_refuses_literals_and_resolved_names_it_may_not_reach() {
        let closed = Reach::default();
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let e = closed
            .check_literal(&url("http://127.0.0.1:9000/hook"))
            .unwrap_err();
        assert!(e.contains("127.0.0.1 is not a public address"), "{e}");
        assert!(closed.check_literal(&url("http://[::1]/")).is_err());
        assert!(
            closed
                .check_literal(&url("http://169.254.169.254/"))
                .is_err()
        );
        assert!(closed.check_literal(&url("https://8.8.8.8/")).is_ok());
        // Names wait for the resolver.
        assert!(closed.check_literal(&url("http://localhost/")).is_ok());
        let open = Reach {
            also: Networks::loopback(),
        };
        assert!(open.check_literal(&url("http://127.0.0.1:9000/")).is_ok());

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let resolve = |reach: Reach| {
            rt.block_on(reqwest::dns::Resolve::resolve(
                &GuardedResolver(Arc::new(reach)),
                "localhost".parse().unwrap(),
            ))
        };
        let e = resolve(Reach::default()).err().unwrap().to_string();
        assert!(
            e.contains("localhost: ") && e.contains("is not a public address"),
            "{e}"
        );
        let addrs: Vec<SocketAddr> = resolve(open).unwrap().collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
