//! Positions in text, for messages that point at a file's `line:col`
//! (mapping and configuration errors).

/// Byte offset → (line, column), both 1-based; columns count characters.
/// An offset past the end is the end; one inside a character counts that
/// character.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based_and_count_characters() {
        let t = "ab\ncé d\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 2), (1, 3));
        assert_eq!(line_col(t, 3), (2, 1));
        // `é` is two bytes, one column.
        assert_eq!(line_col(t, 6), (2, 3));
        assert_eq!(line_col(t, 1000), (3, 1));
    }

    #[test]
    fn an_offset_inside_a_character_does_not_panic() {
        // Byte 5 is the second byte of `é`.
        assert_eq!(line_col("ab\ncé", 5), (2, 2));
    }
}
