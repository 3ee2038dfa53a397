//! A listener's address, parsed once when the config is read: `host:port`,
//! `host:0` (any free port) or `host:start-end` (the first free port of a
//! range). The text as written is kept, so the state file and the admin API
//! show it unchanged.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::bounds::{shown, MAX_ADDRESS_LEN};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// As written (`localhost:9090`, `[::1]:0`, ...).
    text: String,
    pub ip: IpAddr,
    pub ports: Ports,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// One port (0: any free port).
    One(u16),
    /// The first free port of `start..=end` (0 < start <= end).
    Range(u16, u16),
}

impl Address {
    /// Parses `host:port`, `host:0` or `host:start-end` (IPv6 as `[::1]:port`).
    pub fn parse(s: &str) -> Result<Address, String> {
        if s.len() > MAX_ADDRESS_LEN {
            return Err(format!(
                "address is {} bytes long; at most {MAX_ADDRESS_LEN}",
                s.len()
            ));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("address {} must be host:port or host:start-end", shown(s)))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = if host == "localhost" {
            IpAddr::from([127, 0, 0, 1])
        } else {
            host.parse().map_err(|_| {
                format!("address {}: {} is not an IP address", shown(s), shown(host))
            })?
        };
        let num = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("address {}: {} is not a port", shown(s), shown(p)))
        };
        let ports = match port.split_once('-') {
            None => Ports::One(num(port)?),
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a == 0 || a > b {
                    return Err(format!(
                        "address {}: port range must be start-end with 0 < start <= end",
                        shown(s)
                    ));
                }
                Ports::Range(a, b)
            }
        };
        Ok(Address {
            text: s.to_string(),
            ip,
            ports,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Address, D::Error> {
        let text = String::deserialize(d)?;
        Address::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<(IpAddr, Ports), String> {
        Address::parse(s).map(|a| (a.ip, a.ports))
    }

    #[test]
    fn parses_addresses() {
        let lo = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(parse("127.0.0.1:0"), Ok((lo, Ports::One(0))));
        assert_eq!(parse("localhost:9090"), Ok((lo, Ports::One(9090))));
        assert_eq!(
            parse("127.0.0.1:9000-9010"),
            Ok((lo, Ports::Range(9000, 9010)))
        );
        assert_eq!(
            parse("[::1]:80"),
            Ok(("::1".parse().unwrap(), Ports::One(80)))
        );
        assert_eq!(
            Address::parse("localhost:1").unwrap().to_string(),
            "localhost:1"
        );
        for bad in [
            "9090",
            "host:1",
            "127.0.0.1:x",
            "127.0.0.1:10-5",
            "127.0.0.1:0-5",
            "127.0.0.1:70000",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse(&"1".repeat(MAX_ADDRESS_LEN + 1)).is_err());
    }
}
