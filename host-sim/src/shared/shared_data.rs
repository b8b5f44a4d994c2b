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

    /// Stores `value`. A non-zero `cas` must match the current token, else `CasMismatch`
    /// (also when the key does not exist yet, as the C++ host does).
    pub fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Result<(), Status> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (vm_id.to_string(), key.to_vec());
        let current = entries.get(&slot).map(|(_, c)| *c);
        if cas != 0 && current != Some(cas) {
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
