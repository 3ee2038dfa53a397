//! Which data planes a worker attaches to: its endpoints, with names
//! resolved to every address they stand for.
//!
//! `ipc://PATH` and `tcp://IP:PORT` name one data plane each. `tcp://NAME:PORT`
//! names every address `NAME` resolves to: a Kubernetes headless Service
//! resolves to every data-plane pod, so resolving it again (periodically, and
//! when a connection is lost) is how a worker finds replicas that were added
//! and forgets ones that are gone. A hosts file (hosts(5) format), read
//! again at every resolution, answers for the names it lists: tests use it to
//! move data planes in and out behind one name without a DNS server.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use zeromq::{Endpoint, Host};

/// At most this many data planes at once; more addresses are ignored.
pub const MAX_DATA_PLANES: usize = 64;

/// A hosts file larger than this is not read (it is a short list of names).
const MAX_HOSTS_FILE: u64 = 1 << 20;

/// One configured endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// One data plane: `ipc://…` or `tcp://IP:PORT`, normalised.
    Fixed(String),
    /// Every address of `host`.
    Named { host: String, port: u16 },
}

/// Parses an endpoint the way the `zeromq` crate will connect to it, so a
/// mistake is reported by [`crate::WorkerBuilder::build`], not retried forever.
fn target(endpoint: &str) -> Result<Target, String> {
    let parsed: Endpoint = endpoint
        .parse()
        .map_err(|e| format!("endpoint '{endpoint}' is not ipc://PATH or tcp://HOST:PORT ({e})"))?;
    match parsed {
        Endpoint::Tcp(Host::Domain(host), port) => Ok(Target::Named { host, port }),
        Endpoint::Tcp(Host::Ipv4(ip), port) => {
            Ok(Target::Fixed(tcp(SocketAddr::new(ip.into(), port))))
        }
        Endpoint::Tcp(Host::Ipv6(ip), port) => {
            Ok(Target::Fixed(tcp(SocketAddr::new(ip.into(), port))))
        }
        Endpoint::Ipc(_) => Ok(Target::Fixed(endpoint.to_string())),
        _ => Err(format!(
            "endpoint '{endpoint}': only ipc:// and tcp:// are supported"
        )),
    }
}

fn tcp(addr: SocketAddr) -> String {
    // SocketAddr prints IPv6 in brackets: tcp://[::1]:9950.
    format!("tcp://{addr}")
}

/// Checks every endpoint of a worker (at least one, each parseable).
pub fn check(endpoints: &[String]) -> Result<(), String> {
    if endpoints.is_empty() {
        return Err("no endpoint: give the data plane's worker endpoint".into());
    }
    for e in endpoints {
        target(e)?;
    }
    Ok(())
}

/// Resolves a worker's endpoints; remembers the last answer per endpoint so
/// a failed lookup keeps the data planes it had (a DNS outage never
/// detaches a worker).
pub struct Resolver {
    targets: Vec<Target>,
    hosts_file: Option<PathBuf>,
    last: Vec<BTreeSet<String>>,
    /// Names whose last lookup failed (warned once per failure streak).
    failing: BTreeSet<String>,
}

impl Resolver {
    /// `endpoints` were checked by [`check`]; one that no longer parses is skipped.
    pub fn new(endpoints: &[String], hosts_file: Option<PathBuf>) -> Resolver {
        let targets: Vec<Target> = endpoints.iter().filter_map(|e| target(e).ok()).collect();
        Resolver {
            last: vec![BTreeSet::new(); targets.len()],
            targets,
            hosts_file,
            failing: BTreeSet::new(),
        }
    }

    /// Whether every endpoint names exactly one data plane (no name to
    /// look up again).
    pub fn is_fixed(&self) -> bool {
        self.targets.iter().all(|t| matches!(t, Target::Fixed(_)))
    }

    /// The data planes the endpoints name now, in endpoint order (sorted),
    /// at most [`MAX_DATA_PLANES`].
    pub async fn resolve(&mut self) -> BTreeSet<String> {
        let hosts = match &self.hosts_file {
            Some(path) => read_hosts(path),
            None => HashMap::new(),
        };
        for (i, t) in self.targets.iter().enumerate() {
            let found = match t {
                Target::Fixed(e) => Ok(BTreeSet::from([e.clone()])),
                Target::Named { host, port } => match hosts.get(&host.to_ascii_lowercase()) {
                    Some(ips) => Ok(ips
                        .iter()
                        .map(|ip| tcp(SocketAddr::new(*ip, *port)))
                        .collect()),
                    None => lookup(host, *port).await,
                },
            };
            match found {
                Ok(set) => {
                    if let Target::Named { host, .. } = t {
                        if self.failing.remove(host) {
                            tracing::info!(name = %host, addresses = set.len(), "name resolves again");
                        }
                    }
                    self.last[i] = set;
                }
                Err(e) => {
                    if let Target::Named { host, .. } = t {
                        if self.failing.insert(host.clone()) {
                            tracing::warn!(name = %host, error = %e, keeping = self.last[i].len(), "cannot resolve the data planes' name: keeping the addresses it had");
                        }
                    }
                }
            }
        }
        let mut all: BTreeSet<String> = self.last.iter().flatten().cloned().collect();
        if all.len() > MAX_DATA_PLANES {
            tracing::warn!(
                found = all.len(),
                max = MAX_DATA_PLANES,
                "more data planes than a worker attaches to: the first {MAX_DATA_PLANES} (sorted) are used"
            );
            all = all.into_iter().take(MAX_DATA_PLANES).collect();
        }
        all
    }
}

async fn lookup(host: &str, port: u16) -> Result<BTreeSet<String>, String> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let set: BTreeSet<String> = addrs.map(tcp).collect();
    match set.is_empty() {
        true => Err("no address".into()),
        false => Ok(set),
    }
}

/// Reads a hosts(5) file: `ADDRESS NAME [NAME...]`, `#` starts a comment.
/// Names are matched case-insensitively. An unreadable file is an empty
/// one (with a warning): DNS answers instead.
fn read_hosts(path: &Path) -> HashMap<String, Vec<IpAddr>> {
    let text = std::fs::File::open(path).and_then(|f| {
        use std::io::Read;
        let mut s = String::new();
        f.take(MAX_HOSTS_FILE).read_to_string(&mut s)?;
        Ok(s)
    });
    match text {
        Ok(text) => parse_hosts(&text),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the hosts file: names are resolved by DNS");
            HashMap::new()
        }
    }
}

fn parse_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in words {
            let ips = map.entry(name.to_ascii_lowercase()).or_default();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_one_data_plane_or_a_name() {
        assert_eq!(
            target("tcp://127.0.0.1:9950"),
            Ok(Target::Fixed("tcp://127.0.0.1:9950".into()))
        );
        assert_eq!(
            target("tcp://[::1]:9950"),
            Ok(Target::Fixed("tcp://[::1]:9950".into()))
        );
        assert_eq!(
            target("ipc:///run/tw/workers.sock"),
            Ok(Target::Fixed("ipc:///run/tw/workers.sock".into()))
        );
        assert_eq!(
            target("tcp://tw-headless.ns.svc:9950"),
            Ok(Target::Named {
                host: "tw-headless.ns.svc".into(),
                port: 9950
            })
        );
        for bad in ["udp://x:1", "tcp://x", "tcp://x:99999", "x"] {
            assert!(target(bad).is_err(), "{bad}");
        }
        assert!(check(&[]).is_err());
    }

    #[test]
    fn hosts_file_lines() {
        let map = parse_hosts(
            "# comment\n127.0.0.1 dp dp-alias # trailing\n::1 DP\nnot-an-ip dp\n\n127.0.0.1 dp\n",
        );
        assert_eq!(
            map["dp"],
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(map["dp-alias"].len(), 1);
        assert_eq!(map.len(), 2);
    }

    #[tokio::test]
    async fn a_name_resolves_to_every_address_and_a_failure_keeps_the_last() {
        let dir = std::env::temp_dir().join(format!("tw-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, "127.0.0.2 dp\n127.0.0.1 dp\n").unwrap();
        let mut r = Resolver::new(
            &["tcp://dp:7".into(), "ipc:///x".into()],
            Some(hosts.clone()),
        );
        assert!(!r.is_fixed());
        let want: BTreeSet<String> = ["ipc:///x", "tcp://127.0.0.1:7", "tcp://127.0.0.2:7"]
            .map(String::from)
            .into();
        assert_eq!(r.resolve().await, want);
        std::fs::write(&hosts, "127.0.0.2 dp\n").unwrap();
        let fewer: BTreeSet<String> = ["ipc:///x", "tcp://127.0.0.2:7"].map(String::from).into();
        assert_eq!(r.resolve().await, fewer);
        // Gone from the file and unknown to DNS: the last answer stays.
        std::fs::write(&hosts, "").unwrap();
        let mut r2 = Resolver::new(&["tcp://no-such-name.invalid:7".into()], Some(hosts));
        assert!(r2.resolve().await.is_empty());
        r.targets[0] = Target::Named {
            host: "no-such-name.invalid".into(),
            port: 7,
        };
        assert_eq!(r.resolve().await, fewer);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
