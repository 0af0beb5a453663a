//! Positions in text: 1-based line and column of a byte offset, for errors that
//! name the line of a configuration or peers file.

/// 1-based line and column of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_and_columns_are_one_based() {
        assert_eq!(super::line_column("ab\ncd", 0), (1, 1));
        assert_eq!(super::line_column("ab\ncd", 4), (2, 2));
        assert_eq!(super::line_column("ab", 99), (1, 3));
    }
}
