//! [`InlineList`]: a short unordered list whose first few entries live inline, searched by a
//! linear scan; the storage of an allocation's grants.
//!
//! Why not a `HashMap`: an allocation holds one or two permissions and channel bindings, and the
//! data path looks them up on every datagram. A map hashes the key and then loads its control
//! bytes and its bucket from two heap blocks, which at 50 datagrams a second per client are
//! rarely still in the cache: profiles of the audio-like load put those loads at 5 % of the
//! relay's samples. Inline entries sit next to the allocation's other hot fields, and comparing
//! two of them costs less than hashing one key. Entries beyond the inline ones spill to a `Vec`
//! (still scanned linearly); the callers' caps (`[turn] max_*_per_allocation`) bound its length.

/// Up to `N` entries inline, the rest in a `Vec`; order is not kept.
#[derive(Debug, Clone)]
pub struct InlineList<T, const N: usize> {
    inline: [T; N],
    /// How many of `inline` are in use (the first `inline_len`).
    inline_len: usize,
    spill: Vec<T>,
}

impl<T: Copy + Default, const N: usize> Default for InlineList<T, N> {
    fn default() -> Self {
        InlineList { inline: [T::default(); N], inline_len: 0, spill: Vec::new() }
    }
}

impl<T: Copy + Default, const N: usize> InlineList<T, N> {
    pub fn len(&self) -> usize {
        self.inline_len + self.spill.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.inline[..self.inline_len].iter().chain(self.spill.iter())
    }

    /// The first entry matching `matches`.
    pub fn find(&self, mut matches: impl FnMut(&T) -> bool) -> Option<&T> {
        // The inline part first, without touching the `Vec`'s heap block when it is empty.
        if let Some(found) = self.inline[..self.inline_len].iter().find(|entry| matches(entry)) {
            return Some(found);
        }
        self.spill.iter().find(|entry| matches(entry))
    }

    /// The first entry matching `matches`, to change it in place.
    pub fn find_mut(&mut self, mut matches: impl FnMut(&T) -> bool) -> Option<&mut T> {
        if let Some(found) = self.inline[..self.inline_len].iter_mut().find(|entry| matches(entry)) {
            return Some(found);
        }
        self.spill.iter_mut().find(|entry| matches(entry))
    }

    pub fn push(&mut self, entry: T) {
        if self.inline_len < N {
            self.inline[self.inline_len] = entry;
            self.inline_len += 1;
        } else {
            self.spill.push(entry);
        }
    }

    /// Keeps only the entries `keep` says yes to; spilled entries move inline as room frees up,
    /// so a list that shrank back to a few entries is scanned without the heap block again.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let mut kept = 0;
        for index in 0..self.inline_len {
            if keep(&self.inline[index]) {
                self.inline[kept] = self.inline[index];
                kept += 1;
            }
        }
        for index in kept..self.inline_len {
            self.inline[index] = T::default();
        }
        self.inline_len = kept;
        self.spill.retain(|entry| keep(entry));
        while self.inline_len < N {
            let Some(entry) = self.spill.pop() else { break };
            self.inline[self.inline_len] = entry;
            self.inline_len += 1;
        }
        if self.spill.is_empty() {
            // Gives the heap block back once nothing spills any more.
            self.spill = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a list is asked to do, for the comparison with a plain `Vec`.
    #[derive(Debug, Clone)]
    enum Op {
        Push(u8),
        Retain(u8),
        Bump(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![(0u8..8).prop_map(Op::Push), (0u8..8).prop_map(Op::Retain), (0u8..8).prop_map(Op::Bump),]
    }

    proptest! {
        /// Whatever is pushed, changed and dropped, the list holds what a `Vec` would (as a
        /// multiset), and finds what the `Vec` finds.
        #[test]
        fn holds_and_finds_what_a_vec_would(ops in proptest::collection::vec(op(), 0..64)) {
            let mut list = InlineList::<u8, 2>::default();
            let mut model: Vec<u8> = Vec::new();
            for op in ops {
                match op {
                    Op::Push(v) => {
                        list.push(v);
                        model.push(v);
                    }
                    // Drops every entry equal to v.
                    Op::Retain(v) => {
                        list.retain(|e| *e != v);
                        model.retain(|e| *e != v);
                    }
                    // Changes the first entry equal to v into v + 8.
                    Op::Bump(v) => {
                        let in_list = list.find_mut(|e| *e == v).map(|e| *e = v + 8).is_some();
                        let in_model = model.iter_mut().find(|e| **e == v).map(|e| *e = v + 8).is_some();
                        prop_assert_eq!(in_list, in_model);
                    }
                }
                let mut held: Vec<u8> = list.iter().copied().collect();
                let mut expected = model.clone();
                held.sort_unstable();
                expected.sort_unstable();
                prop_assert_eq!(&held, &expected);
                prop_assert_eq!(list.len(), model.len());
                prop_assert_eq!(list.is_empty(), model.is_empty());
                for v in 0..16u8 {
                    prop_assert_eq!(list.find(|e| *e == v).copied(), model.iter().find(|e| **e == v).copied());
                }
            }
        }
    }

    #[test]
    fn spilled_entries_move_inline_when_room_frees_up() {
        let mut list = InlineList::<u8, 2>::default();
        for v in 1..=4 {
            list.push(v);
        }
        assert_eq!(list.spill.len(), 2);
        list.retain(|v| *v > 2);
        assert_eq!((list.inline_len, list.spill.capacity()), (2, 0), "both back inline, heap block freed");
        let mut held: Vec<u8> = list.iter().copied().collect();
        held.sort_unstable();
        assert_eq!(held, [3, 4]);
    }
}
