//! The one place that touches guest memory: bounds-checked reads and writes, and allocation
//! inside the guest through its exported allocator. Every pointer and length comes from an
//! untrusted guest; a bad one yields `InvalidMemoryAccess`, never a host panic.

use wasmtime::Caller;

use crate::host_state::HostState;
use crate::types::Status;

/// Why a hostcall did not return Ok: a status for the guest, or a trap to propagate (the
/// guest's own allocator trapped, or the guest asked to exit).
#[derive(Debug)]
pub(crate) enum CallError {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for CallError {
    fn from(s: Status) -> Self {
        CallError::Status(s)
    }
}

pub(crate) type HostResult = Result<(), CallError>;

/// Turns a hostcall's outcome into the value returned to the guest (or a trap).
pub(crate) fn finish(r: HostResult) -> wasmtime::Result<u32> {
    match r {
        Ok(()) => Ok(Status::Ok.code()),
        Err(CallError::Status(s)) => Ok(s.code()),
        Err(CallError::Trap(e)) => Err(e),
    }
}

fn range(ptr: u32, len: u32, mem_len: usize) -> Result<std::ops::Range<usize>, Status> {
    let start = ptr as usize;
    let end = start
        .checked_add(len as usize)
        .ok_or(Status::InvalidMemoryAccess)?;
    if end > mem_len {
        return Err(Status::InvalidMemoryAccess);
    }
    Ok(start..end)
}

/// Runs `f` on the guest bytes `[ptr, ptr+len)` together with the host state.
pub(crate) fn with_slice<R>(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    len: u32,
    f: impl FnOnce(&[u8], &mut HostState) -> R,
) -> Result<R, Status> {
    let memory = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let (data, state) = memory.data_and_store_mut(caller);
    let r = range(ptr, len, data.len())?;
    Ok(f(&data[r], state))
}

/// Copies `[ptr, ptr+len)` out of the guest.
pub(crate) fn read(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    len: u32,
) -> Result<Vec<u8>, Status> {
    with_slice(caller, ptr, len, |b, _| b.to_vec())
}

/// Writes `bytes` at `ptr`.
pub(crate) fn write(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    bytes: &[u8],
) -> Result<(), Status> {
    let len = u32::try_from(bytes.len()).map_err(|_| Status::InvalidMemoryAccess)?;
    let memory = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let data = memory.data_mut(caller);
    let r = range(ptr, len, data.len())?;
    data[r].copy_from_slice(bytes);
    Ok(())
}

pub(crate) fn write_u32(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    v: u32,
) -> Result<(), Status> {
    write(caller, ptr, &v.to_le_bytes())
}

pub(crate) fn write_u64(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    v: u64,
) -> Result<(), Status> {
    write(caller, ptr, &v.to_le_bytes())
}

/// Checks that `len` bytes at `ptr` are writable, without writing.
pub(crate) fn check_writable(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    len: u32,
) -> Result<(), Status> {
    with_slice(caller, ptr, len, |_, _| ())
}

/// Allocates `bytes.len()` bytes in the guest with its allocator and copies `bytes` there.
pub(crate) fn alloc_copy(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
) -> Result<u32, CallError> {
    let size = u32::try_from(bytes.len()).map_err(|_| Status::InvalidMemoryAccess)?;
    let alloc = caller
        .data()
        .alloc
        .clone()
        .ok_or(Status::InvalidMemoryAccess)?;
    let ptr = alloc.call(&mut *caller, size).map_err(CallError::Trap)?;
    if ptr == 0 {
        return Err(Status::InvalidMemoryAccess.into());
    }
    write(caller, ptr, bytes)?;
    Ok(ptr)
}

/// Hands `bytes` to the guest: allocates a copy and writes its address and size to
/// `ptr_ptr` / `size_ptr`. Empty data is passed as a null pointer with size 0, as the C++
/// host does. Both out-pointers are checked before anything is allocated.
pub(crate) fn copy_out(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    ptr_ptr: u32,
    size_ptr: u32,
) -> Result<(), CallError> {
    // cpp-host `WasmBase::copyToPointers`: allocate and copy, write the pointer, then the size, each write failing
    // on its own (a bad size pointer leaves the pointer written; measured by the ABI fuzzer).
    let ptr = if bytes.is_empty() {
        0
    } else {
        alloc_copy(caller, bytes)?
    };
    write_u32(caller, ptr_ptr, ptr)?;
    write_u32(caller, size_ptr, bytes.len() as u32)?;
    Ok(())
}
