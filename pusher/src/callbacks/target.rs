//! Where outcome callbacks may go: the guard against server-side request forgery through
//! `callback_url` (and the channel's `callbacks.url`).
//!
//! A producer names the URL the pusher POSTs to, so without a guard it can make the pusher
//! reach what only the pusher can reach: loopback services, the pod network, a cloud's metadata
//! endpoint. By default every internal target is refused, and `callbacks.allow` lists the
//! exceptions (host names, `*.suffix`, addresses, CIDR blocks).
//!
//! The check runs in three places, for three different attacks:
//!
//! 1. **At accept** ([`TargetPolicy::check_resolved`]): the URL is parsed with the WHATWG rules
//!    (the `url` crate), so the odd IPv4 spellings `127.1`, `2130706433` and `0x7f.1` are
//!    already the address `127.0.0.1`; userinfo is refused (it would travel as
//!    `Authorization: Basic`); internal names (`localhost`, `metadata.google.internal`) and
//!    addresses are refused; and a name is resolved once, so that one resolving to an internal
//!    address is refused with 422 at once instead of failing later.
//! 2. **Before each attempt** ([`TargetPolicy::check_url`]): a stored URL may predate a change
//!    of `callbacks.allow`, and reqwest does not pass literal addresses through the resolver.
//! 3. **At connect time** ([`GuardedResolver`]): the callback client resolves names through
//!    this resolver only, which drops every internal address that is not allowed; a name left
//!    with no address fails to connect. A name that resolved to a public address at accept and
//!    to `127.0.0.1` later (DNS rebinding) therefore never reaches loopback. The client also
//!    ignores proxy variables (a proxy would resolve the name itself) and follows no redirects.
//!
//! The address ranges are matched by hand (a dozen prefixes over `u32`/`u128`) rather than
//! through `std`'s `is_global`, which is still unstable, or a CIDR crate that would be a new
//! dependency for twenty lines.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How long the accept-time resolution may take; on timeout or failure the URL is accepted and
/// the connect-time check decides.
pub const ACCEPT_RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Names refused like internal addresses (lowercase, without a trailing dot). Names under
/// `localhost` are refused as well.
const INTERNAL_NAMES: &[&str] = &["localhost", "metadata.google.internal", "metadata"];

/// An address block `addr/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `fd00::/8` or a bare address (a block of one).
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a.parse::<IpAddr>().ok()?, l.parse::<u8>().ok()?),
            None => {
                let a = text.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some(Self { addr, len })
    }

    /// Whether `ip` lies in the block (an IPv4 block also holds the IPv4-mapped IPv6 forms).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq32(net, ip, self.len),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq128(net, ip, self.len),
            _ => false,
        }
    }
}

fn prefix_eq32(a: Ipv4Addr, b: Ipv4Addr, len: u8) -> bool {
    if len == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - u32::from(len.min(32)));
    (u32::from(a) & mask) == (u32::from(b) & mask)
}

fn prefix_eq128(a: Ipv6Addr, b: Ipv6Addr, len: u8) -> bool {
    if len == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(len.min(128)));
    (u128::from(a) & mask) == (u128::from(b) & mask)
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it stands for.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// IPv4 blocks no callback may reach by default.
const INTERNAL_V4: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),      // "this network", 0.0.0.0
    ([10, 0, 0, 0], 8),     // RFC 1918
    ([100, 64, 0, 0], 10),  // shared address space (CGNAT; Alibaba Cloud's metadata)
    ([127, 0, 0, 0], 8),    // loopback
    ([169, 254, 0, 0], 16), // link-local, 169.254.169.254 metadata
    ([172, 16, 0, 0], 12),  // RFC 1918
    ([192, 0, 0, 0], 24),   // IETF protocol assignments
    ([192, 168, 0, 0], 16), // RFC 1918
    ([198, 18, 0, 0], 15),  // benchmarking
    ([224, 0, 0, 0], 4),    // multicast
    ([240, 0, 0, 0], 4),    // reserved, broadcast
];

/// IPv6 blocks no callback may reach by default (IPv4-mapped addresses are judged as IPv4).
const INTERNAL_V6: &[(u128, u8)] = &[
    (0, 96),                                         // ::, ::1 and the IPv4-compatible ::a.b.c.d
    (0x0064_ff9b_0001_0000_0000_0000_0000_0000, 48), // local-use NAT64
    (0x0100_0000_0000_0000_0000_0000_0000_0000, 64), // discard-only
    (0xfc00_0000_0000_0000_0000_0000_0000_0000, 7),  // unique local (fd00:ec2::254 metadata)
    (0xfe80_0000_0000_0000_0000_0000_0000_0000, 10), // link-local
    (0xfec0_0000_0000_0000_0000_0000_0000_0000, 10), // site-local (deprecated)
    (0xff00_0000_0000_0000_0000_0000_0000_0000, 8),  // multicast
];

/// Whether `ip` is loopback, private, link-local, unspecified, multicast, reserved or a
/// metadata address. IPv6 forms that embed an IPv4 address (mapped, NAT64 `64:ff9b::/96`,
/// 6to4 `2002::/16`) are judged by the embedded address.
pub fn is_internal(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => INTERNAL_V4
            .iter()
            .any(|(net, len)| prefix_eq32(Ipv4Addr::from(*net), v4, *len)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
                // NAT64 well-known prefix: the last 32 bits are the IPv4 target.
                return is_internal(IpAddr::V4(Ipv4Addr::from((bits & 0xffff_ffff) as u32)));
            }
            if bits >> 112 == 0x2002 {
                // 6to4: bits 16..48 are the IPv4 address.
                return is_internal(IpAddr::V4(Ipv4Addr::from(
                    ((bits >> 80) & 0xffff_ffff) as u32,
                )));
            }
            INTERNAL_V6
                .iter()
                .any(|(net, len)| prefix_eq128(Ipv6Addr::from(*net), v6, *len))
        }
    }
}

/// Why a callback target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not an absolute `http(s)` URL with a host.
    #[error("must be an absolute http(s) URL")]
    NotHttp,
    /// `user:password@` in the URL.
    #[error("must not hold user information (user:password@)")]
    Userinfo,
    /// A literal internal address.
    #[error(
        "{0} is an internal address (loopback, private, link-local or metadata); list it in \
         callbacks.allow to allow it"
    )]
    InternalAddress(IpAddr),
    /// A name reserved for internal services.
    #[error("{0} names an internal service; list it in callbacks.allow to allow it")]
    InternalName(String),
    /// A name that resolves to an internal address.
    #[error("{host} resolves to the internal address {ip}; list it in callbacks.allow to allow it")]
    ResolvesInternal {
        /// The name.
        host: String,
        /// The address.
        ip: IpAddr,
    },
}

/// The host of a checked URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A literal address (checked).
    Ip(IpAddr),
    /// A name, lowercase, with its port; its addresses are still to be checked.
    Name(String, u16),
    /// A name allowed by `callbacks.allow`: any address will do.
    AllowedName,
}

/// The allowlist and the rules, shared by the API, the callback worker and its resolver.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    names: Vec<String>,
    suffixes: Vec<String>,
    nets: Vec<Cidr>,
    /// Fixed answers for names (tests), consulted before DNS.
    overrides: HashMap<String, Vec<IpAddr>>,
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl TargetPolicy {
    /// The policy for `callbacks.allow`; an entry that is neither a name, `*.suffix`, an
    /// address nor a CIDR block is an error naming it.
    pub fn new(allow: &[String]) -> Result<Self, String> {
        let mut policy = Self::default();
        for (i, entry) in allow.iter().enumerate() {
            let e = entry.trim();
            let e = e.trim_start_matches('[').trim_end_matches(']');
            if let Some(c) = Cidr::parse(e) {
                policy.nets.push(c);
            } else if let Some(rest) = e.strip_prefix("*.") {
                if !valid_name(rest) {
                    return Err(format!("callbacks.allow[{i}]: not a host name pattern"));
                }
                policy.suffixes.push(format!(".{}", normalise(rest)));
            } else if valid_name(e) {
                policy.names.push(normalise(e));
            } else {
                return Err(format!(
                    "callbacks.allow[{i}]: use a host name, *.domain, an address or a CIDR block"
                ));
            }
        }
        Ok(policy)
    }

    /// The same policy, answering `name` with `ips` instead of asking DNS (tests).
    pub fn with_override(mut self, name: &str, ips: Vec<IpAddr>) -> Self {
        self.overrides.insert(normalise(name), ips);
        self
    }

    /// Whether the name is listed in `callbacks.allow`.
    pub fn name_allowed(&self, name: &str) -> bool {
        let n = normalise(name);
        self.names.contains(&n) || self.suffixes.iter().any(|s| n.ends_with(s.as_str()))
    }

    /// Whether a connection to `ip` is allowed: a public address, or one listed.
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.nets.iter().any(|n| n.contains(ip))
    }

    /// The checks that need no DNS: scheme, userinfo, literal addresses, internal names.
    pub fn check_url(&self, url: &str) -> Result<Host, TargetError> {
        let u = url::Url::parse(url).map_err(|_| TargetError::NotHttp)?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(TargetError::NotHttp);
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(TargetError::Userinfo);
        }
        let port = u.port_or_known_default().unwrap_or(80);
        match u.host() {
            None => Err(TargetError::NotHttp),
            Some(url::Host::Ipv4(v4)) => self.check_ip(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => self.check_ip(IpAddr::V6(v6)),
            Some(url::Host::Domain(d)) => {
                if self.name_allowed(d) {
                    return Ok(Host::AllowedName);
                }
                let n = normalise(d);
                if INTERNAL_NAMES.contains(&n.as_str()) || n.ends_with(".localhost") {
                    return Err(TargetError::InternalName(n));
                }
                Ok(Host::Name(n, port))
            }
        }
    }

    fn check_ip(&self, ip: IpAddr) -> Result<Host, TargetError> {
        if self.ip_allowed(ip) {
            Ok(Host::Ip(ip))
        } else {
            Err(TargetError::InternalAddress(ip))
        }
    }

    /// [`Self::check_url`], then, for a name, its addresses (bounded by
    /// [`ACCEPT_RESOLVE_TIMEOUT`]; a name that does not resolve is left to the connect-time
    /// check): one internal address not allowed refuses the URL.
    pub async fn check_resolved(&self, url: &str) -> Result<(), TargetError> {
        let Host::Name(name, port) = self.check_url(url)? else {
            return Ok(());
        };
        let ips = match tokio::time::timeout(ACCEPT_RESOLVE_TIMEOUT, self.lookup(&name, port)).await
        {
            Ok(Ok(ips)) => ips,
            Ok(Err(_)) | Err(_) => return Ok(()),
        };
        match ips.into_iter().find(|ip| !self.ip_allowed(*ip)) {
            Some(ip) => Err(TargetError::ResolvesInternal { host: name, ip }),
            None => Ok(()),
        }
    }

    async fn lookup(&self, name: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
        if let Some(ips) = self.overrides.get(&normalise(name)) {
            return Ok(ips.clone());
        }
        Ok(tokio::net::lookup_host((name, port))
            .await?
            .map(|a| a.ip())
            .collect())
    }

    /// The addresses a connection to `name` may use: all of them for an allowed name, else
    /// the allowed ones; an error when none is left.
    pub async fn resolve_guarded(&self, name: &str) -> std::io::Result<Vec<IpAddr>> {
        let n = normalise(name);
        if !self.name_allowed(&n)
            && (INTERNAL_NAMES.contains(&n.as_str()) || n.ends_with(".localhost"))
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("callback target {n} names an internal service"),
            ));
        }
        let all = self.lookup(&n, 0).await?;
        if self.name_allowed(&n) {
            return Ok(all);
        }
        let kept: Vec<IpAddr> = all
            .iter()
            .copied()
            .filter(|ip| self.ip_allowed(*ip))
            .collect();
        if kept.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("callback target {n} resolves only to internal addresses"),
            ));
        }
        Ok(kept)
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The callback client's DNS resolver: [`TargetPolicy::resolve_guarded`], so internal
/// addresses are dropped at connect time.
#[derive(Debug, Clone)]
pub struct GuardedResolver(pub Arc<TargetPolicy>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.0);
        let name = name.as_str().to_string();
        Box::pin(async move {
            let ips = policy.resolve_guarded(&name).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every URL of issue 12's SSRF finding, as the producer sent them.
    pub(crate) const ISSUE_URLS: &[&str] = &[
        "http://127.0.0.1/cb",
        "http://localhost/cb",
        "http://0.0.0.0/cb",
        "http://127.1/cb",
        "http://2130706433/cb",
        "http://0x7f.1/cb",
        "http://[::ffff:127.0.0.1]/cb",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://10.0.0.1:6379/",
        "http://[::1]/cb",
        "http://[fe80::1]/cb",
        "http://192.168.1.1/cb",
        "http://172.16.0.1/cb",
        "http://100.100.100.200/cb",
        "http://[64:ff9b::7f00:1]/cb",
        "http://[2002:7f00:1::]/cb",
        "http://LOCALHOST./cb",
        "http://api.localhost/cb",
    ];

    #[test]
    fn ssrf_callback_url_internal_targets_are_refused() {
        let p = TargetPolicy::default();
        for url in ISSUE_URLS {
            assert!(p.check_url(url).is_err(), "{url} was allowed");
        }
        assert_eq!(
            p.check_url("http://user:pw@example.com/"),
            Err(TargetError::Userinfo)
        );
        assert_eq!(p.check_url("ftp://example.com/"), Err(TargetError::NotHttp));
        assert!(matches!(
            p.check_url("https://hooks.example.com/x"),
            Ok(Host::Name(n, 443)) if n == "hooks.example.com"
        ));
        assert!(p.check_url("http://93.184.216.34/").is_ok());
        assert!(p.check_url("http://[2606:4700::1111]/").is_ok());
    }

    #[test]
    fn allow_entries_make_exceptions() {
        let p = TargetPolicy::new(&[
            "127.0.0.1".into(),
            "10.0.0.0/8".into(),
            "[::1]".into(),
            "hooks.internal".into(),
            "*.svc.cluster.local".into(),
        ])
        .expect("valid allowlist");
        assert!(p.check_url("http://127.0.0.1:9/cb").is_ok());
        assert!(p.check_url("http://[::ffff:127.0.0.1]/cb").is_ok());
        assert!(p.check_url("http://10.9.8.7/cb").is_ok());
        assert!(p.check_url("http://[::1]/cb").is_ok());
        assert_eq!(p.check_url("http://HOOKS.internal/"), Ok(Host::AllowedName));
        assert_eq!(
            p.check_url("http://a.b.svc.cluster.local/"),
            Ok(Host::AllowedName)
        );
        assert!(p.check_url("http://127.0.0.2/cb").is_err());
        assert!(p.check_url("http://169.254.169.254/").is_err());
        assert!(TargetPolicy::new(&["not a host!".into()]).is_err());
        assert!(TargetPolicy::new(&["10.0.0.0/33".into()]).is_err());
    }

    #[tokio::test]
    async fn ssrf_dns_name_resolving_to_loopback_is_refused() {
        let p = TargetPolicy::default()
            .with_override("rebind.example", vec!["127.0.0.1".parse().expect("ip")])
            .with_override(
                "mixed.example",
                vec![
                    "93.184.216.34".parse().expect("ip"),
                    "10.0.0.1".parse().expect("ip"),
                ],
            )
            .with_override("public.example", vec!["93.184.216.34".parse().expect("ip")]);
        assert!(matches!(
            p.check_resolved("http://rebind.example/cb").await,
            Err(TargetError::ResolvesInternal { .. })
        ));
        assert!(p.check_resolved("http://mixed.example/cb").await.is_err());
        assert!(p.check_resolved("http://public.example/cb").await.is_ok());
        // At connect time the internal addresses are dropped; none left is an error.
        assert!(p.resolve_guarded("rebind.example").await.is_err());
        assert_eq!(
            p.resolve_guarded("mixed.example").await.expect("one left"),
            vec!["93.184.216.34".parse::<IpAddr>().expect("ip")]
        );
        assert!(p.resolve_guarded("localhost").await.is_err());
    }

    #[tokio::test]
    async fn ssrf_dns_rebinding_is_caught_at_connect_time() {
        // The name was public at accept; by the time the callback connects it points at
        // loopback. The callback client's resolver refuses it, and nothing is sent.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let policy = Arc::new(
            TargetPolicy::default()
                .with_override("rebind.example", vec!["127.0.0.1".parse().expect("ip")]),
        );
        let client = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver(policy)))
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let sent = client
            .post(format!("http://rebind.example:{port}/cb"))
            .body("{}")
            .send()
            .await;
        assert!(sent.is_err(), "the request reached loopback");
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(
            accepted.is_err(),
            "a connection reached the loopback listener"
        );
    }
}
