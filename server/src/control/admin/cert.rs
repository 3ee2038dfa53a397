//! The subject of a client certificate, for "who did what": just enough DER
//! to read the subject name of an X.509 certificate the TLS layer has
//! already verified. Every length is checked against the bytes present;
//! anything unexpected gives `None`.

/// `CN=client,O=example` for the attributes we name (CN, O, OU, C); `None`
/// if the certificate cannot be read or names none of them.
pub fn subject(der: &[u8]) -> Option<String> {
    let (cert, _) = tlv(der, 0x30)?;
    let (tbs, _) = tlv(cert, 0x30)?;
    let mut rest = tbs;
    // version [0] EXPLICIT, optional.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest, 0xa0)?.1;
    }
    rest = tlv(rest, 0x02)?.1; // serialNumber
    rest = tlv(rest, 0x30)?.1; // signature algorithm
    rest = tlv(rest, 0x30)?.1; // issuer
    rest = tlv(rest, 0x30)?.1; // validity
    let (name, _) = tlv(rest, 0x30)?; // subject
    let mut parts = Vec::new();
    let mut sets = name;
    while !sets.is_empty() {
        let (set, next) = tlv(sets, 0x31)?;
        sets = next;
        let (attr, _) = tlv(set, 0x30)?;
        let (oid, value) = tlv(attr, 0x06)?;
        let label = match oid {
            [0x55, 0x04, 0x03] => "CN",
            [0x55, 0x04, 0x0a] => "O",
            [0x55, 0x04, 0x0b] => "OU",
            [0x55, 0x04, 0x06] => "C",
            _ => continue,
        };
        // Any string type: its content bytes.
        let (&tag, _) = value.split_first()?;
        let (text, _) = tlv(value, tag)?;
        let text = String::from_utf8_lossy(&text[..text.len().min(128)]);
        parts.push(format!("{label}={}", text.replace([',', '\n'], " ")));
        if parts.len() == 8 {
            break;
        }
    }
    (!parts.is_empty()).then(|| parts.join(","))
}

/// The content of the DER element at the start of `b` with tag `tag`, and
/// what follows it.
fn tlv(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = b.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = rest.get(..n)?;
        let len = bytes.iter().fold(0usize, |a, &x| (a << 8) | usize::from(x));
        (len, &rest[n..])
    };
    let content = rest.get(..len)?;
    Some((content, &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_none_never_a_panic() {
        for b in [
            &[][..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x05, 1, 2],
        ] {
            assert_eq!(subject(b), None);
        }
    }
}
