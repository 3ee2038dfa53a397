//! Terminal tables: columns as wide as their widest cell, two spaces apart,
//! numbers right-aligned, no trailing spaces. Plus the few formatters the
//! tables share (durations, latencies, rates).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `--no-headers`: tables print their rows only (for scripts that cut
/// columns). Set once from the command line.
static NO_HEADERS: AtomicBool = AtomicBool::new(false);

pub fn set_no_headers(on: bool) {
    NO_HEADERS.store(on, Ordering::Relaxed);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns given as (header, alignment).
    pub fn new(columns: &[(&str, Align)]) -> Table {
        Table {
            headers: columns.iter().map(|(h, _)| h.to_string()).collect(),
            align: columns.iter().map(|(_, a)| *a).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(
            cells.len(),
            self.headers.len(),
            "row width differs from the header"
        );
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        let skip = usize::from(NO_HEADERS.load(Ordering::Relaxed));
        for row in std::iter::once(&self.headers).chain(&self.rows).skip(skip) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - width(cell);
                match self.align[i] {
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Key/value lines ("name:  Echo"), keys padded to the longest.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let w = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let line = format!("{:<width$}  {}", format!("{k}:"), v, width = w + 1);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Milliseconds as a humantime duration; 0 means "the server's default".
pub fn ms(ms: u64) -> String {
    if ms == 0 {
        "default".to_string()
    } else {
        humantime::format_duration(Duration::from_millis(ms)).to_string()
    }
}

/// Milliseconds rounded to whole seconds, for uptimes.
pub fn uptime(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

/// A latency in milliseconds, with about three significant digits.
pub fn latency(ms: f64) -> String {
    if !ms.is_finite() || ms <= 0.0 {
        "-".to_string()
    } else if ms < 10.0 {
        format!("{ms:.2}ms")
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

/// Calls per second.
pub fn rate(r: f64) -> String {
    if !r.is_finite() || r < 0.0 {
        "-".to_string()
    } else if r < 100.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.0}")
    }
}

/// A share in percent with one decimal ("2.5%"), "<0.1%" for a small but
/// non-zero one, "-" when there is nothing to take a share of.
pub fn percent(p: Option<f64>) -> String {
    match p {
        Some(p) if p.is_finite() && p >= 0.0 => {
            if p > 0.0 && p < 0.05 {
                "<0.1%".to_string()
            } else {
                format!("{p:.1}%")
            }
        }
        _ => "-".to_string(),
    }
}

/// The length of a sampling window, rounded so that the jitter of the
/// samples does not show: "200ms", "2s", "1.5s", "5m".
pub fn window(ms: u64) -> String {
    let to_10ms = (ms + 5) / 10 * 10;
    if to_10ms < 1000 {
        return format!("{to_10ms}ms");
    }
    let tenths = (ms + 50) / 100;
    if tenths < 600 {
        if tenths.is_multiple_of(10) {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        }
    } else {
        humantime::format_duration(Duration::from_secs((ms + 500) / 1000)).to_string()
    }
}

pub fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// A list for one cell: "Echo,Calc", or "-" when empty.
pub fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(",")
    }
}

pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("CALLS", Align::Right),
            ("STATE", Align::Left),
        ]);
        t.row(vec!["Echo".into(), "12345".into(), "ok".into()]);
        t.row(vec!["Calculator".into(), "7".into(), "".into()]);
        assert_eq!(
            t.render(),
            "NAME        CALLS  STATE\n\
             Echo        12345  ok\n\
             Calculator      7\n"
        );
    }

    #[test]
    fn header_wider_than_cells() {
        let mut t = Table::new(&[("ID", Align::Left), ("IN-FLIGHT", Align::Right)]);
        t.row(vec!["1".into(), "0".into()]);
        assert_eq!(t.render(), "ID  IN-FLIGHT\n1           0\n");
    }

    #[test]
    fn empty_table_is_its_header() {
        let t = Table::new(&[("A", Align::Left), ("B", Align::Right)]);
        assert_eq!(t.render(), "A  B\n");
    }

    #[test]
    fn unicode_width_by_chars() {
        let mut t = Table::new(&[("N", Align::Left), ("X", Align::Left)]);
        t.row(vec!["é".into(), "1".into()]);
        t.row(vec!["ab".into(), "2".into()]);
        assert_eq!(t.render(), "N   X\né   1\nab  2\n");
    }

    #[test]
    #[should_panic]
    fn rejects_ragged_rows() {
        Table::new(&[("A", Align::Left)]).row(vec![]);
    }

    #[test]
    fn key_values() {
        assert_eq!(
            fields(&[
                ("name", "Echo".into()),
                ("timeout", "5s".into()),
                ("x", "".into())
            ]),
            "name:     Echo\ntimeout:  5s\nx:\n"
        );
    }

    #[test]
    fn formatters() {
        assert_eq!(ms(0), "default");
        assert_eq!(ms(1500), "1s 500ms");
        assert_eq!(ms(300_000), "5m");
        assert_eq!(uptime(3_723_456), "1h 2m 3s");
        assert_eq!(latency(0.4234), "0.42ms");
        assert_eq!(latency(12.345), "12.3ms");
        assert_eq!(latency(2500.0), "2.50s");
        assert_eq!(latency(0.0), "-");
        assert_eq!(rate(12.34), "12.3");
        assert_eq!(rate(1234.4), "1234");
        assert_eq!(percent(None), "-");
        assert_eq!(percent(Some(0.0)), "0.0%");
        assert_eq!(percent(Some(0.01)), "<0.1%");
        assert_eq!(percent(Some(12.345)), "12.3%");
        assert_eq!(percent(Some(100.0)), "100.0%");
        assert_eq!(window(198), "200ms");
        assert_eq!(window(996), "1s");
        assert_eq!(window(1998), "2s");
        assert_eq!(window(2049), "2s");
        assert_eq!(window(1520), "1.5s");
        assert_eq!(window(59_990), "1m");
        assert_eq!(window(90_200), "1m 30s");
        assert_eq!(list(&[]), "-");
        assert_eq!(list(&["Echo".into(), "Calc".into()]), "Echo,Calc");
    }
}
