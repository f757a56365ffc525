//! Text from a guest module or a user, made safe to show: on a terminal, in a web page's text,
//! in a JSON body and in the audit log.

/// The most bytes of untrusted text one message quotes.
pub const MAX_QUOTED_BYTES: usize = 300;

/// `text` with every control, bidirectional and invisible formatting character written as an
/// escape (`\u{1b}`), and cut after `max` bytes with the length of what was left out. The
/// result holds no character that moves a terminal's cursor, changes its colours, reorders
/// the text around it or hides part of it.
pub fn defuse(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 16);
    for (at, c) in text.char_indices() {
        if out.len() >= max {
            out.push_str(&format!("... ({} more bytes)", text.len() - at));
            break;
        }
        if tidegate_policy::is_hidden_char(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_are_written_out_not_sent() {
        assert_eq!(
            defuse("ok\x1b[1A\x1b[2Kvalid\x07", 100),
            "ok\\u{1b}[1A\\u{1b}[2Kvalid\\u{7}"
        );
    }

    #[test]
    fn bidirectional_and_invisible_characters_are_written_out() {
        assert_eq!(defuse("a\u{202E}b\u{200B}c", 100), "a\\u{202e}b\\u{200b}c");
    }

    #[test]
    fn plain_text_in_any_script_is_kept() {
        assert_eq!(
            defuse("张伟 age_at_visit(x) -> int32", 100),
            "张伟 age_at_visit(x) -> int32"
        );
    }

    #[test]
    fn long_text_is_cut_with_what_was_left_out() {
        let long = "x".repeat(1 << 20);
        let short = defuse(&long, 300);
        assert!(short.len() < 330, "{}", short.len());
        assert!(short.ends_with("... (1048276 more bytes)"), "{short}");
    }
}
