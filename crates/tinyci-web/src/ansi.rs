//! Terminal output to HTML for the run pages: SGR colours and weights become `<span>`s with
//! classes (the page's stylesheet names the colours; no inline style, so the content security
//! policy can forbid it), every other escape sequence is dropped, and text is escaped.
//!
//! Stateful across chunks, since a log arrives in pieces cut anywhere: an escape sequence or a
//! UTF-8 character split over two chunks is held until the rest comes, and a colour set in one
//! chunk still applies in the next. Each rendered piece is balanced HTML on its own (spans are
//! closed at its end and reopened at the start of the next), so pieces can be appended to the
//! page one by one.

use std::fmt::Write as _;

/// The longest escape sequence kept while waiting for its end; a longer one is dropped as
/// garbage rather than buffered without bound.
const MAX_PENDING_ESCAPE: usize = 64;

/// Graphic rendition in effect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Style {
    bold: bool,
    faint: bool,
    italic: bool,
    underline: bool,
    /// 0–15: the 16 terminal colours (8–15 bright).
    fg: Option<u8>,
    bg: Option<u8>,
}

impl Style {
    fn is_plain(&self) -> bool {
        *self == Style::default()
    }

    fn classes(&self) -> String {
        let mut classes = Vec::new();
        if self.bold {
            classes.push("b".to_owned());
        }
        if self.faint {
            classes.push("dim".to_owned());
        }
        if self.italic {
            classes.push("i".to_owned());
        }
        if self.underline {
            classes.push("u".to_owned());
        }
        if let Some(fg) = self.fg {
            classes.push(format!("f{fg}"));
        }
        if let Some(bg) = self.bg {
            classes.push(format!("g{bg}"));
        }
        classes.join(" ")
    }

    /// Applies one SGR parameter list (`ESC [ params m`).
    fn apply(&mut self, params: &str) {
        let mut codes = params.split(';').map(|p| {
            if p.is_empty() {
                Some(0)
            } else {
                p.parse::<u16>().ok()
            }
        });
        while let Some(code) = codes.next() {
            match code {
                Some(0) => *self = Style::default(),
                Some(1) => self.bold = true,
                Some(2) => self.faint = true,
                Some(3) => self.italic = true,
                Some(4) => self.underline = true,
                Some(22) => (self.bold, self.faint) = (false, false),
                Some(23) => self.italic = false,
                Some(24) => self.underline = false,
                Some(c @ 30..=37) => self.fg = Some((c - 30) as u8),
                Some(39) => self.fg = None,
                Some(c @ 40..=47) => self.bg = Some((c - 40) as u8),
                Some(49) => self.bg = None,
                Some(c @ 90..=97) => self.fg = Some((c - 90 + 8) as u8),
                Some(c @ 100..=107) => self.bg = Some((c - 100 + 8) as u8),
                // 256-colour and true-colour forms: a low 256-colour index maps onto the 16;
                // others are skipped with their arguments.
                Some(c @ (38 | 48)) => {
                    let colour = match codes.next().flatten() {
                        Some(5) => codes
                            .next()
                            .flatten()
                            .and_then(|n| u8::try_from(n).ok())
                            .filter(|n| *n < 16),
                        Some(2) => {
                            codes.next();
                            codes.next();
                            codes.next();
                            None
                        }
                        _ => None,
                    };
                    if c == 38 {
                        self.fg = colour;
                    } else {
                        self.bg = colour;
                    }
                }
                _ => {}
            }
        }
    }
}

/// Renders a stream of terminal output as HTML, piece by piece.
#[derive(Debug, Default)]
pub struct AnsiHtml {
    style: Style,
    /// Bytes of an unfinished escape sequence or UTF-8 character from the previous piece.
    pending: Vec<u8>,
}

impl AnsiHtml {
    /// Renders the next piece of output.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        let mut input = std::mem::take(&mut self.pending);
        input.extend_from_slice(bytes);
        let mut out = String::with_capacity(input.len() + 32);
        let mut open = false;
        let mut text = String::new();
        let mut i = 0;
        while i < input.len() {
            if input[i] == 0x1b {
                match escape_len(&input[i..]) {
                    Escape::Incomplete if input.len() - i <= MAX_PENDING_ESCAPE => {
                        self.pending = input[i..].to_vec();
                        break;
                    }
                    Escape::Incomplete => {
                        i = input.len();
                    }
                    Escape::Sgr { len, params } => {
                        flush(&mut out, &mut text, self.style, &mut open);
                        self.style.apply(&params);
                        i += len;
                    }
                    Escape::Other { len } => i += len,
                }
                continue;
            }
            // Text up to the next escape, decoded as UTF-8; a character cut at the end of the
            // piece waits for the next one.
            let end = input[i..]
                .iter()
                .position(|&b| b == 0x1b)
                .map_or(input.len(), |p| i + p);
            let chunk = &input[i..end];
            match std::str::from_utf8(chunk) {
                Ok(s) => push_text(&mut text, s),
                Err(e) => {
                    let valid = e.valid_up_to();
                    push_text(
                        &mut text,
                        std::str::from_utf8(&chunk[..valid]).unwrap_or_default(),
                    );
                    match e.error_len() {
                        // A cut character at the very end: keep it for the next piece.
                        None if end == input.len() => {
                            self.pending = chunk[valid..].to_vec();
                            flush(&mut out, &mut text, self.style, &mut open);
                            close(&mut out, &mut open);
                            return out;
                        }
                        None => {
                            text.push('\u{fffd}');
                            i += valid + (chunk.len() - valid);
                            continue;
                        }
                        Some(bad) => {
                            text.push('\u{fffd}');
                            i += valid + bad;
                            continue;
                        }
                    }
                }
            }
            i = end;
        }
        flush(&mut out, &mut text, self.style, &mut open);
        close(&mut out, &mut open);
        out
    }
}

fn push_text(text: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => text.push_str("&amp;"),
            '<' => text.push_str("&lt;"),
            '>' => text.push_str("&gt;"),
            '"' => text.push_str("&quot;"),
            '\'' => text.push_str("&#39;"),
            // Carriage returns (progress bars) and other controls are not shown; tabs and
            // newlines are.
            '\r' => {}
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => text.push(c),
        }
    }
}

/// Writes `text` in the current style (opening a span if the style is not plain).
fn flush(out: &mut String, text: &mut String, style: Style, open: &mut bool) {
    if text.is_empty() {
        return;
    }
    close(out, open);
    if !style.is_plain() {
        let _ = write!(out, "<span class=\"{}\">", style.classes());
        *open = true;
    }
    out.push_str(text);
    text.clear();
}

fn close(out: &mut String, open: &mut bool) {
    if *open {
        out.push_str("</span>");
        *open = false;
    }
}

enum Escape {
    /// Not finished within the bytes at hand.
    Incomplete,
    /// `ESC [ params m`.
    Sgr { len: usize, params: String },
    /// Any other sequence, dropped.
    Other { len: usize },
}

/// Measures the escape sequence at the start of `bytes` (which starts with ESC).
fn escape_len(bytes: &[u8]) -> Escape {
    match bytes.get(1) {
        None => Escape::Incomplete,
        // CSI: parameters and intermediates, then a final byte in 0x40..=0x7e.
        Some(b'[') => {
            for (n, &b) in bytes.iter().enumerate().skip(2) {
                if (0x40..=0x7e).contains(&b) {
                    let len = n + 1;
                    if b == b'm' {
                        let params = String::from_utf8_lossy(&bytes[2..n]).into_owned();
                        return Escape::Sgr { len, params };
                    }
                    return Escape::Other { len };
                }
                if !(0x20..=0x3f).contains(&b) {
                    // Malformed: drop the introducer only.
                    return Escape::Other { len: n };
                }
            }
            Escape::Incomplete
        }
        // OSC (window titles, hyperlinks): up to BEL or ESC \.
        Some(b']') => {
            let mut n = 2;
            while n < bytes.len() {
                match bytes[n] {
                    0x07 => return Escape::Other { len: n + 1 },
                    0x1b if bytes.get(n + 1) == Some(&b'\\') => {
                        return Escape::Other { len: n + 2 };
                    }
                    0x1b if n + 1 == bytes.len() => return Escape::Incomplete,
                    _ => n += 1,
                }
            }
            Escape::Incomplete
        }
        // nF sequences (ESC ( B and the like): intermediates, then one final byte.
        Some(0x20..=0x2f) => match bytes
            .iter()
            .skip(2)
            .position(|b| !(0x20..=0x2f).contains(b))
        {
            Some(n) => Escape::Other { len: n + 3 },
            None => Escape::Incomplete,
        },
        // Two-byte sequences (ESC 7, ESC =, …).
        Some(_) => Escape::Other { len: 2 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(pieces: &[&[u8]]) -> String {
        let mut ansi = AnsiHtml::default();
        pieces.iter().map(|p| ansi.push(p)).collect()
    }

    #[test]
    fn colours_and_weights_become_classes_and_text_is_escaped() {
        assert_eq!(
            render(&[b"\x1b[1;32mok\x1b[0m <b>&\n"]),
            "<span class=\"b f2\">ok</span> &lt;b&gt;&amp;\n"
        );
        assert_eq!(
            render(&[b"\x1b[91mred\x1b[39m plain"]),
            "<span class=\"f9\">red</span> plain"
        );
        assert_eq!(
            render(&[b"\x1b[38;5;4mblue\x1b[38;2;1;2;3m\x1b[48;5;200mx\x1b[m"]),
            "<span class=\"f4\">blue</span>x"
        );
    }

    #[test]
    fn a_style_carries_over_pieces_and_each_piece_is_balanced() {
        let mut ansi = AnsiHtml::default();
        assert_eq!(
            ansi.push(b"\x1b[31mone\n"),
            "<span class=\"f1\">one\n</span>"
        );
        assert_eq!(
            ansi.push(b"two\x1b[0m\n"),
            "<span class=\"f1\">two</span>\n"
        );
    }

    #[test]
    fn escapes_and_characters_cut_between_pieces_wait_for_the_rest() {
        assert_eq!(
            render(&[b"a\x1b[3", b"2mb\x1b", b"[0mc"]),
            "a<span class=\"f2\">b</span>c"
        );
        let snowman = "☃".as_bytes();
        assert_eq!(render(&[&snowman[..1], &snowman[1..]]), "☃");
    }

    #[test]
    fn other_sequences_and_controls_are_dropped_and_garbage_is_bounded() {
        assert_eq!(
            render(&[b"\x1b[2K\rprogress\x1b]0;title\x07 done\x1b(B\x07\n"]),
            "progress done\n"
        );
        assert_eq!(render(&[b"bad \xff byte"]), "bad \u{fffd} byte");
        let mut ansi = AnsiHtml::default();
        let mut long = b"\x1b[".to_vec();
        long.extend(std::iter::repeat_n(b'1', 100));
        assert_eq!(ansi.push(&long), "");
        assert!(ansi.pending.is_empty());
        assert_eq!(ansi.push(b"after"), "after");
    }
}
