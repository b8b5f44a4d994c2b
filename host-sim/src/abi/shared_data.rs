//! Shared data (get/set with CAS) and shared queues (register, resolve, enqueue, dequeue),
//! both scoped by VM id and shared by every instance of the host.

use super::{Reg, C};
use crate::host_state::memory::{copy_out, finish, read, write_u32, CallError, HostResult};

pub(super) fn add(reg: &mut Reg<'_>) -> wasmtime::Result<()> {
    reg.env(
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: u32, ks: u32, vpp: u32, vsp: u32, cas_ptr: u32| {
            finish(get_data(&mut c, kp, ks, vpp, vsp, cas_ptr))
        },
    )?;
    reg.env(
        "proxy_set_shared_data",
        |mut c: C<'_>, kp: u32, ks: u32, vp: u32, vs: u32, cas: u32| {
            finish(set_data(&mut c, kp, ks, vp, vs, cas))
        },
    )?;
    reg.env(
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: u32, ns: u32, token_ptr: u32| {
            finish(register(&mut c, np, ns, token_ptr))
        },
    )?;
    reg.env(
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vp: u32, vs: u32, np: u32, ns: u32, token_ptr: u32| {
            finish(resolve(&mut c, vp, vs, np, ns, token_ptr))
        },
    )?;
    reg.env(
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, token: u32, ptr: u32, size: u32| finish(enqueue(&mut c, token, ptr, size)),
    )?;
    reg.env(
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, token: u32, ptr_ptr: u32, size_ptr: u32| {
            finish(dequeue(&mut c, token, ptr_ptr, size_ptr))
        },
    )?;
    Ok(())
}

fn get_data(c: &mut C<'_>, kp: u32, ks: u32, vpp: u32, vsp: u32, cas_ptr: u32) -> HostResult {
    let key = read(c, kp, ks)?;
    let st = c.data();
    let (value, cas) = st.shared.data.get(&st.config.vm_id, &key)?;
    // cpp-host `get_shared_data`: the value is copied out first, then the CAS written; a bad CAS pointer fails
    // after the value's pointers were written.
    copy_out(c, &value, vpp, vsp)?;
    write_u32(c, cas_ptr, cas).map_err(CallError::from)
}

fn set_data(c: &mut C<'_>, kp: u32, ks: u32, vp: u32, vs: u32, cas: u32) -> HostResult {
    let key = read(c, kp, ks)?;
    let value = read(c, vp, vs)?;
    let st = c.data();
    st.shared.data.set(&st.config.vm_id, &key, &value, cas)?;
    Ok(())
}

fn register(c: &mut C<'_>, np: u32, ns: u32, token_ptr: u32) -> HostResult {
    let name = read(c, np, ns)?;
    // cpp-host `register_shared_queue` registers, then writes the token: a bad token pointer fails with the queue
    // registered and a token spent.
    let st = c.data();
    let token = st
        .shared
        .queues
        .register(&st.config.vm_id, &name, st.root_id, &st.inbox);
    write_u32(c, token_ptr, token).map_err(CallError::from)
}

fn resolve(c: &mut C<'_>, vp: u32, vs: u32, np: u32, ns: u32, token_ptr: u32) -> HostResult {
    let vm_id = read(c, vp, vs)?;
    let name = read(c, np, ns)?;
    let st = c.data();
    // An empty vm_id is the caller's own (cpp-host ContextBase::lookupSharedQueue).
    let vm_id = if vm_id.is_empty() {
        st.config.vm_id.clone()
    } else {
        String::from_utf8_lossy(&vm_id).into_owned()
    };
    let token = st.shared.queues.resolve(&vm_id, &name)?;
    write_u32(c, token_ptr, token).map_err(CallError::from)
}

fn enqueue(c: &mut C<'_>, token: u32, ptr: u32, size: u32) -> HostResult {
    let data = read(c, ptr, size)?;
    c.data().shared.queues.enqueue(token, &data)?;
    Ok(())
}

fn dequeue(c: &mut C<'_>, token: u32, ptr_ptr: u32, size_ptr: u32) -> HostResult {
    // cpp-host `dequeue_shared_queue`: the queue answers first (NotFound, Empty), the out-pointers are written
    // after, so an item taken for a bad pointer is gone.
    let data = c.data().shared.queues.dequeue(token)?;
    copy_out(c, &data, ptr_ptr, size_ptr)
}
