//! Shared key/value data with compare-and-swap, scoped by VM id as in proxy-wasm-cpp-host.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::types::Status;

/// (vm_id, key) -> (value, cas)
type Entries = HashMap<(String, Vec<u8>), (Vec<u8>, u32)>;

#[derive(Debug, Default)]
pub struct SharedData {
    entries: Mutex<Entries>,
    next_cas: Mutex<u32>,
}

impl SharedData {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value and its CAS token, or `NotFound`.
    pub fn get(&self, vm_id: &str, key: &[u8]) -> Result<(Vec<u8>, u32), Status> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&(vm_id.to_string(), key.to_vec()))
            .cloned()
            .ok_or(Status::NotFound)
    }

    /// Stores `value`. For a key that exists, a non-zero `cas` must match its token, else
    /// `CasMismatch`; a new key is stored whatever the `cas` (cpp-host `SharedData::set`, found
    /// by the ABI fuzzer).
    pub fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Result<(), Status> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (vm_id.to_string(), key.to_vec());
        let current = entries.get(&slot).map(|(_, c)| *c);
        if cas != 0 && current.is_some_and(|c| c != cas) {
            return Err(Status::CasMismatch);
        }
        let next = {
            let mut n = self.next_cas.lock().unwrap_or_else(|e| e.into_inner());
            // Tokens are never 0: the SDK reads 0 as "no CAS".
            *n = n.checked_add(1).unwrap_or(1);
            *n
        };
        entries.insert(slot, (value.to_vec(), next));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_takes_any_cas_and_an_existing_one_only_its_own() {
        let data = SharedData::new();
        data.set("vm", b"k", b"a", 7).expect("a new key: any cas");
        let (_, cas) = data.get("vm", b"k").expect("stored");
        assert_eq!(
            data.set("vm", b"k", b"b", cas + 1),
            Err(Status::CasMismatch)
        );
        data.set("vm", b"k", b"b", cas).expect("its own cas");
        data.set("vm", b"k", b"c", 0).expect("no cas");
        assert_eq!(data.get("vm", b"k").map(|(v, _)| v), Ok(b"c".to_vec()));
    }
}
