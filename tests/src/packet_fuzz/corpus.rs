//! The corpus format (`tests/corpus/packets/*.hex`): frames found once, replayed every run.

use super::case::Side;
use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::path::Path;

/// A corpus file: `# what it exercises` (one line), `from: client|backend`, optional
/// `expect-xdp: <reason>` / `expect-tc: <reason>` (counter names), then the frame in hex
/// (whitespace ignored).
#[derive(Clone, Debug)]
pub struct CorpusEntry {
    pub name: String,
    pub comment: String,
    pub side: Side,
    pub expect_xdp: Option<String>,
    pub expect_tc: Option<String>,
    pub frame: Vec<u8>,
}

pub fn parse_corpus_entry(name: &str, text: &str) -> Result<CorpusEntry> {
    let mut comment = None;
    let mut side = None;
    let (mut expect_xdp, mut expect_tc) = (None, None);
    let mut hex = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(c) = line.strip_prefix('#') {
            comment.get_or_insert_with(|| c.trim().to_string());
        } else if let Some(s) = line.strip_prefix("from:") {
            side = Some(match s.trim() {
                "client" => Side::Client,
                "backend" => Side::Backend,
                other => bail!("{name}: `from:` is `{other}`, not client or backend"),
            });
        } else if let Some(r) = line.strip_prefix("expect-xdp:") {
            expect_xdp = Some(r.trim().to_string());
        } else if let Some(r) = line.strip_prefix("expect-tc:") {
            expect_tc = Some(r.trim().to_string());
        } else {
            hex.extend(line.chars().filter(|c| !c.is_whitespace()));
        }
    }
    if !hex.len().is_multiple_of(2) {
        bail!("{name}: odd number of hex digits");
    }
    let frame = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .with_context(|| format!("{name}: the frame is not hex"))?;
    Ok(CorpusEntry {
        name: name.to_string(),
        comment: comment.with_context(|| format!("{name}: no `# comment` line"))?,
        side: side.with_context(|| format!("{name}: no `from:` line"))?,
        expect_xdp,
        expect_tc,
        frame,
    })
}

/// Every `*.hex` file of `dir`, by name.
pub fn load_corpus(dir: &Path) -> Result<Vec<CorpusEntry>> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "hex") {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            entries.push(parse_corpus_entry(&name, &text)?);
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// A corpus file's text for a frame.
pub fn corpus_text(comment: &str, side: Side, frame: &[u8]) -> String {
    let mut s = format!("# {comment}\nfrom: {}\n", side.name());
    for chunk in frame.chunks(16) {
        for b in chunk {
            let _ = write!(s, "{b:02x}");
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet_fuzz::random::random_bytes;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn corpus_text_round_trips() {
        let mut rng = StdRng::seed_from_u64(1);
        let frame = random_bytes(&mut rng, 77);
        let text = corpus_text("a comment", Side::Backend, &frame);
        let e = parse_corpus_entry("x.hex", &text).expect("parses");
        assert_eq!((e.comment.as_str(), e.side), ("a comment", Side::Backend));
        assert_eq!(e.frame, frame);
        assert!(parse_corpus_entry("y.hex", "from: client\nabc").is_err());
    }
}
