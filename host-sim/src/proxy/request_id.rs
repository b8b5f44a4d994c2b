//! `x-request-id` values: random UUIDv4s, as Envoy's default request-id extension makes.
//!
//! Ids must be unique, not secret, and cheap on the request path: each worker thread seeds a xoshiro256** generator
//! once from the OS and draws from it, instead of reading `/dev/urandom` per request.

use std::cell::RefCell;
use std::fmt::Write as _;

thread_local! {
    static GENERATOR: RefCell<Xoshiro256> = RefCell::new(Xoshiro256::seeded());
}

/// A new random UUIDv4, lower-case hex with dashes.
pub(crate) fn new_uuid() -> String {
    let (high, low) = GENERATOR.with(|generator| {
        let mut generator = generator.borrow_mut();
        (generator.next(), generator.next())
    });
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&high.to_be_bytes());
    bytes[8..].copy_from_slice(&low.to_be_bytes());
    // Version 4, variant 10xx.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut text = String::with_capacity(36);
    for (index, byte) in bytes.iter().enumerate() {
        if matches!(index, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// xoshiro256** (Blackman and Vigna): fast, with a period far beyond any process's requests.
struct Xoshiro256([u64; 4]);

impl Xoshiro256 {
    fn seeded() -> Self {
        let mut seed = [0u8; 32];
        let from_os = std::fs::File::open("/dev/urandom")
            .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut seed));
        if from_os.is_err() {
            // Without an OS source, time and the thread still make each thread's sequence distinct.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let thread = format!("{:?}", std::thread::current().id());
            seed[..16].copy_from_slice(&nanos.to_le_bytes());
            for (slot, byte) in seed[16..].iter_mut().zip(thread.bytes().cycle()) {
                *slot = byte;
            }
        }
        let mut state = [0u64; 4];
        for (word, chunk) in state.iter_mut().zip(seed.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *word = splitmix64(u64::from_le_bytes(bytes));
        }
        Xoshiro256(state)
    }

    fn next(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
}

/// Spreads seed bits so that no state word is zero-heavy.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn uuids_are_v4_and_distinct() {
        let ids: Vec<String> = (0..1000).map(|_| new_uuid()).collect();
        for id in &ids {
            assert_eq!(id.len(), 36, "{id}");
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(parts[2].starts_with('4'), "{id}");
            assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{id}");
            assert!(id
                .bytes()
                .all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
        // Another thread draws a different sequence.
        let other = std::thread::spawn(new_uuid).join().expect("thread");
        assert!(!ids.contains(&other));
    }
}
