//! Lookups in a serialized header map, as `proxy_get_header_map_pairs` returns it: a `u32` pair
//! count, then a (`u32` name length, `u32` value length) per pair, then each name and value
//! followed by a NUL byte; integers little-endian.
//!
//! Reading the whole map once costs one hostcall, the same as reading one header, and then every
//! header the decision needs (`:authority`, the destination header, the cluster header,
//! `:method`) is free. The buffer comes from the host: a malformed one finds nothing rather than
//! panicking.

/// A serialized header map.
pub struct HeaderPairs<'a> {
    buf: &'a [u8],
}

impl<'a> HeaderPairs<'a> {
    pub fn new(buf: &'a [u8]) -> HeaderPairs<'a> {
        HeaderPairs { buf }
    }

    /// The first value of header `name` (header names in a proxy's map are lower-case).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        let name = name.as_bytes();
        let count = read_u32(self.buf, 0)? as usize;
        // Lengths start at 4; the data after the count and the length table.
        let mut data = count.checked_mul(8)?.checked_add(4)?;
        for i in 0..count {
            let name_len = read_u32(self.buf, 4 + i * 8)? as usize;
            let value_len = read_u32(self.buf, 8 + i * 8)? as usize;
            let value_at = data.checked_add(name_len)?.checked_add(1)?;
            let end = value_at.checked_add(value_len)?;
            // `get` rather than indexing: no panic path in the module, and a short buffer ends
            // the search. The value's NUL must be there too.
            self.buf.get(end)?;
            if self.buf.get(data..data + name_len)? == name {
                return self.buf.get(value_at..end);
            }
            data = end + 1;
        }
        None
    }
}

/// `:method` from the map, read only if the decision asks for it.
impl crate::policy::MethodSource for HeaderPairs<'_> {
    fn method(&mut self) -> &[u8] {
        self.get(":method").unwrap_or_default()
    }
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The same format the filter writes for its local replies' headers.
    use crate::response::serialize_headers as serialize;

    #[test]
    fn finds_the_first_value_of_a_header() {
        let buf = serialize(&[
            (":authority", "a.test:80"),
            (":method", "GET"),
            ("x-dfp-cluster", "one"),
            ("x-dfp-cluster", "two"),
            ("empty", ""),
        ]);
        let pairs = HeaderPairs::new(&buf);
        assert_eq!(pairs.get(":authority"), Some(&b"a.test:80"[..]));
        assert_eq!(pairs.get(":method"), Some(&b"GET"[..]));
        assert_eq!(pairs.get("x-dfp-cluster"), Some(&b"one"[..]));
        assert_eq!(pairs.get("empty"), Some(&b""[..]));
        assert_eq!(
            pairs.get("x-dfp"),
            None,
            "a prefix of a name is not the name"
        );
        assert_eq!(pairs.get("absent"), None);
    }

    #[test]
    fn malformed_buffers_find_nothing() {
        let good = serialize(&[("a", "1"), ("b", "2")]);
        assert_eq!(HeaderPairs::new(&good).get("b"), Some(&b"2"[..]));
        for cut in 0..good.len() {
            assert_eq!(
                HeaderPairs::new(&good[..cut]).get("b"),
                None,
                "cut at {cut}"
            );
        }
        let mut huge_count = good.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(HeaderPairs::new(&huge_count).get("b"), None);
        let mut huge_length = good.clone();
        huge_length[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(HeaderPairs::new(&huge_length).get("b"), None);
        assert_eq!(HeaderPairs::new(&[]).get("a"), None);
        assert_eq!(HeaderPairs::new(&serialize(&[])).get("a"), None);
    }
}
