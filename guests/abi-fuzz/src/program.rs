//! The program a fuzz case runs and the report the guest writes, as bytes.
//!
//! A [`Program`] is a list of [`Step`]s, each one hostcall ([`Call`]) with integer and byte-string
//! arguments, tagged with the callback ([`Phase`]) it runs in. It travels hex-encoded in the
//! request header [`PROGRAM_HEADER`] (stream phases, ticks, queues, http-call responses) or as the
//! plugin configuration (program [`STARTUP_PROGRAM`]: `on_vm_start` and `on_configure`).
//!
//! The guest answers a request carrying [`FETCH_HEADER`]`: <id>` with the [`Record`]s of that
//! program: every callback it ran in (with the arguments the host passed and what the guest
//! returned) and every step (status, out-parameters, returned bytes).
//!
//! Both formats are little-endian and length-prefixed; decoding never panics.

use std::fmt;

/// Request header carrying a hex-encoded [`Program`].
pub const PROGRAM_HEADER: &str = "x-abi-fuzz";
/// Request header asking for the report of a program: its id in decimal.
pub const FETCH_HEADER: &str = "x-abi-fuzz-report";
/// Response header on a report: `1` when the program has nothing left to run, else `0`.
pub const COMPLETE_HEADER: &str = "x-abi-fuzz-complete";
/// The program in the plugin configuration; request programs use other ids.
pub const STARTUP_PROGRAM: u32 = 0;

/// What an untouched out-parameter still holds after a hostcall (the guest writes it before).
pub const UNTOUCHED: u64 = 0xDEAD_BEEF;
/// Reported in place of an out-pointer the host set to an address (addresses are the guest's
/// allocator's business, not the host's).
pub const POINTER_SET: u64 = 1;
/// The address passed for a pointer a step marks as bad: far outside any guest memory the
/// generator's programs grow to.
pub const BAD_POINTER: u32 = 0xFFFF_FF00;

/// Integer arguments at or above this are references the guest resolves when the step runs.
pub const REF_BASE: u64 = 0xFFFF_FFFF_FFFF_FF00;

/// A value known only while the program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Ref {
    /// The id of the context the step runs in.
    OwnContext = 0,
    /// The id of the root context.
    RootContext = 1,
    /// The token the last shared-queue register/resolve returned.
    LastQueue = 2,
    /// The id the last `define_metric` returned.
    LastMetric = 3,
    /// The token the last `http_call` returned.
    LastHttpCall = 4,
    /// The token the last `grpc_call`/`grpc_stream` returned.
    LastGrpc = 5,
}

impl Ref {
    pub const ALL: [Ref; 6] = [
        Ref::OwnContext,
        Ref::RootContext,
        Ref::LastQueue,
        Ref::LastMetric,
        Ref::LastHttpCall,
        Ref::LastGrpc,
    ];

    /// The integer argument that stands for this reference.
    pub fn arg(self) -> u64 {
        REF_BASE + self as u64
    }

    pub fn from_arg(value: u64) -> Option<Ref> {
        let n = value.checked_sub(REF_BASE)?;
        Ref::ALL.into_iter().find(|r| *r as u64 == n)
    }
}

macro_rules! byte_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name { $($(#[$vmeta])* $variant,)* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The name reports and tables use.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }

            pub fn from_u8(b: u8) -> Option<$name> {
                $name::ALL.get(usize::from(b)).copied()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

byte_enum! {
    /// The callback a step runs in.
    Phase {
        VmStart = "on_vm_start",
        Configure = "on_configure",
        Tick = "on_tick",
        QueueReady = "on_queue_ready",
        /// The context that made the call: a stream, or the root for calls made in root phases.
        HttpCallResponse = "on_http_call_response",
        RequestHeaders = "on_request_headers",
        RequestBody = "on_request_body",
        RequestTrailers = "on_request_trailers",
        ResponseHeaders = "on_response_headers",
        ResponseBody = "on_response_body",
        ResponseTrailers = "on_response_trailers",
        Log = "on_log",
        Done = "on_done",
        /// Not a step phase: the record of `proxy_on_delete` being called.
        Delete = "on_delete",
    }
}

impl Phase {
    /// Phases of a root context.
    pub fn is_root(self) -> bool {
        matches!(
            self,
            Phase::VmStart | Phase::Configure | Phase::Tick | Phase::QueueReady
        )
    }

    /// The phases a program's steps may be tagged with.
    pub fn step_phases() -> impl Iterator<Item = Phase> {
        Phase::ALL.iter().copied().filter(|p| *p != Phase::Delete)
    }
}

byte_enum! {
    /// One hostcall of ABI v0.2.1 (as proxy-wasm-cpp-host registers them for a 0.2.1 module).
    /// The doc of each says what its `ints` and `bufs` are, in order; missing ones are 0 / empty.
    Call {
        /// ints: level; bufs: message.
        Log = "log",
        /// out: level.
        GetLogLevel = "get_log_level",
        /// out: nanoseconds.
        GetCurrentTimeNanoseconds = "get_current_time_nanoseconds",
        /// ints: period (ms).
        SetTickPeriodMilliseconds = "set_tick_period_milliseconds",
        /// ints: buffer type, start, max size; out: pointer, size.
        GetBufferBytes = "get_buffer_bytes",
        /// ints: buffer type; out: length, flags.
        GetBufferStatus = "get_buffer_status",
        /// ints: buffer type, start, size; bufs: data.
        SetBufferBytes = "set_buffer_bytes",
        /// ints: map type; out: pointer, size.
        GetHeaderMapPairs = "get_header_map_pairs",
        /// ints: map type; bufs: serialised pairs.
        SetHeaderMapPairs = "set_header_map_pairs",
        /// ints: map type; bufs: key; out: pointer, size.
        GetHeaderMapValue = "get_header_map_value",
        /// ints: map type; bufs: key, value.
        AddHeaderMapValue = "add_header_map_value",
        /// ints: map type; bufs: key, value.
        ReplaceHeaderMapValue = "replace_header_map_value",
        /// ints: map type; bufs: key.
        RemoveHeaderMapValue = "remove_header_map_value",
        /// ints: map type; out: size.
        GetHeaderMapSize = "get_header_map_size",
        /// bufs: path (segments joined by NUL); out: pointer, size.
        GetProperty = "get_property",
        /// bufs: path, value.
        SetProperty = "set_property",
        /// bufs: key; out: pointer, size, cas.
        GetSharedData = "get_shared_data",
        /// ints: cas; bufs: key, value.
        SetSharedData = "set_shared_data",
        /// bufs: name; out: token.
        RegisterSharedQueue = "register_shared_queue",
        /// bufs: vm id, name; out: token.
        ResolveSharedQueue = "resolve_shared_queue",
        /// ints: token; out: pointer, size.
        DequeueSharedQueue = "dequeue_shared_queue",
        /// ints: token; bufs: value.
        EnqueueSharedQueue = "enqueue_shared_queue",
        /// ints: stream type.
        ContinueStream = "continue_stream",
        /// ints: stream type.
        CloseStream = "close_stream",
        /// ints: status, grpc status (as i32); bufs: details, body, serialised headers.
        SendLocalResponse = "send_local_response",
        /// ints: timeout (ms); bufs: cluster, serialised headers, body, serialised trailers; out: token.
        HttpCall = "http_call",
        /// ints: timeout (ms); bufs: service, service name, method, serialised metadata, message; out: token.
        GrpcCall = "grpc_call",
        /// bufs: service, service name, method, serialised metadata; out: token.
        GrpcStream = "grpc_stream",
        /// ints: token, end of stream; bufs: message.
        GrpcSend = "grpc_send",
        /// ints: token.
        GrpcCancel = "grpc_cancel",
        /// ints: token.
        GrpcClose = "grpc_close",
        /// ints: context id.
        SetEffectiveContext = "set_effective_context",
        Done = "done",
        /// bufs: function name, argument; out: pointer, size.
        CallForeignFunction = "call_foreign_function",
        /// ints: metric type; bufs: name; out: id.
        DefineMetric = "define_metric",
        /// ints: id, offset (as i64).
        IncrementMetric = "increment_metric",
        /// ints: id, value.
        RecordMetric = "record_metric",
        /// ints: id; out: value.
        GetMetric = "get_metric",
        /// out: code, pointer, size.
        GetStatus = "get_status",
    }
}

/// One hostcall in one callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub phase: Phase,
    pub call: Call,
    pub ints: Vec<u64>,
    pub bufs: Vec<Vec<u8>>,
    /// 0: every pointer valid; `k` in 1..=0x7f: the `k`-th byte-string argument is passed at
    /// [`BAD_POINTER`]; `0x80 | k`: the `k`-th out-parameter (1-based) is.
    pub bad_pointer: u8,
}

impl Step {
    pub fn int(&self, i: usize) -> u64 {
        self.ints.get(i).copied().unwrap_or(0)
    }

    pub fn buf(&self, i: usize) -> &[u8] {
        self.bufs.get(i).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Program {
    pub id: u32,
    pub steps: Vec<Step>,
}

impl Program {
    pub fn has_phase(&self, phase: Phase) -> bool {
        self.steps.iter().any(|s| s.phase == phase)
    }
}

/// One entry of a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A callback ran: the arguments the host passed (after the context id) and what the guest
    /// returned (0 for callbacks without a result).
    Callback {
        phase: Phase,
        args: Vec<u64>,
        returned: u64,
    },
    /// Step `index` of the program ran: the status, every out-parameter after the call
    /// ([`UNTOUCHED`], 0, or [`POINTER_SET`] for pointers), and the bytes each (pointer, size)
    /// pair of out-parameters points at, if the host set one.
    Step {
        index: u16,
        call: Call,
        status: u32,
        outs: Vec<u64>,
        data: Vec<Option<Vec<u8>>>,
    },
    /// The guest's own bookkeeping hostcalls (resuming a stream after an http call, queueing a
    /// root phase): what it did and the status, so a host that refuses them shows up too.
    Note(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed abi-fuzz bytes: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A count that must fit a byte; longer lists are cut (the generator never makes them).
    fn count(&mut self, n: usize) -> usize {
        let n = n.min(255);
        self.u8(n as u8);
        n
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

impl Program {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        w.u32(self.id);
        w.u16(self.steps.len().min(usize::from(u16::MAX)) as u16);
        for step in self.steps.iter().take(usize::from(u16::MAX)) {
            w.u8(step.phase as u8);
            w.u8(step.call as u8);
            w.u8(step.bad_pointer);
            let n = w.count(step.ints.len());
            for v in &step.ints[..n] {
                w.u64(*v);
            }
            let n = w.count(step.bufs.len());
            for b in &step.bufs[..n] {
                w.bytes(b);
            }
        }
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Result<Program, DecodeError> {
        let mut r = Reader(bytes);
        let id = r.u32()?;
        let n = r.u16()?;
        let mut steps = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let phase = Phase::from_u8(r.u8()?).ok_or(DecodeError("unknown phase"))?;
            let call = Call::from_u8(r.u8()?).ok_or(DecodeError("unknown call"))?;
            let bad_pointer = r.u8()?;
            let ints = (0..r.u8()?).map(|_| r.u64()).collect::<Result<_, _>>()?;
            let bufs = (0..r.u8()?).map(|_| r.bytes()).collect::<Result<_, _>>()?;
            steps.push(Step {
                phase,
                call,
                ints,
                bufs,
                bad_pointer,
            });
        }
        if !r.done() {
            return Err(DecodeError("trailing bytes after the program"));
        }
        Ok(Program { id, steps })
    }
}

impl Record {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut w = Writer(std::mem::take(out));
        match self {
            Record::Callback {
                phase,
                args,
                returned,
            } => {
                w.u8(0);
                w.u8(*phase as u8);
                let n = w.count(args.len());
                for a in &args[..n] {
                    w.u64(*a);
                }
                w.u64(*returned);
            }
            Record::Step {
                index,
                call,
                status,
                outs,
                data,
            } => {
                w.u8(1);
                w.u16(*index);
                w.u8(*call as u8);
                w.u32(*status);
                let n = w.count(outs.len());
                for o in &outs[..n] {
                    w.u64(*o);
                }
                let n = w.count(data.len());
                for d in &data[..n] {
                    match d {
                        None => w.u8(0),
                        Some(bytes) => {
                            w.u8(1);
                            w.bytes(bytes);
                        }
                    }
                }
            }
            Record::Note(text) => {
                w.u8(2);
                w.bytes(text.as_bytes());
            }
        }
        *out = w.0;
    }

    pub fn decode_all(bytes: &[u8]) -> Result<Vec<Record>, DecodeError> {
        let mut r = Reader(bytes);
        let mut out = Vec::new();
        while !r.done() {
            let record = match r.u8()? {
                0 => {
                    let phase = Phase::from_u8(r.u8()?).ok_or(DecodeError("unknown phase"))?;
                    let args = (0..r.u8()?).map(|_| r.u64()).collect::<Result<_, _>>()?;
                    Record::Callback {
                        phase,
                        args,
                        returned: r.u64()?,
                    }
                }
                1 => {
                    let index = r.u16()?;
                    let call = Call::from_u8(r.u8()?).ok_or(DecodeError("unknown call"))?;
                    let status = r.u32()?;
                    let outs = (0..r.u8()?).map(|_| r.u64()).collect::<Result<_, _>>()?;
                    let data = (0..r.u8()?)
                        .map(|_| match r.u8()? {
                            0 => Ok(None),
                            _ => r.bytes().map(Some),
                        })
                        .collect::<Result<_, _>>()?;
                    Record::Step {
                        index,
                        call,
                        status,
                        outs,
                        data,
                    }
                }
                2 => Record::Note(String::from_utf8_lossy(&r.bytes()?).into_owned()),
                _ => return Err(DecodeError("unknown record tag")),
            };
            out.push(record);
        }
        Ok(out)
    }
}

/// Lower-case hex, the form programs take in a header.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

pub fn from_hex(text: &[u8]) -> Result<Vec<u8>, DecodeError> {
    fn digit(c: u8) -> Result<u8, DecodeError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(DecodeError("not hex")),
        }
    }
    if !text.len().is_multiple_of(2) {
        return Err(DecodeError("odd number of hex digits"));
    }
    text.chunks(2)
        .map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// proxy-wasm's serialisation of a header map: the pair count, each name and value length
/// (u32 little-endian), then each name and value followed by a NUL.
pub fn serialise_pairs(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The inverse of [`serialise_pairs`]; `None` if the bytes are not such a map.
pub fn parse_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut r = Reader(bytes);
    let n = r.u32().ok()? as usize;
    if n > bytes.len() / 8 {
        return None;
    }
    let sizes: Vec<(usize, usize)> = (0..n)
        .map(|_| Some((r.u32().ok()? as usize, r.u32().ok()? as usize)))
        .collect::<Option<_>>()?;
    let mut pairs = Vec::with_capacity(n);
    for (k, v) in sizes {
        let key = r.take(k).ok()?.to_vec();
        r.take(1).ok()?;
        let value = r.take(v).ok()?.to_vec();
        r.take(1).ok()?;
        pairs.push((key, value));
    }
    r.done().then_some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_and_reports_survive_the_round_trip() {
        let program = Program {
            id: 7,
            steps: vec![Step {
                phase: Phase::ResponseBody,
                call: Call::SetBufferBytes,
                ints: vec![1, 0, u64::MAX, Ref::LastQueue.arg()],
                bufs: vec![b"ZZ".to_vec(), vec![]],
                bad_pointer: 0x81,
            }],
        };
        let hex = to_hex(&program.encode());
        let back = Program::decode(&from_hex(hex.as_bytes()).unwrap()).unwrap();
        assert_eq!(back, program);
        assert_eq!(Ref::from_arg(back.steps[0].ints[3]), Some(Ref::LastQueue));

        let records = vec![
            Record::Callback {
                phase: Phase::Log,
                args: vec![3, 1],
                returned: 0,
            },
            Record::Step {
                index: 4,
                call: Call::GetStatus,
                status: 0,
                outs: vec![UNTOUCHED, POINTER_SET, 2],
                data: vec![None, Some(b"ok".to_vec())],
            },
            Record::Note("resumed".into()),
        ];
        let mut bytes = Vec::new();
        for r in &records {
            r.encode_into(&mut bytes);
        }
        assert_eq!(Record::decode_all(&bytes).unwrap(), records);
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        assert!(Program::decode(&[1, 0, 0, 0, 1, 0, 99]).is_err());
        assert!(Program::decode(&[1, 0, 0]).is_err());
        assert!(from_hex(b"abc").is_err());
        assert!(Record::decode_all(&[7]).is_err());
        let pairs = vec![
            (b"a".to_vec(), b"".to_vec()),
            (b":path".to_vec(), b"/x".to_vec()),
        ];
        assert_eq!(parse_pairs(&serialise_pairs(&pairs)), Some(pairs));
        assert_eq!(parse_pairs(&[255, 255, 255, 255]), None);
    }
}
