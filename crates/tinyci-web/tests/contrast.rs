//! Every colour the pages draw text in reaches 4.5:1 against the background it is drawn on,
//! in the light and in the dark scheme (WCAG 2.x AA for body text). Read from the stylesheet
//! the site serves: every `color:` declaration is checked, so a new rule with a literal colour
//! or an unchecked variable fails here rather than in front of a reader.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use tinyci_web::render::SITE_CSS;

/// AA for text under 18pt.
const MIN_CONTRAST: f64 = 4.5;

/// The stylesheet's innermost rules, `(selector, declarations)`, comments removed.
fn rules(css: &str) -> Vec<(String, String)> {
    let mut text = String::new();
    let mut rest = css;
    while let Some(start) = rest.find("/*") {
        text.push_str(&rest[..start]);
        rest = rest[start..]
            .find("*/")
            .map_or("", |end| &rest[start + end + 2..]);
    }
    text.push_str(rest);
    let mut found = Vec::new();
    let mut boundary = 0;
    let mut open: Option<(String, usize)> = None;
    for (i, c) in text.char_indices() {
        match c {
            '{' => {
                open = Some((text[boundary..i].trim().to_owned(), i + 1));
                boundary = i + 1;
            }
            '}' => {
                if let Some((selector, body)) = open.take() {
                    found.push((selector, text[body..i].to_owned()));
                }
                boundary = i + 1;
            }
            _ => {}
        }
    }
    found
}

/// `property: value` pairs of a rule's body.
fn declarations(body: &str) -> Vec<(String, String)> {
    body.split(';')
        .filter_map(|d| d.split_once(':'))
        .map(|(p, v)| (p.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The custom properties of the light scheme and of the dark one (the light ones, overridden
/// by the `prefers-color-scheme: dark` block).
fn schemes() -> [(&'static str, BTreeMap<String, String>); 2] {
    let roots: Vec<BTreeMap<String, String>> = rules(SITE_CSS)
        .into_iter()
        .filter(|(selector, _)| selector == ":root")
        .map(|(_, body)| {
            declarations(&body)
                .into_iter()
                .filter(|(p, _)| p.starts_with("--"))
                .collect()
        })
        .collect();
    assert_eq!(roots.len(), 2, "a light :root and a dark one");
    let light = roots[0].clone();
    let mut dark = light.clone();
    dark.extend(roots[1].clone());
    [("light", light), ("dark", dark)]
}

fn channel(hex: &str) -> f64 {
    let c = f64::from(u8::from_str_radix(hex, 16).unwrap()) / 255.0;
    if c <= 0.039_28 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

/// Relative luminance of `#rrggbb`.
fn luminance(colour: &str) -> f64 {
    let hex = colour
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("{colour}"));
    assert_eq!(hex.len(), 6, "{colour}: write colours as #rrggbb");
    0.2126 * channel(&hex[0..2]) + 0.7152 * channel(&hex[2..4]) + 0.0722 * channel(&hex[4..6])
}

fn contrast(a: &str, b: &str) -> f64 {
    let (la, lb) = (luminance(a), luminance(b));
    (la.max(lb) + 0.05) / (la.min(lb) + 0.05)
}

/// A value as drawn: `var(--x)` looked up in `scheme`, a literal colour as written.
fn resolve(value: &str, scheme: &BTreeMap<String, String>) -> String {
    match value.strip_prefix("var(").and_then(|v| v.strip_suffix(')')) {
        Some(name) => scheme
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not defined"))
            .clone(),
        None => value.to_owned(),
    }
}

#[test]
fn every_text_colour_reaches_aa_contrast_in_both_schemes() {
    let mut checked = 0;
    for (name, scheme) in schemes() {
        for (selector, body) in rules(SITE_CSS) {
            let declared = declarations(&body);
            let Some((_, colour)) = declared.iter().find(|(p, _)| p == "color") else {
                continue;
            };
            if colour == "currentColor" || colour == "inherit" {
                continue;
            }
            // Terminal colours are drawn on the log's background; everything else on its own
            // rule's background, else the page's.
            let terminal = selector.starts_with(".f") && selector[2..].parse::<u8>().is_ok();
            let background = declared
                .iter()
                .find(|(p, _)| p == "background")
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| {
                    if terminal {
                        "var(--log-bg)"
                    } else {
                        "var(--bg)"
                    }
                    .to_owned()
                });
            let (fg, bg) = (resolve(colour, &scheme), resolve(&background, &scheme));
            let ratio = contrast(&fg, &bg);
            assert!(
                ratio >= MIN_CONTRAST,
                "{name} scheme: `{selector}` draws {fg} on {bg} at {ratio:.2}:1, under {MIN_CONTRAST}:1"
            );
            checked += 1;
        }
    }
    // The badges, the live status words, the log and its 16 colours, the page's text, in
    // both schemes: a parser that found nothing would pass everything.
    assert!(checked >= 2 * 30, "only {checked} colour rules were found");
}

#[test]
fn the_check_catches_the_dark_badges_it_was_written_for() {
    // The dark scheme once drew the failed badge in #cf222e on #0d1117.
    assert!(contrast("#cf222e", "#0d1117") < MIN_CONTRAST);
    assert!((contrast("#000000", "#ffffff") - 21.0).abs() < 1e-9);
}
