//! The report's JSON, written by hand (no serde in the guest): statuses by name, byte strings as UTF-8, pairs or
//! hex.

use super::*;

/// A minimal JSON writer (the guest carries no serde).
#[derive(Default)]
pub(super) struct Json(pub(super) String);

impl Json {
    pub(super) fn string(&mut self, s: &str) {
        self.0.push('"');
        for c in s.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    self.0.push_str(&format!("\\u{:04x}", c as u32))
                }
                c => self.0.push(c),
            }
        }
        self.0.push('"');
    }

    pub(super) fn raw(&mut self, s: &str) {
        self.0.push_str(s);
    }

    /// Bytes as `{"utf8": ...}` when they are printable UTF-8, `{"pairs": [...]}` when they
    /// are a header-pairs map, else `{"hex": ...}`; `null` when absent.
    pub(super) fn bytes(&mut self, bytes: Option<&[u8]>) {
        let Some(bytes) = bytes else {
            self.raw("null");
            return;
        };
        if let Some(pairs) = decode_pairs(bytes).filter(|p| !p.is_empty()) {
            self.raw("{\"pairs\":");
            self.pairs(&pairs);
            self.raw("}");
            return;
        }
        match std::str::from_utf8(bytes) {
            Ok(text) if text.chars().all(|c| !c.is_control()) => {
                self.raw("{\"utf8\":");
                self.string(text);
                self.raw("}");
            }
            _ => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                self.raw("{\"hex\":");
                self.string(&hex);
                self.raw("}");
            }
        }
    }

    pub(super) fn pairs(&mut self, pairs: &[(Vec<u8>, Vec<u8>)]) {
        self.raw("[");
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                self.raw(",");
            }
            self.raw("[");
            self.string(&String::from_utf8_lossy(k));
            self.raw(",");
            self.string(&String::from_utf8_lossy(v));
            self.raw("]");
        }
        self.raw("]");
    }

    /// `{"status": "...", "value": <bytes>}`
    pub(super) fn result(&mut self, (status, bytes): (u32, Option<Vec<u8>>)) {
        self.raw("{\"status\":");
        self.string(&status_name(status));
        self.raw(",\"value\":");
        self.bytes(bytes.as_deref());
        self.raw("}");
    }

    /// `"key":` (with a comma before all but the first key of an object).
    pub(super) fn key(&mut self, first: &mut bool, key: &str) {
        if !*first {
            self.raw(",");
        }
        *first = false;
        self.string(key);
        self.raw(":");
    }
}
