//! The key names that signed stored paths: a small table, so that an entry keeps
//! its signers as a bit mask.

/// Named keys the table holds (a cache sees a handful: its builders' and its
/// upstreams'); the last bit stands for every other key, so that uploads signed by
/// made-up names cannot grow it without bound.
pub(super) const NAMED: usize = 15;
const OTHER_BIT: u16 = 1 << NAMED;
/// Longer key names are cut (Nix's own are a host name and a number).
const MAX_NAME: usize = 128;

#[derive(Default)]
pub(super) struct Signers {
    names: Vec<Box<str>>,
    /// Stored paths signed by each name; the last counts those signed by others.
    counts: [u64; NAMED + 1],
}

impl Signers {
    /// The mask of `names`, adding names the table has room for.
    pub(super) fn mask(&mut self, names: &[String]) -> u16 {
        let mut mask = 0;
        for name in names {
            let name = cut(name);
            let bit = match self.names.iter().position(|n| **n == *name) {
                Some(i) => 1 << i,
                None if self.names.len() < NAMED => {
                    self.names.push(name.into());
                    1 << (self.names.len() - 1)
                }
                None => OTHER_BIT,
            };
            mask |= bit;
        }
        mask
    }

    /// Counts (or uncounts) a stored path signed by `mask`.
    pub(super) fn count(&mut self, mask: u16, add: bool) {
        for (i, c) in self.counts.iter_mut().enumerate() {
            if mask & (1 << i) != 0 {
                if add {
                    *c += 1;
                } else {
                    *c = c.saturating_sub(1);
                }
            }
        }
    }

    /// The names in `mask`; others as `None`.
    pub(super) fn names_of(&self, mask: u16) -> Vec<Option<String>> {
        (0..=NAMED)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| self.names.get(i).map(|n| n.to_string()))
            .collect()
    }

    /// Every name with the stored paths it signed (those that signed none left out),
    /// most first; `None` for keys beyond the table.
    pub(super) fn counted(&self) -> Vec<(Option<String>, u64)> {
        let mut out: Vec<(Option<String>, u64)> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (self.names.get(i).map(|n| n.to_string()), *c))
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.names.capacity() * std::mem::size_of::<Box<str>>()
            + self.names.iter().map(|n| n.len()).sum::<usize>()
    }
}

fn cut(name: &str) -> &str {
    if name.len() <= MAX_NAME {
        return name;
    }
    let mut end = MAX_NAME;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}
