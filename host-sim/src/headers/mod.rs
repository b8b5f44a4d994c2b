//! Header maps as Envoy keeps them (ordered, lower-case keys, repeated keys allowed, inline headers in one
//! slot) and the proxy-wasm "pairs" wire format used for maps, local-reply headers and map-typed properties.

mod inline;

pub use inline::{is_inline, MapKind};

/// An ordered header map. Keys are stored lower-cased, as Envoy's `LowerCaseString` does;
/// values are raw bytes (Envoy does not require UTF-8 in values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl HeaderMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a map from `(key, value)` pairs, lower-casing keys.
    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.add(k.as_ref(), v.as_ref());
        }
        map
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Iterates entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.entries
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// The first value of `key` (case-insensitive), as Envoy's `get_header_map_value` returns it.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<&[u8]> {
        let key = key.as_ref();
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `key` as UTF-8, if it is valid UTF-8.
    pub fn get_str(&self, key: impl AsRef<[u8]>) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of `key`, in order.
    pub fn get_all(&self, key: impl AsRef<[u8]>) -> Vec<&[u8]> {
        let key = key.as_ref();
        self.entries
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// Appends a value (Envoy's `addCopy`); a pseudo-header (`:name`) goes after the other
    /// pseudo-headers instead, as Envoy keeps them ahead of every regular header.
    pub fn add(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let entry = (key.as_ref().to_ascii_lowercase(), value.as_ref().to_vec());
        if entry.0.first() == Some(&b':') {
            let end = self
                .entries
                .iter()
                .position(|(k, _)| k.first() != Some(&b':'))
                .unwrap_or(self.entries.len());
            self.entries.insert(end, entry);
        } else {
            self.entries.push(entry);
        }
    }

    /// Envoy's `addCopy` into a map of `kind`: for an inline header that is set already the value is appended to
    /// it after a `,` (an empty value changes nothing; an empty existing value takes it without the comma), any
    /// other key gets an entry of its own ([`add`](Self::add)).
    pub fn add_as(&mut self, kind: MapKind, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let key = key.as_ref().to_ascii_lowercase();
        let value = value.as_ref();
        if is_inline(kind, &key) {
            if let Some((_, existing)) = self.entries.iter_mut().find(|(k, _)| *k == key) {
                if !value.is_empty() {
                    if !existing.is_empty() {
                        existing.push(b',');
                    }
                    existing.extend_from_slice(value);
                }
                return;
            }
        }
        self.add(key, value);
    }

    /// A map of `kind` built from `pairs` with [`add_as`](Self::add_as), as Envoy builds one from a guest's pairs.
    pub fn from_pairs_as<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        kind: MapKind,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.add_as(kind, k.as_ref(), v.as_ref());
        }
        map
    }

    /// Replaces every value of `key` with one value (Envoy 1.40's `setCopy`: remove, then
    /// `addCopy`, so the header moves to the end of its block).
    pub fn replace(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.remove(key.as_ref());
        self.add(key, value);
    }

    /// Sets `key` to `value` where it stands (its first entry; later ones removed), or appends it: Envoy's
    /// `setReferenceKey` on an inline header such as `date`.
    pub fn set_in_place(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let key = key.as_ref();
        match self
            .entries
            .iter()
            .position(|(k, _)| k.eq_ignore_ascii_case(key))
        {
            Some(first) => {
                self.entries[first].1 = value.as_ref().to_vec();
                let mut index = 0;
                self.entries.retain(|(k, _)| {
                    index += 1;
                    index - 1 == first || !k.eq_ignore_ascii_case(key)
                });
            }
            None => self.add(key, value),
        }
    }

    /// Removes every value of `key`.
    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        let key = key.as_ref();
        self.entries.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
    }

    /// Sum of key and value lengths, as Envoy's `HeaderMap::byteSize`.
    pub fn byte_size(&self) -> usize {
        self.entries.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// Serialises the map in the pairs wire format.
    pub fn to_pairs_bytes(&self) -> Vec<u8> {
        encode_pairs(self.iter())
    }
}

/// Decoded pairs: (key, value) byte strings in order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Errors decoding a pairs buffer that a guest handed over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairsError {
    #[error("pairs buffer shorter than its header")]
    Truncated,
    #[error("pairs buffer declares {0} entries, more than it can hold")]
    TooManyEntries(u32),
    #[error("pairs buffer entry {0} runs past the end or lacks its NUL terminator")]
    BadEntry(usize),
}

/// The pairs a guest handed over, as cpp-host's `PairsUtil::toPairs` reads them: a buffer that is not a valid
/// pairs encoding is no pairs at all (never an error), so the call goes on with an empty list.
pub fn guest_pairs(buf: &[u8]) -> Pairs {
    decode_pairs(buf).unwrap_or_default()
}

/// Encodes pairs: `u32 count`, `count × (u32 key_len, u32 value_len)`, then each key and value
/// followed by a NUL byte. All integers little-endian (wasm is little-endian).
pub fn encode_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let count = pairs.clone().count();
    let data: usize = pairs.clone().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + count * 8 + data);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
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

/// Decodes a pairs buffer, checking every length against the buffer (the guest is untrusted).
/// An empty buffer is an empty map, as the C++ host treats it.
pub fn decode_pairs(buf: &[u8]) -> Result<Pairs, PairsError> {
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    let read_u32 = |at: usize| -> Option<u32> {
        buf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let count = read_u32(0).ok_or(PairsError::Truncated)?;
    let header_len = (count as usize)
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .filter(|n| *n <= buf.len())
        .ok_or(PairsError::TooManyEntries(count))?;
    let mut sizes = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let k = read_u32(4 + i * 8).ok_or(PairsError::Truncated)? as usize;
        let v = read_u32(8 + i * 8).ok_or(PairsError::Truncated)? as usize;
        sizes.push((k, v));
    }
    let mut at = header_len;
    let mut out = Vec::with_capacity(sizes.len());
    for (i, (k, v)) in sizes.into_iter().enumerate() {
        let mut take = |len: usize| -> Result<Vec<u8>, PairsError> {
            let end = at.checked_add(len).ok_or(PairsError::BadEntry(i))?;
            let bytes = buf.get(at..end).ok_or(PairsError::BadEntry(i))?.to_vec();
            if buf.get(end) != Some(&0) {
                return Err(PairsError::BadEntry(i));
            }
            at = end + 1;
            Ok(bytes)
        };
        let key = take(k)?;
        let value = take(v)?;
        out.push((key, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_and_layout() {
        let map = HeaderMap::from_pairs([(":path", "/a"), ("X-K", "v")]);
        let bytes = map.to_pairs_bytes();
        assert_eq!(&bytes[..4], &2u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &5u32.to_le_bytes());
        assert_eq!(&bytes[20..26], b":path\0");
        let back = decode_pairs(&bytes).expect("decodes");
        assert_eq!(back[1], (b"x-k".to_vec(), b"v".to_vec()));
    }

    #[test]
    fn hostile_pairs_are_rejected() {
        assert_eq!(decode_pairs(&[1, 0]), Err(PairsError::Truncated));
        assert_eq!(
            decode_pairs(&u32::MAX.to_le_bytes()),
            Err(PairsError::TooManyEntries(u32::MAX))
        );
        let mut bad = Vec::new();
        bad.extend_from_slice(&1u32.to_le_bytes());
        bad.extend_from_slice(&100u32.to_le_bytes());
        bad.extend_from_slice(&0u32.to_le_bytes());
        bad.extend_from_slice(b"ab\0\0");
        assert_eq!(decode_pairs(&bad), Err(PairsError::BadEntry(0)));
    }

    #[test]
    fn replace_moves_the_header_to_the_end_of_its_block() {
        // As the ABI probe shows Envoy 1.40 doing (tests/fidelity, probe/header_mutations).
        let mut map = HeaderMap::from_pairs([
            (":path", "/"),
            (":method", "GET"),
            ("a", "1"),
            ("b", "2"),
            ("a", "3"),
        ]);
        map.replace("A", "9");
        map.replace(":path", "/new");
        map.add(":x", "p");
        let got: Vec<_> = map.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> = [
            (":method", "GET"),
            (":path", "/new"),
            (":x", "p"),
            ("b", "2"),
            ("a", "9"),
        ]
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        assert_eq!(got, want);
    }
}
