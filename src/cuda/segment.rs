//! The expandable segment on the device: the allocator's segment seam over
//! the driver's virtual memory API. One address range is reserved once
//! (cuMemAddressReserve); committing a page range creates physical memory
//! for it (cuMemCreate), maps it in place (cuMemMap) and grants access
//! (cuMemSetAccess); decommitting waits for the stream, then unmaps and
//! releases it. The commit unit is the allocator's 2 MiB page, a multiple of
//! the device's granularity on every current GPU, so a device arena
//! reserves exactly the bytes a host or meta arena does for the same
//! requests — the planner's figures hold on the GPU.

use super::gpu::Gpu;
use crate::alloc::{Segment, SegmentError, PAGE_SIZE};
use cudarc::driver::sys;
use std::collections::BTreeMap;

fn check(what: &str, r: sys::CUresult) -> Result<(), SegmentError> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(SegmentError(format!("{what} failed: {r:?}")))
    }
}

fn prop() -> sys::CUmemAllocationProp {
    // SAFETY: a plain C struct; zero is "no flags" for every field left unset.
    let mut p: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    p.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    p.requestedHandleTypes = sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_NONE;
    p.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = 0;
    p
}

/// Device 0's minimum physical allocation granularity.
pub fn granularity() -> crate::error::Result<usize> {
    let mut g = 0usize;
    let p = prop();
    // SAFETY: valid out-pointer and property struct; the driver is initialised.
    let r = unsafe {
        sys::cuMemGetAllocationGranularity(
            &mut g,
            &p,
            sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
        )
    };
    check("cuMemGetAllocationGranularity", r).map_err(|e| crate::error::Error::cuda("segment", e.0))?;
    if g == 0 || !PAGE_SIZE.is_multiple_of(g) {
        return Err(crate::error::Error::cuda(
            "segment",
            format!("device granularity {g} B does not divide the allocator's 2 MiB page"),
        ));
    }
    Ok(g)
}

/// A reserved device address range with physical memory mapped page by page.
pub struct CudaSegment {
    gpu: Gpu,
    base: sys::CUdeviceptr,
    capacity: usize,
    /// The physical allocation behind each mapped page, by offset.
    mapped: BTreeMap<usize, sys::CUmemGenericAllocationHandle>,
}

// SAFETY: the handles are plain integers owned by this segment; every call
// runs under the arena's lock.
unsafe impl Send for CudaSegment {}

impl CudaSegment {
    pub fn reserve(gpu: Gpu, capacity: usize, granularity: usize) -> Result<CudaSegment, SegmentError> {
        let capacity = capacity.max(PAGE_SIZE).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let mut base: sys::CUdeviceptr = 0;
        // SAFETY: out-pointer to a local; no fixed address asked for.
        check("cuMemAddressReserve", unsafe {
            sys::cuMemAddressReserve(&mut base, capacity, PAGE_SIZE.max(granularity), 0, 0)
        })?;
        Ok(CudaSegment { gpu, base, capacity, mapped: BTreeMap::new() })
    }
}

impl Segment for CudaSegment {
    fn page_size(&self) -> usize {
        PAGE_SIZE
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn base(&self) -> *mut u8 {
        self.base as *mut u8
    }

    fn commit(&mut self, offset: usize, len: usize) -> Result<(), SegmentError> {
        // Page by page, so any page can later be given back on its own.
        for at in (offset..offset + len).step_by(PAGE_SIZE) {
            if let Err(e) = self.map_page(at) {
                let _ = self.unmap(offset, at - offset);
                return Err(e);
            }
        }
        Ok(())
    }

    fn decommit(&mut self, offset: usize, len: usize) -> Result<(), SegmentError> {
        // Work still queued may read these pages: wait for it first.
        self.gpu.sync().map_err(|e| SegmentError(e.to_string()))?;
        self.unmap(offset, len)
    }
}

impl CudaSegment {
    fn map_page(&mut self, offset: usize) -> Result<(), SegmentError> {
        let p = prop();
        let mut handle: sys::CUmemGenericAllocationHandle = 0;
        let at = self.base + offset as u64;
        // SAFETY: a fresh handle for one page (a multiple of the
        // granularity), mapped into our own reserved range.
        unsafe {
            check("cuMemCreate (out of device memory?)", sys::cuMemCreate(&mut handle, PAGE_SIZE, &p, 0))?;
            if let Err(e) = check("cuMemMap", sys::cuMemMap(at, PAGE_SIZE, 0, handle, 0)) {
                sys::cuMemRelease(handle);
                return Err(e);
            }
            let desc = sys::CUmemAccessDesc {
                location: p.location,
                flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
            };
            if let Err(e) = check("cuMemSetAccess", sys::cuMemSetAccess(at, PAGE_SIZE, &desc, 1)) {
                sys::cuMemUnmap(at, PAGE_SIZE);
                sys::cuMemRelease(handle);
                return Err(e);
            }
        }
        self.mapped.insert(offset, handle);
        Ok(())
    }

    fn unmap(&mut self, offset: usize, len: usize) -> Result<(), SegmentError> {
        let pages: Vec<usize> = self.mapped.range(offset..offset + len).map(|(&o, _)| o).collect();
        for o in pages {
            let h = self.mapped[&o];
            // SAFETY: mapped by `map_page`; the caller has synced the stream.
            unsafe {
                check("cuMemUnmap", sys::cuMemUnmap(self.base + o as u64, PAGE_SIZE))?;
                check("cuMemRelease", sys::cuMemRelease(h))?;
            }
            self.mapped.remove(&o);
        }
        Ok(())
    }
}

impl Drop for CudaSegment {
    fn drop(&mut self) {
        let _ = self.gpu.sync();
        for (&o, &h) in &self.mapped {
            // SAFETY: mapped by `map_page`, released once.
            unsafe {
                sys::cuMemUnmap(self.base + o as u64, PAGE_SIZE);
                sys::cuMemRelease(h);
            }
        }
        // SAFETY: reserved in `reserve`.
        unsafe { sys::cuMemAddressFree(self.base, self.capacity) };
    }
}
