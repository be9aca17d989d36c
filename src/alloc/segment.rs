//! The segment seam: one contiguous range of address space that the pool
//! carves into blocks, and that grows and shrinks by committing and
//! decommitting pages. The pool above it never touches memory itself.
//!
//! - [`HostSegment`]: an expandable segment in the process's own memory. The
//!   whole range is reserved once with `PROT_NONE` and `MAP_NORESERVE` (no
//!   memory, no swap charge); pages are made readable, writable and resident
//!   when committed and handed back to the OS when decommitted.
//! - [`MetaSegment`]: the same bookkeeping with no memory at all, for the
//!   planner, which runs the real allocator policy to predict a run's bytes.
//! - A CUDA segment (cuMemAddressReserve / cuMemCreate / cuMemMap) plugs in
//!   here later with the same page rules.

use std::fmt;

/// Commit granularity: 2 MiB, the huge-page size on x86-64 and the physical
/// chunk size the CUDA virtual memory API uses, so host and device segments
/// reserve identical bytes for the same requests.
pub const PAGE_SIZE: usize = 2 << 20;

/// Why a segment could not grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentError(pub String);

impl fmt::Display for SegmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SegmentError {}

/// A reserved address range that commits and decommits whole pages.
/// Offsets and lengths passed in are multiples of `page_size()`.
pub trait Segment: Send {
    /// Bytes per commit unit.
    fn page_size(&self) -> usize;
    /// Bytes of address space reserved; the segment never grows past it.
    fn capacity(&self) -> usize;
    /// Start of the range, or null for a segment that holds no memory.
    fn base(&self) -> *mut u8;
    /// Make `[offset, offset + len)` usable and resident.
    fn commit(&mut self, offset: usize, len: usize) -> Result<(), SegmentError>;
    /// Give `[offset, offset + len)` back; its contents are lost.
    fn decommit(&mut self, offset: usize, len: usize) -> Result<(), SegmentError>;
}

/// An expandable segment in host memory.
pub struct HostSegment {
    map: *mut u8,   // what mmap returned
    map_len: usize, // what to munmap
    base: *mut u8,  // `map` rounded up to PAGE_SIZE
    capacity: usize,
}

// The raw pointers name a private mapping owned by this value alone.
unsafe impl Send for HostSegment {}

// MADV_POPULATE_WRITE (Linux 5.14): fault pages in now, failing with ENOMEM
// instead of leaving the OOM killer to find out later.
const MADV_POPULATE_WRITE: libc::c_int = 23;

impl HostSegment {
    /// Reserve `capacity` bytes of address space (rounded up to pages).
    pub fn reserve(capacity: usize) -> Result<HostSegment, SegmentError> {
        let asked = capacity;
        // Over-reserve one page so the base can be aligned to PAGE_SIZE,
        // which lets transparent huge pages back whole commit units.
        let sizes = capacity
            .max(PAGE_SIZE)
            .checked_next_multiple_of(PAGE_SIZE)
            .and_then(|c| Some((c, c.checked_add(PAGE_SIZE)?)));
        let Some((capacity, map_len)) = sizes else {
            return Err(SegmentError(format!("cannot reserve {asked} bytes of address space: more than exists")));
        };
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(SegmentError(format!(
                "could not reserve {} of address space: {}",
                crate::alloc::fmt_bytes(map_len),
                std::io::Error::last_os_error()
            )));
        }
        let map = map as *mut u8;
        let base = round_up(map as usize, PAGE_SIZE) as *mut u8;
        unsafe { libc::madvise(base as *mut libc::c_void, capacity, libc::MADV_HUGEPAGE) };
        Ok(HostSegment { map, map_len, base, capacity })
    }

    fn check(&self, offset: usize, len: usize) -> Result<*mut libc::c_void, SegmentError> {
        if !offset.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) || offset + len > self.capacity {
            return Err(SegmentError(format!(
                "range {offset}+{len} is not whole pages inside a segment of {}",
                self.capacity
            )));
        }
        Ok(unsafe { self.base.add(offset) } as *mut libc::c_void)
    }
}

impl Segment for HostSegment {
    fn page_size(&self) -> usize {
        PAGE_SIZE
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn base(&self) -> *mut u8 {
        self.base
    }

    fn commit(&mut self, offset: usize, len: usize) -> Result<(), SegmentError> {
        let addr = self.check(offset, len)?;
        if unsafe { libc::mprotect(addr, len, libc::PROT_READ | libc::PROT_WRITE) } != 0 {
            return Err(SegmentError(format!(
                "the OS refused to commit {}: {}",
                crate::alloc::fmt_bytes(len),
                std::io::Error::last_os_error()
            )));
        }
        if unsafe { libc::madvise(addr, len, MADV_POPULATE_WRITE) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                // Older kernel: touch one byte per OS page instead.
                let os_page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
                let p = addr as *mut u8;
                for i in (0..len).step_by(os_page) {
                    unsafe { p.add(i).write_volatile(0) };
                }
            } else {
                unsafe { libc::mprotect(addr, len, libc::PROT_NONE) };
                return Err(SegmentError(format!(
                    "the OS could not provide {} of memory: {err}",
                    crate::alloc::fmt_bytes(len)
                )));
            }
        }
        Ok(())
    }

    fn decommit(&mut self, offset: usize, len: usize) -> Result<(), SegmentError> {
        let addr = self.check(offset, len)?;
        // DONTNEED frees the pages now; PROT_NONE drops the commit charge and
        // turns any stale pointer into a fault instead of silent reuse.
        let ok = unsafe {
            libc::madvise(addr, len, libc::MADV_DONTNEED) == 0 && libc::mprotect(addr, len, libc::PROT_NONE) == 0
        };
        if ok {
            Ok(())
        } else {
            Err(SegmentError(format!("decommit failed: {}", std::io::Error::last_os_error())))
        }
    }
}

impl Drop for HostSegment {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.map as *mut libc::c_void, self.map_len) };
    }
}

/// A segment with the host's page rules and no memory behind it.
pub struct MetaSegment {
    capacity: usize,
}

impl MetaSegment {
    pub fn new(capacity: usize) -> MetaSegment {
        MetaSegment { capacity: round_up(capacity.max(PAGE_SIZE), PAGE_SIZE) }
    }
}

impl Segment for MetaSegment {
    fn page_size(&self) -> usize {
        PAGE_SIZE
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn base(&self) -> *mut u8 {
        std::ptr::null_mut()
    }
    fn commit(&mut self, _offset: usize, _len: usize) -> Result<(), SegmentError> {
        Ok(())
    }
    fn decommit(&mut self, _offset: usize, _len: usize) -> Result<(), SegmentError> {
        Ok(())
    }
}

/// `n` rounded up to a multiple of `to`; saturates at the largest multiple
/// instead of wrapping to 0 (callers with sizes from users check first).
pub(crate) fn round_up(n: usize, to: usize) -> usize {
    n.checked_next_multiple_of(to).unwrap_or(usize::MAX / to * to)
}
