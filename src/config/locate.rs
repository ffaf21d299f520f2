//! Where a key is in the config file, so that every config error names its line as well as its
//! key: semantic errors carry the key as [`super::ConfigError::Invalid`] names it
//! (`difficulty.min`, `group[2].workers[0]`, `upstream[main].url`), type errors carry the key
//! the TOML deserializer reports; both are found again in the document's spans.

use toml::de::{DeTable, DeValue};

/// One step of a key path: a table key, then an optional array selector (an index, or the
/// value of the element's `name`).
struct Step<'k> {
    key: &'k str,
    select: Option<&'k str>,
}

fn steps(path: &str) -> Vec<Step<'_>> {
    path.split('.')
        .map(|part| match part.split_once('[') {
            Some((key, rest)) => Step {
                key,
                select: Some(rest.trim_end_matches(']')),
            },
            None => Step {
                key: part,
                select: None,
            },
        })
        .collect()
}

/// The byte offset of `path` in `text`, or of the deepest part of it that exists (a missing
/// key is reported at its table). `None` when the text does not parse or nothing matches.
pub(super) fn offset_of(text: &str, path: &str) -> Option<usize> {
    let document = DeTable::parse(text).ok()?;
    let mut table: &DeTable<'_> = document.get_ref();
    let mut found = None;
    for step in steps(path) {
        let Some((_, value)) = table.iter().find(|(k, _)| k.get_ref() == step.key) else {
            break;
        };
        found = Some(value.span().start);
        let mut value = value;
        if let (Some(select), DeValue::Array(items)) = (step.select, value.get_ref()) {
            let element = match select.parse::<usize>() {
                Ok(index) => items.get(index),
                Err(_) => items.iter().find(|item| match item.get_ref() {
                    DeValue::Table(t) => t.iter().any(|(k, v)| {
                        k.get_ref() == "name"
                            && matches!(v.get_ref(), DeValue::String(s) if s == select)
                    }),
                    _ => false,
                }),
            };
            let Some(element) = element else { break };
            found = Some(element.span().start);
            value = element;
        }
        match value.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    found
}

/// The key a TOML type error names (its `in `a.b`` line), if any.
pub(super) fn key_of(error: &toml::de::Error) -> Option<String> {
    let mut bare = error.clone();
    bare.set_input(None);
    bare.to_string().lines().find_map(|line| {
        line.strip_prefix("in `")?
            .strip_suffix('`')
            .map(str::to_owned)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[server]\nlisten = \"0.0.0.0:3333\"\n\n[difficulty]\ninitial = 1.0\nmin = 5.0\n\n\
        [[upstream]]\nname = \"main\"\nurl = \"stratum+tcp://a:1\"\n\n[[upstream]]\nname = \"backup\"\n\
        url = \"bad\"\n\n[[group]]\nname = \"c07\"\nworkers = [\"a*\", \"[\"]\n";

    fn line(path: &str) -> Option<usize> {
        offset_of(TEXT, path).map(|o| TEXT[..o].matches('\n').count() + 1)
    }

    #[test]
    fn keys_as_errors_name_them_are_found_on_their_line() {
        assert_eq!(line("difficulty.min"), Some(6));
        assert_eq!(line("upstream[backup].url"), Some(14));
        assert_eq!(line("upstream[1].url"), Some(14));
        assert_eq!(line("group[0].workers[1]"), Some(18));
        // A missing key is shown at its table.
        assert_eq!(line("difficulty.max"), Some(4));
        assert_eq!(line("nothing.here"), None);
    }
}
