//! One pool: blocks cut from one expandable segment.
//!
//! The pool covers the address range `[0, frontier)` of its segment with
//! blocks, each free or in use. A request takes the smallest free block that
//! fits (best fit, ties to the lowest address) and splits off the rest; a
//! free block merges with free neighbours. When nothing fits, the frontier
//! moves: the free tail block grows, or a new block is appended.
//!
//! Memory is committed per page, not per block: a page is committed while any
//! block in use touches it, and stays committed (cached) after its blocks are
//! freed until `release_cached` gives it back. So one segment grows and
//! shrinks in place and free address space is never wasted memory.

use super::segment::{round_up, Segment, SegmentError};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockInfo {
    pub size: usize,
    pub used: bool,
}

pub(crate) struct Pool {
    pub seg: Box<dyn Segment>,
    pub blocks: BTreeMap<usize, BlockInfo>, // by offset
    free: BTreeSet<(usize, usize)>,         // (size, offset)
    frontier: usize,
    page_users: Vec<u32>, // blocks in use that touch each page
    committed: Vec<bool>,
    pub committed_pages: usize,
}

impl Pool {
    pub fn new(seg: Box<dyn Segment>) -> Pool {
        Pool {
            seg,
            blocks: BTreeMap::new(),
            free: BTreeSet::new(),
            frontier: 0,
            page_users: Vec::new(),
            committed: Vec::new(),
            committed_pages: 0,
        }
    }

    pub fn page(&self) -> usize {
        self.seg.page_size()
    }

    /// The largest run of free bytes inside committed pages: the biggest
    /// request this pool can serve without growing.
    pub fn largest_free(&self) -> usize {
        let page = self.page();
        let mut best = 0;
        for &(size, offset) in self.free.iter().rev() {
            if size <= best {
                break;
            }
            let mut run = 0;
            let mut at = offset;
            while at < offset + size {
                let end = ((at / page + 1) * page).min(offset + size);
                if self.committed.get(at / page).copied().unwrap_or(false) {
                    run += end - at;
                    best = best.max(run);
                } else {
                    run = 0;
                }
                at = end;
            }
        }
        best
    }

    /// Choose and mark in use a block of exactly `size` bytes (a multiple of
    /// the granule). Commits nothing. `None` when the address space is full.
    pub fn place(&mut self, size: usize) -> Option<usize> {
        let offset = match self.free.range((size, 0)..).next() {
            Some(&(_, off)) => off,
            None => self.extend(size)?,
        };
        let info = self.blocks[&offset];
        self.free.remove(&(info.size, offset));
        if info.size > size {
            let rest = BlockInfo { size: info.size - size, used: false };
            self.blocks.insert(offset + size, rest);
            self.free.insert((rest.size, offset + size));
        }
        self.blocks.insert(offset, BlockInfo { size, used: true });
        Some(offset)
    }

    // Grow the range so a free tail block of at least `size` exists.
    fn extend(&mut self, size: usize) -> Option<usize> {
        let tail = self.blocks.iter().next_back().map(|(&o, &b)| (o, b));
        let (offset, have) = match tail {
            Some((o, b)) if !b.used => (o, b.size),
            _ => (self.frontier, 0),
        };
        let new_frontier = offset.checked_add(size).filter(|&f| f <= self.seg.capacity())?;
        if have > 0 {
            self.free.remove(&(have, offset));
        }
        self.blocks.insert(offset, BlockInfo { size, used: false });
        self.free.insert((size, offset));
        self.frontier = new_frontier;
        let pages = self.frontier.div_ceil(self.page());
        if self.page_users.len() < pages {
            self.page_users.resize(pages, 0);
            self.committed.resize(pages, false);
        }
        Some(offset)
    }

    /// The free bytes inside committed pages, as (offset, bytes) runs by offset.
    pub fn committed_free(&self) -> Vec<(usize, usize)> {
        let page = self.page();
        let mut out: Vec<(usize, usize)> = Vec::new();
        for (&offset, b) in self.blocks.iter().filter(|(_, b)| !b.used) {
            let mut at = offset;
            while at < offset + b.size {
                let end = ((at / page + 1) * page).min(offset + b.size);
                if self.committed[at / page] {
                    match out.last_mut() {
                        Some((o, n)) if *o + *n == at => *n += end - at,
                        _ => out.push((at, end - at)),
                    }
                }
                at = end;
            }
        }
        // `release_cached` trims the range to the last block in use, not to its page.
        let page_end = self.committed.len() * page;
        if self.frontier < page_end && self.committed.last() == Some(&true) {
            match out.last_mut() {
                Some((o, n)) if *o + *n == self.frontier => *n += page_end - self.frontier,
                _ => out.push((self.frontier, page_end - self.frontier)),
            }
        }
        out
    }

    /// Mark `[offset, offset + size)` in use if it is free and committed
    /// (a static plan's placement in this pool). Never grows the pool.
    pub fn claim(&mut self, offset: usize, size: usize) -> bool {
        let page_end = self.committed.len() * self.page();
        if offset + size > self.frontier {
            // Past the range but inside its last, committed page: take that page's end back.
            if offset + size > page_end || self.committed.last() != Some(&true) {
                return false;
            }
            let tail = self.blocks.iter().next_back().map(|(&o, &b)| (o, b));
            let start = match tail {
                Some((o, b)) if !b.used => {
                    self.free.remove(&(b.size, o));
                    o
                }
                _ => self.frontier,
            };
            self.blocks.insert(start, BlockInfo { size: page_end - start, used: false });
            self.free.insert((page_end - start, start));
            self.frontier = page_end;
        }
        let Some((&o, &b)) = self.blocks.range(..=offset).next_back() else { return false };
        if b.used || o + b.size < offset + size || self.uncommitted_bytes(offset, size) > 0 {
            return false;
        }
        self.free.remove(&(b.size, o));
        if offset > o {
            self.blocks.insert(o, BlockInfo { size: offset - o, used: false });
            self.free.insert((offset - o, o));
        }
        if o + b.size > offset + size {
            let rest = o + b.size - (offset + size);
            self.blocks.insert(offset + size, BlockInfo { size: rest, used: false });
            self.free.insert((rest, offset + size));
        }
        self.blocks.insert(offset, BlockInfo { size, used: true });
        // Every page is committed: this only counts the block as a user of each.
        self.commit_block(offset, size).is_ok()
    }

    /// Undo a `place` that could not be committed, including any growth of
    /// the range it caused (that growth is never committed).
    pub fn unplace(&mut self, offset: usize, frontier_before: usize) {
        self.release(offset, false);
        if let Some((&o, &b)) = self.blocks.iter().next_back() {
            if !b.used && o + b.size > frontier_before {
                self.free.remove(&(b.size, o));
                self.blocks.remove(&o);
                if o < frontier_before {
                    let kept = BlockInfo { size: frontier_before - o, used: false };
                    self.blocks.insert(o, kept);
                    self.free.insert((kept.size, o));
                }
            }
        }
        self.frontier = frontier_before;
        let pages = self.frontier.div_ceil(self.page());
        self.page_users.truncate(pages);
        self.committed.truncate(pages);
    }

    pub fn frontier(&self) -> usize {
        self.frontier
    }

    /// Bytes that committing `[offset, offset+size)` would add.
    pub fn uncommitted_bytes(&self, offset: usize, size: usize) -> usize {
        let n = self.pages(offset, size).filter(|&p| !self.committed[p]).count();
        n * self.page()
    }

    /// Commit the pages under a placed block and count it as a user of each.
    /// On failure nothing changes (pages committed by this call are undone).
    pub fn commit_block(&mut self, offset: usize, size: usize) -> Result<usize, SegmentError> {
        let page = self.page();
        let mut added = Vec::new();
        for (start, len) in runs(self.pages(offset, size).filter(|&p| !self.committed[p])) {
            if let Err(e) = self.seg.commit(start * page, len * page) {
                for &(s, l) in &added {
                    let _ = self.seg.decommit(s * page, l * page);
                }
                return Err(e);
            }
            added.push((start, len));
        }
        let mut grown = 0;
        for &(s, l) in &added {
            for p in s..s + l {
                self.committed[p] = true;
            }
            grown += l;
        }
        self.committed_pages += grown;
        for p in self.pages(offset, size) {
            self.page_users[p] += 1;
        }
        Ok(grown * page)
    }

    /// Return a block in use to the free set, merging with free neighbours.
    /// `committed` says whether `commit_block` ran for it.
    pub fn release(&mut self, offset: usize, committed: bool) {
        let info = self.blocks[&offset];
        debug_assert!(info.used);
        if committed {
            for p in self.pages(offset, info.size) {
                self.page_users[p] -= 1;
            }
        }
        let (mut start, mut size) = (offset, info.size);
        if let Some((&o, &b)) = self.blocks.range(..offset).next_back() {
            if !b.used {
                self.free.remove(&(b.size, o));
                self.blocks.remove(&offset);
                start = o;
                size += b.size;
            }
        }
        if let Some(&b) = self.blocks.get(&(offset + info.size)) {
            if !b.used {
                self.free.remove(&(b.size, offset + info.size));
                self.blocks.remove(&(offset + info.size));
                size += b.size;
            }
        }
        self.blocks.insert(start, BlockInfo { size, used: false });
        self.free.insert((size, start));
    }

    /// Decommit every page no block in use touches, and drop the free tail of
    /// the range. Returns the bytes given back.
    pub fn release_cached(&mut self) -> Result<usize, SegmentError> {
        let page = self.page();
        let idle: Vec<usize> =
            (0..self.committed.len()).filter(|&p| self.committed[p] && self.page_users[p] == 0).collect();
        let mut freed = 0;
        for (start, len) in runs(idle.into_iter()) {
            self.seg.decommit(start * page, len * page)?;
            for p in start..start + len {
                self.committed[p] = false;
            }
            self.committed_pages -= len;
            freed += len * page;
        }
        if let Some((&o, &b)) = self.blocks.iter().next_back() {
            if !b.used {
                self.blocks.remove(&o);
                self.free.remove(&(b.size, o));
                self.frontier = o;
                let pages = self.frontier.div_ceil(page);
                self.page_users.truncate(pages);
                self.committed.truncate(pages);
            }
        }
        Ok(freed)
    }

    fn pages(&self, offset: usize, size: usize) -> std::ops::Range<usize> {
        let page = self.page();
        offset / page..round_up(offset + size, page) / page
    }
}

/// Consecutive runs of ascending page indices, as (start, len).
fn runs(pages: impl Iterator<Item = usize>) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for p in pages {
        match out.last_mut() {
            Some((s, l)) if *s + *l == p => *l += 1,
            _ => out.push((p, 1)),
        }
    }
    out
}
