//! A serving thread's few most recent answers (a page load is dozens of
//! requests from one user, on one thread): a short list searched front to
//! back, the hit moved to the front, the oldest dropped past `N`. Kept per
//! thread, so no lock and no hashing.

/// At most `N` items, most recent first.
#[derive(Debug)]
pub struct Recent<T, const N: usize> {
    items: Vec<T>,
}

impl<T, const N: usize> Default for Recent<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> Recent<T, N> {
    pub const fn new() -> Self {
        Self { items: Vec::new() }
    }

    /// The first item `matches` accepts, moved to the front, if `usable`
    /// accepts it too; a matching item that is no longer usable is dropped.
    pub fn find(
        &mut self,
        matches: impl Fn(&T) -> bool,
        usable: impl FnOnce(&T) -> bool,
    ) -> Option<&T> {
        let at = self.items.iter().position(matches)?;
        if !usable(&self.items[at]) {
            self.items.remove(at);
            return None;
        }
        self.items[..=at].rotate_right(1);
        self.items.first()
    }

    /// Puts `item` at the front, dropping the oldest past `N`.
    pub fn remember(&mut self, item: T) {
        self.items.truncate(N.saturating_sub(1));
        self.items.insert(0, item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_move_to_the_front_the_oldest_goes_and_unusable_ones_are_dropped() {
        let mut recent: Recent<(u32, &str), 3> = Recent::new();
        for item in [(1, "a"), (2, "b"), (3, "c")] {
            recent.remember(item);
        }
        // 1 is the oldest; asking for it makes 2 the oldest.
        assert_eq!(recent.find(|i| i.0 == 1, |_| true), Some(&(1, "a")));
        recent.remember((4, "d"));
        assert_eq!(recent.items.len(), 3);
        assert_eq!(recent.find(|i| i.0 == 2, |_| true), None);
        assert_eq!(recent.find(|i| i.0 == 1, |_| true), Some(&(1, "a")));
        // Found but no longer usable: gone, not returned.
        assert_eq!(recent.find(|i| i.0 == 3, |_| false), None);
        assert_eq!(recent.items.len(), 2);
        assert_eq!(recent.find(|i| i.0 == 3, |_| true), None);
        assert_eq!(recent.find(|i| i.0 == 4, |_| true), Some(&(4, "d")));
    }
}
