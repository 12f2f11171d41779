//! Masking secret values in a job's output before it leaves the runner (and again at the
//! site): every occurrence of a value, of its base64 (standard and URL-safe alphabets, at each
//! of the three alignments it can have inside a longer encoding) and of its URL-encoded form
//! becomes `***`, including occurrences split across writes and chunk boundaries.
//!
//! Sans-IO: a [`Masker`] is fed chunks and returns what may be passed on; it holds back at most
//! the longest form's length less one byte, the most that could be the start of a form the
//! next chunk completes.

use std::collections::BTreeSet;

/// What a masked value becomes.
pub const MASK: &[u8] = b"***";

/// The shortest value that may be masked: masking shorter ones would mangle ordinary output
/// (and say which short strings are secret).
pub const MIN_SECRET_LEN: usize = 6;

/// A value too short to be masked safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a secret value must be at least {MIN_SECRET_LEN} bytes to be masked in logs; this one is {len}"
)]
pub struct TooShort {
    /// Its length.
    pub len: usize,
}

/// The byte strings to mask for secret `values`: each value, its URL-encoded form, and the
/// parts of its base64 encodings every occurrence inside a longer encoding shares.
pub fn masked_forms<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<Vec<u8>>, TooShort> {
    let mut forms = BTreeSet::new();
    for value in values {
        if value.len() < MIN_SECRET_LEN {
            return Err(TooShort { len: value.len() });
        }
        forms.insert(value.to_vec());
        let encoded = url_encode(value);
        // Percent-escapes in lower case, and HTML forms' `+` for a space, mean the same.
        forms.insert(lowercase_escapes(&encoded));
        forms.insert(replace_all(&encoded, b"%20", b"+"));
        forms.insert(encoded);
        for alphabet in [STANDARD, URL_SAFE] {
            for offset in 0..3 {
                let core = base64_core(value, offset, alphabet);
                // A core this short says little and would match ordinary text.
                if core.len() >= MIN_SECRET_LEN {
                    forms.insert(core);
                }
            }
        }
    }
    Ok(forms.into_iter().collect())
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The base64 characters that depend only on `value` when it starts `offset` bytes into the
/// encoded stream: whatever surrounds it, these appear wherever it is encoded at that offset.
fn base64_core(value: &[u8], offset: usize, alphabet: &[u8; 64]) -> Vec<u8> {
    let mut bytes = vec![0u8; offset];
    bytes.extend_from_slice(value);
    let encoded = base64(&bytes, alphabet);
    let bits = 8 * bytes.len();
    // Character i holds bits [6i, 6i + 6): keep those wholly inside the value's bits.
    let first = (8 * offset).div_ceil(6);
    let end = bits / 6;
    encoded
        .get(first..end)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

fn base64(bytes: &[u8], alphabet: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = group.len() + 1;
        for i in 0..chars {
            out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize]);
        }
    }
    out
}

/// `encoded` with each `%XX` escape's hex digits in lower case.
fn lowercase_escapes(encoded: &[u8]) -> Vec<u8> {
    let mut out = encoded.to_vec();
    let mut i = 0;
    while i < out.len() {
        if out[i] == b'%' {
            for digit in out.iter_mut().skip(i + 1).take(2) {
                digit.make_ascii_lowercase();
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    out
}

/// `bytes` with every `from` replaced by `to`.
fn replace_all(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fn url_encode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() * 3);
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// A streaming masker for one output stream.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Forms to mask, longest first (so the longest match at a position wins).
    forms: Vec<Vec<u8>>,
    /// The forms each byte begins.
    starts: FirstBytes,
    /// The longest form's length: a rest at least this long cannot be a form's prefix.
    longest: usize,
    /// Input not passed on yet: it may begin a form the next chunk completes.
    held: Vec<u8>,
}

/// The forms each byte begins, as indices in the forms' order: at a position, only the forms
/// starting with its byte are tried (most output bytes begin none).
#[derive(Debug, Clone)]
struct FirstBytes(Vec<Vec<usize>>);

impl Default for FirstBytes {
    fn default() -> Self {
        Self(vec![Vec::new(); 256])
    }
}

impl FirstBytes {
    fn of(forms: &[Vec<u8>]) -> Self {
        let mut starts = Self::default();
        for (i, form) in forms.iter().enumerate() {
            if let Some(&first) = form.first() {
                starts.0[usize::from(first)].push(i);
            }
        }
        starts
    }

    /// The indices of the forms `byte` begins.
    fn begun_by(&self, byte: u8) -> &[usize] {
        &self.0[usize::from(byte)]
    }
}

impl Masker {
    /// A masker for `forms` (from [`masked_forms`]); none masks nothing.
    pub fn new(mut forms: Vec<Vec<u8>>) -> Self {
        forms.retain(|f| !f.is_empty());
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        Self {
            starts: FirstBytes::of(&forms),
            longest: forms.first().map_or(0, Vec::len),
            forms,
            held: Vec::new(),
        }
    }

    /// Whether it masks anything.
    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// Takes the next chunk; returns what may be passed on now.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        if self.forms.is_empty() {
            return data.to_vec();
        }
        self.held.extend_from_slice(data);
        let (out, used) = self.scan(false);
        self.held.drain(..used);
        out
    }

    /// The stream ended: passes on what was held back, masked.
    pub fn finish(&mut self) -> Vec<u8> {
        let (out, _) = self.scan(true);
        self.held.clear();
        out
    }

    /// Masks `held` from its start; unless `last`, stops where a form might still begin.
    /// Returns the output and how many input bytes it consumed.
    fn scan(&self, last: bool) -> (Vec<u8>, usize) {
        let input = &self.held;
        let mut out = Vec::with_capacity(input.len());
        let mut i = 0;
        while i < input.len() {
            // A byte that begins no form can neither start a match nor a prefix worth
            // holding back: pass the whole run of them at once.
            let run = input[i..]
                .iter()
                .position(|&b| !self.starts.begun_by(b).is_empty())
                .unwrap_or(input.len() - i);
            if run > 0 {
                out.extend_from_slice(&input[i..i + run]);
                i += run;
                continue;
            }
            let rest = &input[i..];
            // A form longer than what is here may still match once more input arrives (one
            // secret may begin another): wait for it rather than take a shorter match.
            if !last
                && rest.len() < self.longest
                && self
                    .forms
                    .iter()
                    .any(|f| f.len() > rest.len() && f.starts_with(rest))
            {
                break;
            }
            if let Some(form) = self
                .starts
                .begun_by(input[i])
                .iter()
                .map(|&f| &self.forms[f])
                .find(|f| rest.starts_with(f))
            {
                out.extend_from_slice(MASK);
                i += form.len();
                continue;
            }
            out.push(input[i]);
            i += 1;
        }
        (out, i)
    }
}

/// Masks, in place and keeping its length, every form in `chunk`, including one that began in
/// `before` (the end of what preceded it, already passed on): each masked byte becomes `*`.
/// Returns how many forms were found. For the site's second line, which must not change a
/// log chunk's length (runners resend by offset) nor hold any of it back.
pub fn scrub(forms: &[Vec<u8>], before: &[u8], chunk: &mut [u8]) -> usize {
    let longest = forms.iter().map(Vec::len).max().unwrap_or(0);
    if longest == 0 {
        return 0;
    }
    let keep = before.len().min(longest - 1);
    let mut text = before[before.len() - keep..].to_vec();
    text.extend_from_slice(chunk);
    let starts = FirstBytes::of(forms);
    let mut found = 0;
    let mut masked = vec![false; text.len()];
    for start in 0..text.len() {
        for form in starts.begun_by(text[start]).iter().map(|&f| &forms[f]) {
            if text[start..].starts_with(form) && start + form.len() > keep {
                found += 1;
                masked[start..start + form.len()].fill(true);
            }
        }
    }
    for (i, byte) in chunk.iter_mut().enumerate() {
        if masked[keep + i] {
            *byte = b'*';
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn masker(values: &[&str]) -> Masker {
        Masker::new(masked_forms(values.iter().map(|v| v.as_bytes())).unwrap())
    }

    fn mask_in_pieces(masker: &mut Masker, text: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = text;
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).clamp(1, rest.len());
            out.extend(masker.push(&rest[..n]));
            rest = &rest[n..];
        }
        out.extend(masker.finish());
        out
    }

    #[test]
    fn values_and_their_encodings_are_masked_however_the_output_is_cut() {
        let secret = "hunter2-registry-token";
        let b64 = base64(secret.as_bytes(), STANDARD);
        let urlsafe_in_middle = {
            let mut v = b"xy".to_vec();
            v.extend_from_slice(secret.as_bytes());
            base64(&v, URL_SAFE)
        };
        let text = format!(
            "token={secret}\nbasic {}\nurl=https://x/?t={}\nembedded {}\nlower={}\nform={}\n",
            String::from_utf8(b64).unwrap(),
            String::from_utf8(url_encode(secret.as_bytes())).unwrap(),
            String::from_utf8(urlsafe_in_middle).unwrap(),
            "hunter2%2fregistry%20token",
            "hunter2%2Fregistry+token",
        );
        for sizes in [&[1][..], &[2, 3], &[7], &[64], &[5, 1, 9]] {
            let mut m = masker(&[secret, "hunter2/registry token"]);
            let out = String::from_utf8(mask_in_pieces(&mut m, text.as_bytes(), sizes)).unwrap();
            assert!(!out.contains(secret), "{sizes:?}: {out}");
            assert!(!out.contains("aHVudGVy"), "{sizes:?}: base64 left in {out}");
            assert!(out.starts_with("token=***\nbasic "), "{sizes:?}: {out}");
            assert!(out.contains("url=https://x/?t=***\n"), "{sizes:?}: {out}");
            assert!(out.contains("lower=***\n"), "{sizes:?}: {out}");
            assert!(out.contains("form=***\n"), "{sizes:?}: {out}");
            let core = String::from_utf8(base64_core(secret.as_bytes(), 2, URL_SAFE)).unwrap();
            assert!(
                !out.contains(&core),
                "{sizes:?}: embedded base64 left in {out}"
            );
        }
    }

    #[test]
    fn other_output_passes_whole_and_in_order() {
        let mut m = masker(&["s3cret-value"]);
        let text = b"s3cret-valu is not it; s3cret-value is; s3cret-val\n";
        let out = mask_in_pieces(&mut m, text, &[3]);
        assert_eq!(out, b"s3cret-valu is not it; *** is; s3cret-val\n");
        let mut none = Masker::new(Vec::new());
        assert_eq!(none.push(b"abc"), b"abc");
        assert!(none.finish().is_empty());
    }

    #[test]
    fn a_secret_that_begins_another_is_masked_whole_across_chunks() {
        let mut m = masker(&["tok-123456", "tok-123456-xyz"]);
        let out = mask_in_pieces(&mut m, b"a tok-123456-xyz b tok-123456 c", &[12, 3]);
        assert_eq!(out, b"a *** b *** c");
    }

    #[test]
    fn short_values_are_refused() {
        assert_eq!(
            masked_forms([b"abc".as_slice()]).unwrap_err(),
            TooShort { len: 3 }
        );
    }

    #[test]
    fn scrubbing_keeps_the_length_and_catches_a_form_begun_in_the_last_chunk() {
        let forms = masked_forms([b"s3cret-value".as_slice()]).unwrap();
        let mut chunk = b"say s3cret-value twice: s3cret-value".to_vec();
        assert_eq!(scrub(&forms, b"", &mut chunk), 2);
        assert_eq!(chunk, b"say ************ twice: ************".to_vec());
        let mut rest = b"-value!".to_vec();
        assert_eq!(scrub(&forms, b"...s3cret", &mut rest), 1);
        assert_eq!(rest, b"******!".to_vec());
        let mut clean = b"nothing here".to_vec();
        assert_eq!(scrub(&forms, b"s3cret-value", &mut clean), 0);
        assert_eq!(clean, b"nothing here".to_vec());
    }
}
