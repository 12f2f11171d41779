//! Job output made safe to print on a terminal: a job is untrusted, and a terminal obeys the
//! bytes it is sent (set the window title, write the clipboard with OSC 52, move the cursor
//! up and overwrite "FAILED" with "passed", ring the bell). Colours (SGR: `ESC [ … m`), tabs
//! and newlines pass; a carriage return not ending a line becomes a newline (progress bars
//! print line by line rather than overwrite); every other control character and escape is
//! shown as text (`^[`, `^G`, `<9B>`), so nothing is hidden and nothing is obeyed.
//! With `NO_COLOR` set, colours are dropped too. `tinyci logs --raw` prints the bytes as
//! stored.

/// Longest escape sequence held back while waiting for its end across chunks; a longer one
/// is shown as text.
const MAX_PENDING: usize = 64;

/// A stateful filter: sequences split across chunks are recognized whole.
#[derive(Debug, Default)]
pub(crate) struct TerminalSafe {
    pending: Vec<u8>,
    /// Drop colours rather than pass them (`NO_COLOR`).
    without_colour: bool,
}

impl TerminalSafe {
    /// A filter that drops colours as well.
    pub(crate) fn without_colour() -> Self {
        Self {
            without_colour: true,
            ..Self::default()
        }
    }

    /// Filters `data`, appending what may be printed to `out`.
    pub(crate) fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let mut input = std::mem::take(&mut self.pending);
        input.extend_from_slice(data);
        let mut i = 0;
        while i < input.len() {
            match classify(&input[i..]) {
                Piece::Incomplete if input.len() - i <= MAX_PENDING => {
                    self.pending = input[i..].to_vec();
                    return;
                }
                Piece::Incomplete => {
                    // Too long to be a colour: show the escape and go on.
                    out.extend_from_slice(b"^[");
                    i += 1;
                }
                Piece::Pass(n) => {
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                }
                Piece::Colour(n) => {
                    if !self.without_colour {
                        out.extend_from_slice(&input[i..i + n]);
                    }
                    i += n;
                }
                Piece::Newline(n) => {
                    out.push(b'\n');
                    i += n;
                }
                Piece::Show(n) => {
                    for &b in &input[i..i + n] {
                        show(b, out);
                    }
                    i += n;
                }
            }
        }
    }

    /// Flushes what was held back at the end of the output (shown as text).
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        let pending = std::mem::take(&mut self.pending);
        for b in pending {
            if b == b'\r' {
                out.push(b'\n');
            } else {
                show(b, out);
            }
        }
    }
}

/// What the bytes at the start of a slice are.
enum Piece {
    /// Printable as they are, this many bytes.
    Pass(usize),
    /// A colour sequence of this many bytes.
    Colour(usize),
    /// A line end of this many bytes (`\r\n`, or a lone `\r`).
    Newline(usize),
    /// To be shown as text, this many bytes.
    Show(usize),
    /// The start of something whose end has not arrived yet.
    Incomplete,
}

fn classify(rest: &[u8]) -> Piece {
    match rest {
        [b'\n' | b'\t', ..] => Piece::Pass(1),
        [b'\r'] => Piece::Incomplete,
        [b'\r', b'\n', ..] => Piece::Newline(2),
        [b'\r', ..] => Piece::Newline(1),
        [0x1b] => Piece::Incomplete,
        [0x1b, b'[', params @ ..] => sgr(params),
        [0x1b, ..] => Piece::Show(1),
        [0xc2] => Piece::Incomplete,
        // C1 controls, UTF-8 encoded: some terminals obey them (U+009B is a CSI).
        [0xc2, 0x80..=0x9f, ..] => Piece::Show(2),
        [b, ..] if *b < 0x20 || *b == 0x7f => Piece::Show(1),
        [_, ..] => Piece::Pass(1),
        [] => Piece::Pass(0),
    }
}

/// `ESC [` followed by `params`: a colour (`[0-9;]* m`) passes whole; anything else shows
/// its escape.
fn sgr(params: &[u8]) -> Piece {
    for (i, &b) in params.iter().enumerate() {
        match b {
            b'0'..=b'9' | b';' => continue,
            b'm' => return Piece::Colour(i + 3),
            _ => return Piece::Show(1),
        }
    }
    Piece::Incomplete
}

/// Appends a control byte as visible text.
fn show(b: u8, out: &mut Vec<u8>) {
    match b {
        0x00..=0x1f => out.extend_from_slice(&[b'^', b + 0x40]),
        0x7f => out.extend_from_slice(b"^?"),
        0xc2 => {}
        0x80..=0x9f => out.extend_from_slice(format!("<{b:02X}>").as_bytes()),
        _ => out.push(b),
    }
}

/// A peer-given word (a runner's hostname or version) for one table cell: every control
/// character, escapes and line ends included, shown as `?`.
pub(crate) fn line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(chunks: &[&[u8]]) -> String {
        let mut safe = TerminalSafe::default();
        let mut out = Vec::new();
        for chunk in chunks {
            safe.push(chunk, &mut out);
        }
        safe.finish(&mut out);
        String::from_utf8(out).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn colours_tabs_and_newlines_pass() {
        assert_eq!(
            filter(&[b"\x1b[1;31mred\x1b[0m\tok\n"]),
            "\x1b[1;31mred\x1b[0m\tok\n"
        );
        // Split anywhere, the same.
        assert_eq!(
            filter(&[b"\x1b", b"[3", b"2m", b"green\r", b"\n"]),
            "\x1b[32mgreen\n"
        );
    }

    #[test]
    fn without_colour_colours_are_dropped_and_the_rest_is_as_before() {
        let mut safe = TerminalSafe::without_colour();
        let mut out = Vec::new();
        for chunk in [&b"\x1b[1;31mred\x1b"[..], b"[0m\tok \x1b]0;t\x07\n"] {
            safe.push(chunk, &mut out);
        }
        safe.finish(&mut out);
        assert_eq!(String::from_utf8_lossy(&out), "red\tok ^[]0;t^G\n");
    }

    #[test]
    fn everything_a_terminal_would_obey_is_shown_instead() {
        // Window title, clipboard write, cursor up and erase line, bell, C1 CSI.
        assert_eq!(filter(&[b"\x1b]0;pwned\x07"]), "^[]0;pwned^G");
        assert_eq!(
            filter(&[b"\x1b]52;c;ZXZpbA==\x1b\\"]),
            "^[]52;c;ZXZpbA==^[\\"
        );
        assert_eq!(
            filter(&[b"FAILED\x1b[1A\x1b[2Kpassed"]),
            "FAILED^[[1A^[[2Kpassed"
        );
        assert_eq!(filter(&["\u{9b}31m".as_bytes()]), "<9B>31m");
        // A carriage return cannot overwrite a line.
        assert_eq!(filter(&[b"FAILED\rpassed\n"]), "FAILED\npassed\n");
        // An escape that never ends is shown, not held forever.
        let long = [b"\x1b[".as_slice(), &[b'1'; 100]].concat();
        assert!(filter(&[&long]).starts_with("^[[111"));
        assert_eq!(filter(&[b"end\x1b"]), "end^[");
        // UTF-8 text is untouched.
        assert_eq!(filter(&["héllo ✓\n".as_bytes()]), "héllo ✓\n");
    }
}
