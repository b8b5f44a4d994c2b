//! Memory the host fills: allocations that carry their size, and reading what a hostcall returned.

/// Every allocation carries its size in front, so what the host allocated can be freed with the
/// right layout whatever size it reported.
const HEADER: usize = 8;

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: u32) -> u32 {
    allocate(size)
}

#[no_mangle]
pub extern "C" fn malloc(size: u32) -> u32 {
    allocate(size)
}

pub(super) fn allocate(size: u32) -> u32 {
    let total = size as usize + HEADER;
    let Ok(layout) = std::alloc::Layout::from_size_align(total, 8) else {
        return 0;
    };
    // SAFETY: a non-zero layout; the size goes in the first 8 bytes.
    unsafe {
        let p = std::alloc::alloc(layout);
        if p.is_null() {
            return 0;
        }
        (p as *mut u64).write(total as u64);
        p.add(HEADER) as u32
    }
}

pub(super) fn free(ptr: u32) {
    if (ptr as usize) < HEADER {
        return;
    }
    // SAFETY: `ptr` came from `allocate` (only host-returned pointers are freed, and the host
    // allocates through it); the header holds the layout's size.
    unsafe {
        let base = (ptr as usize - HEADER) as *mut u8;
        let total = (base as *const u64).read() as usize;
        if let Ok(layout) = std::alloc::Layout::from_size_align(total, 8) {
            std::alloc::dealloc(base, layout);
        }
    }
}

pub(super) fn memory_bytes() -> usize {
    core::arch::wasm32::memory_size(0) * 65536
}

/// Copies `size` bytes at `ptr` if they lie inside the memory, and frees the allocation.
pub(super) fn take_returned(ptr: u32, size: u32) -> Option<Vec<u8>> {
    let (p, n) = (ptr as usize, size as usize);
    if p == 0 || p.checked_add(n)? > memory_bytes() {
        return None;
    }
    // SAFETY: bounds checked against the linear memory just above.
    let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, n) }.to_vec();
    free(ptr);
    Some(bytes)
}
