//! The unsynced bytes of one file: non-overlapping byte ranges held in memory until an
//! fsync writes them to the backing file. What a power cut loses.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct Dirty {
    /// start offset → bytes; ranges never overlap and never touch (touching ranges merge).
    ranges: BTreeMap<u64, Vec<u8>>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.ranges.values().map(|v| v.len() as u64).sum()
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// One past the last dirty byte (0 when clean).
    pub fn end(&self) -> u64 {
        self.ranges.iter().next_back().map_or(0, |(s, v)| s + v.len() as u64)
    }

    /// Records a write. Appending to the end of a range extends it in place, so a file
    /// written sequentially costs amortized O(bytes written).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        // Every range that overlaps or touches [offset, end].
        let touching: Vec<u64> = self
            .ranges
            .range(..=end)
            .rev()
            .take_while(|(s, v)| *s + v.len() as u64 >= offset)
            .map(|(s, _)| *s)
            .collect();
        let (start, mut merged) = match touching.last() {
            Some(&first) if first <= offset => (first, self.ranges.remove(&first).expect("listed")),
            _ => (offset, Vec::with_capacity(data.len())),
        };
        let mut new_end = end;
        let mut later = Vec::new();
        for s in touching.iter().filter(|s| **s != start) {
            let v = self.ranges.remove(s).expect("listed");
            new_end = new_end.max(s + v.len() as u64);
            later.push((*s, v));
        }
        new_end = new_end.max(start + merged.len() as u64);
        merged.resize((new_end - start) as usize, 0);
        for (s, v) in later {
            let at = (s - start) as usize;
            merged[at..at + v.len()].copy_from_slice(&v);
        }
        let at = (offset - start) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        self.ranges.insert(start, merged);
    }

    /// Forgets everything at or beyond `size` (a truncate).
    pub fn truncate(&mut self, size: u64) {
        let beyond: Vec<u64> = self.ranges.range(size..).map(|(s, _)| *s).collect();
        for s in beyond {
            self.ranges.remove(&s);
        }
        if let Some((s, v)) = self.ranges.range_mut(..size).next_back() {
            if s + v.len() as u64 > size {
                v.truncate((size - s) as usize);
            }
        }
    }

    /// Copies the dirty bytes that fall inside `buf` (which holds the file from `offset`).
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        let first = self.ranges.range(..=offset).next_back().map_or(offset, |(s, _)| *s);
        for (s, v) in self.ranges.range(first..end) {
            let (from, to) = ((*s).max(offset), (s + v.len() as u64).min(end));
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&v[(from - s) as usize..(to - s) as usize]);
            }
        }
    }

    pub fn ranges(&self) -> impl Iterator<Item = (&u64, &Vec<u8>)> {
        self.ranges.iter()
    }

    /// After an fsync wrote `flushed` to disk: drops each range that is still exactly as
    /// flushed. A range a concurrent write changed stays dirty (and is written again by
    /// the next fsync).
    pub fn forget_flushed(&mut self, flushed: &Dirty) {
        for (s, v) in &flushed.ranges {
            if self.ranges.get(s) == Some(v) {
                self.ranges.remove(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file a sequence of writes and truncates produces, by brute force.
    fn model(ops: &[(u64, Vec<u8>)]) -> Vec<Option<u8>> {
        let mut file: Vec<Option<u8>> = Vec::new();
        for (off, data) in ops {
            let end = *off as usize + data.len();
            if file.len() < end {
                file.resize(end, None);
            }
            for (i, b) in data.iter().enumerate() {
                file[*off as usize + i] = Some(*b);
            }
        }
        file
    }

    #[test]
    fn overlapping_and_touching_writes_merge_into_what_a_file_would_hold() {
        // A fixed pseudo-random sequence (no rand dependency in the test): writes that
        // land inside, across, before, after and exactly next to earlier ones.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for _ in 0..200 {
            let mut d = Dirty::default();
            let mut ops = Vec::new();
            for _ in 0..20 {
                let off = next(200);
                let len = 1 + next(40);
                let byte = next(255) as u8 + 1;
                let data = vec![byte; len as usize];
                d.write(off, &data);
                ops.push((off, data));
            }
            let want = model(&ops);
            assert_eq!(d.end(), want.len() as u64);
            let mut buf = vec![0u8; want.len()];
            d.overlay(0, &mut buf);
            for (i, w) in want.iter().enumerate() {
                assert_eq!(buf[i], w.unwrap_or(0), "byte {i}");
            }
            assert_eq!(d.bytes(), want.iter().filter(|b| b.is_some()).count() as u64);
            // Ranges never overlap or touch.
            let mut last_end = None;
            for (s, v) in d.ranges() {
                assert!(last_end.is_none_or(|e| e < *s), "ranges touch at {s}");
                last_end = Some(s + v.len() as u64);
            }
        }
    }

    #[test]
    fn sequential_appends_stay_one_range_and_truncate_cuts() {
        let mut d = Dirty::default();
        for i in 0..1000u64 {
            d.write(i * 10, &[7u8; 10]);
        }
        assert_eq!(d.len(), 1);
        assert_eq!(d.end(), 10_000);
        d.truncate(25);
        assert_eq!(d.end(), 25);
        d.write(100, b"x");
        d.truncate(50);
        assert_eq!(d.len(), 1);
        let mut buf = [0u8; 30];
        d.overlay(10, &mut buf);
        assert_eq!(&buf[..15], &[7u8; 15]);
        assert_eq!(&buf[15..], &[0u8; 15]);
    }

    #[test]
    fn a_range_changed_during_an_fsync_stays_dirty() {
        let mut d = Dirty::default();
        d.write(0, b"abc");
        d.write(10, b"xyz");
        let flushed = d.clone();
        d.write(11, b"Y");
        d.forget_flushed(&flushed);
        assert_eq!(d.len(), 1);
        assert_eq!(d.end(), 13);
    }
}
