//! Text formatting shared by the reports (`bench`, `profile`, `inspect`): aligned tables
//! and numbers as people read them.

/// A ratio with at least two decimals and three significant digits: `348.10x`, `0.00427x`.
pub fn times(x: f64) -> String {
    let magnitude = if x > 0.0 { x.log10().floor() as i64 } else { 0 };
    let decimals = (2 - magnitude).clamp(2, 9) as usize;
    format!("{x:.decimals$}x")
}

/// `1234567` -> `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// True for a cell that reads as a number (`1,234`, `0.5`, `2.00x`, `12 %`, `-`).
fn numeric(cell: &str) -> bool {
    cell == "-"
        || (cell.chars().any(|c| c.is_ascii_digit())
            && cell
                .chars()
                .all(|c| c.is_ascii_digit() || ",.-x% ".contains(c))
            && !cell.starts_with("0x"))
}

/// Columns padded to their widest cell: the first and every column of text left-aligned,
/// columns of numbers right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let right: Vec<bool> = (0..header.len())
        .map(|i| i > 0 && rows.iter().all(|r| numeric(&r[i])))
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        for (i, cell) in cells.enumerate() {
            let pad = " ".repeat(widths[i].saturating_sub(cell.chars().count()));
            if i > 0 {
                out.push_str("  ");
            }
            if right[i] {
                out.push_str(&pad);
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&pad);
            }
        }
        // Trailing spaces of a left-aligned last column are noise.
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(&mut out, &mut header.iter().copied());
    for r in rows {
        line(&mut out, &mut r.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn ratios_keep_three_significant_digits() {
        assert_eq!(times(348.1), "348.10x");
        assert_eq!(times(1.0), "1.00x");
        assert_eq!(times(0.00427), "0.00427x");
        assert_eq!(times(0.0), "0.00x");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["system", "ops/s"],
            &[
                vec!["mergelog".into(), "1,000".into()],
                vec!["naive".into(), "5".into()],
            ],
        );
        assert_eq!(t, "system    ops/s\nmergelog  1,000\nnaive         5\n");
        let t = table(
            &["seq", "sorted", "keys"],
            &[vec!["1".into(), "yes".into(), "0x00".into()]],
        );
        assert_eq!(t, "seq  sorted  keys\n1    yes     0x00\n");
    }
}
