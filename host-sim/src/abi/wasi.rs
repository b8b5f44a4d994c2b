//! The WASI preview1 subset Envoy implements, so `wasm32-wasip1` modules load: stdout and
//! stderr go to the log (info and error), clocks, randomness, environment, empty argv, and
//! stubs for files (no file system is exposed).

use std::io::Read;

use super::{Reg, C};
use crate::host_state::memory::{check_writable, read, with_slice, write, write_u32, write_u64};
use crate::types::LogLevel;

const ESUCCESS: u32 = 0;
const EBADF: u32 = 8;
const EFAULT: u32 = 21;
const ENOENT: u32 = 44;
const ENOSYS: u32 = 52;
const ENOTSUP: u32 = 58;

pub(super) fn add(reg: &mut Reg<'_>) -> wasmtime::Result<()> {
    reg.wasi("fd_write", fd_write)?;
    reg.wasi(
        "fd_read",
        |_c: C<'_>, _fd: u32, _iovs: u32, _n: u32, _nread: u32| ENOSYS,
    )?;
    reg.wasi(
        "fd_seek",
        |_c: C<'_>, _fd: u32, _off: i64, _whence: u32, _new: u32| ESUCCESS,
    )?;
    reg.wasi("fd_close", |_c: C<'_>, _fd: u32| ESUCCESS)?;
    reg.wasi("fd_fdstat_get", fd_fdstat_get)?;
    reg.wasi("fd_prestat_get", |_c: C<'_>, _fd: u32, _buf: u32| EBADF)?;
    reg.wasi(
        "fd_prestat_dir_name",
        |_c: C<'_>, _fd: u32, _p: u32, _l: u32| ENOSYS,
    )?;
    reg.wasi(
        "path_open",
        |_c: C<'_>,
         _fd: u32,
         _df: u32,
         _p: u32,
         _l: u32,
         _of: u32,
         _rb: i64,
         _ri: i64,
         _ff: u32,
         _out: u32| ENOENT,
    )?;
    reg.wasi("environ_get", environ_get)?;
    reg.wasi("environ_sizes_get", environ_sizes_get)?;
    reg.wasi("args_get", |_c: C<'_>, _argv: u32, _buf: u32| ESUCCESS)?;
    reg.wasi("args_sizes_get", |mut c: C<'_>, argc: u32, size: u32| {
        if write_u32(&mut c, argc, 0).is_err() || write_u32(&mut c, size, 0).is_err() {
            return EFAULT;
        }
        ESUCCESS
    })?;
    reg.wasi("clock_time_get", clock_time_get)?;
    reg.wasi("random_get", random_get)?;
    reg.wasi("sched_yield", |_c: C<'_>| ESUCCESS)?;
    reg.wasi(
        "proc_exit",
        |_c: C<'_>, code: u32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "guest called proc_exit({code})"
            )))
        },
    )?;
    Ok(())
}

fn fd_write(mut c: C<'_>, fd: u32, iovs: u32, iovs_len: u32, nwritten: u32) -> u32 {
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return EBADF,
    };
    let mut text = Vec::new();
    for i in 0..iovs_len {
        let Some(at) = i.checked_mul(8).and_then(|o| iovs.checked_add(o)) else {
            return EFAULT;
        };
        let Ok(iov) = read(&mut c, at, 8) else {
            return EFAULT;
        };
        let buf = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        if with_slice(&mut c, buf, len, |b, _| text.extend_from_slice(b)).is_err() {
            return EFAULT;
        }
    }
    let written = text.len() as u32;
    if text.last() == Some(&b'\n') {
        text.pop();
    }
    if !text.is_empty() {
        super::logging::emit(c.data_mut(), level, &String::from_utf8_lossy(&text));
    }
    if write_u32(&mut c, nwritten, written).is_err() {
        return EFAULT;
    }
    ESUCCESS
}

fn fd_fdstat_get(mut c: C<'_>, fd: u32, out: u32) -> u32 {
    if fd != 1 && fd != 2 {
        return EBADF;
    }
    // fdstat: filetype 0, flags 0, rights_base = FD_WRITE (64), rights_inheriting 0.
    let mut stat = [0u8; 24];
    stat[8..16].copy_from_slice(&64u64.to_le_bytes());
    if write(&mut c, out, &stat).is_err() {
        return EFAULT;
    }
    ESUCCESS
}

fn environ_get(mut c: C<'_>, array: u32, buf: u32) -> u32 {
    let env = c.data().config.environment.clone();
    let (mut array, mut buf) = (array, buf);
    for (k, v) in env {
        let entry = format!("{k}={v}\0");
        if write_u32(&mut c, array, buf).is_err() || write(&mut c, buf, entry.as_bytes()).is_err() {
            return EFAULT;
        }
        array = array.wrapping_add(4);
        buf = buf.wrapping_add(entry.len() as u32);
    }
    ESUCCESS
}

fn environ_sizes_get(mut c: C<'_>, count: u32, size: u32) -> u32 {
    let env = &c.data().config.environment;
    let n = env.len() as u32;
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if write_u32(&mut c, count, n).is_err() || write_u32(&mut c, size, total as u32).is_err() {
        return EFAULT;
    }
    ESUCCESS
}

fn clock_time_get(mut c: C<'_>, id: u32, _precision: i64, out: u32) -> u32 {
    let nanos = match id {
        0 => super::timers::now_nanos(),
        1 => c
            .data()
            .started
            .elapsed()
            .as_nanos()
            .min(u128::from(u64::MAX)) as u64,
        _ => return ENOTSUP,
    };
    if write_u64(&mut c, out, nanos).is_err() {
        return EFAULT;
    }
    ESUCCESS
}

fn random_get(mut c: C<'_>, out: u32, len: u32) -> u32 {
    if check_writable(&mut c, out, len).is_err() {
        return EFAULT;
    }
    let mut bytes = vec![0u8; len as usize];
    fill_random(&mut bytes);
    if write(&mut c, out, &bytes).is_err() {
        return EFAULT;
    }
    ESUCCESS
}

fn fill_random(buf: &mut [u8]) {
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_ok()
    {
        return;
    }
    // No OS randomness: a time-seeded xorshift keeps guests running (not for secrets).
    let mut x = super::timers::now_nanos() | 1;
    for b in buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}
