//! Masking holds for any secret, any surrounding output and any way the output is cut into
//! writes: the value never passes, and output without it passes unchanged.

use proptest::prelude::*;
use tinyci_core::{Masker, masked_forms};

fn masked(secret: &[u8], output: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut masker = Masker::new(masked_forms([secret]).unwrap());
    let mut out = Vec::new();
    let mut rest = output;
    for &cut in cuts.iter().cycle().take(output.len() + 1) {
        if rest.is_empty() {
            break;
        }
        let n = cut.clamp(1, rest.len());
        out.extend(masker.push(&rest[..n]));
        rest = &rest[n..];
    }
    out.extend(masker.push(rest));
    out.extend(masker.finish());
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

proptest! {
    #[test]
    fn a_secret_never_passes_however_output_is_cut(
        secret in proptest::collection::vec(any::<u8>(), 6..40),
        before in proptest::collection::vec(any::<u8>(), 0..200),
        after in proptest::collection::vec(any::<u8>(), 0..200),
        cuts in proptest::collection::vec(1usize..50, 1..8),
    ) {
        let mut output = before.clone();
        output.extend_from_slice(&secret);
        output.extend_from_slice(&after);
        output.extend_from_slice(&secret);
        let out = masked(&secret, &output, &cuts);
        prop_assert!(!contains(&out, &secret));
    }

    #[test]
    fn output_without_the_secret_passes_unchanged(
        secret in proptest::collection::vec(b'a'..=b'z', 6..20),
        output in proptest::collection::vec(b'0'..=b'9', 0..300),
        cuts in proptest::collection::vec(1usize..50, 1..8),
    ) {
        // Digits only: neither the lowercase secret nor any of its encodings can occur.
        prop_assume!(masked_forms([secret.as_slice()]).unwrap().iter().all(|f| !contains(&output, f)));
        prop_assert_eq!(masked(&secret, &output, &cuts), output);
    }
}
