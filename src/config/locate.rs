//! Where a key is in the config text, so that a value which parsed but is wrong
//! can be reported by line, like the parser's own errors.

use toml::de::{DeTable, DeValue};

/// One step of a key path: a table key or an index into an array of tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(&'static str),
    Index(usize),
}

/// A mistake found after parsing: the key it is about and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mistake {
    pub key: Vec<Seg>,
    pub message: String,
}

impl Mistake {
    pub fn new(key: &[Seg], message: impl Into<String>) -> Mistake {
        Mistake {
            key: key.to_vec(),
            message: message.into(),
        }
    }

    /// A top-level key.
    pub fn at(key: &'static str, message: impl Into<String>) -> Mistake {
        Mistake::new(&[Seg::Key(key)], message)
    }

    /// "line N: key.path: message"; the line is that of the deepest part of
    /// the path present in `text` (a missing key is reported at its table).
    pub fn render(&self, text: &str) -> String {
        let name = dotted(&self.key);
        match line_of(text, &self.key) {
            Some(line) => format!("line {line}: {name}: {}", self.message),
            None => format!("{name}: {}", self.message),
        }
    }
}

/// `db[0].replica[1].url`
pub(crate) fn dotted(key: &[Seg]) -> String {
    let mut out = String::new();
    for seg in key {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn line_of(text: &str, key: &[Seg]) -> Option<usize> {
    let doc = DeTable::parse(text).ok()?;
    let root = DeValue::Table(doc.into_inner());
    let mut span = None;
    let mut here = &root;
    for seg in key {
        let next = match seg {
            Seg::Key(k) => here.get(*k),
            Seg::Index(i) => here.get(*i),
        };
        let Some(next) = next else { break };
        span = Some(next.span());
        here = next.get_ref();
    }
    let start = span?.start;
    Some(line_at(text, start))
}

/// 1-based line of a byte offset.
pub(crate) fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lines_of_nested_keys() {
        let text =
            "a = 1\n[[db]]\npath = \"x\"\n[[db]]\npath = \"y\"\n[[db.replica]]\nurl = \"u\"\n";
        let m = Mistake::new(
            &[
                Seg::Key("db"),
                Seg::Index(1),
                Seg::Key("replica"),
                Seg::Index(0),
                Seg::Key("url"),
            ],
            "bad",
        );
        assert_eq!(m.render(text), "line 7: db[1].replica[0].url: bad");
        assert_eq!(Mistake::at("a", "no").render(text), "line 1: a: no");
        let missing = Mistake::new(
            &[Seg::Key("db"), Seg::Index(0), Seg::Key("replica")],
            "none",
        );
        assert!(
            missing.render(text).starts_with("line "),
            "{}",
            missing.render(text)
        );
    }
}
