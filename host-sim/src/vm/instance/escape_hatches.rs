//! Escape hatches for the ABI tests: raw guest exports, guest memory, the last status. Nothing in the proxy
//! calls them.

use super::*;

impl PluginInstance {
    /// Runs a raw guest export `name(args...)` (i32 arguments) with `ctx` as the running
    /// context and returns its first i32 result: an escape hatch for ABI tests that drive
    /// purpose-built exports of hostile or probe guests.
    pub fn call_export(
        &mut self,
        ctx: u32,
        name: &str,
        args: &[u32],
    ) -> Result<Option<u32>, CallbackError> {
        let params: Vec<wasmtime::Val> =
            args.iter().map(|a| wasmtime::Val::I32(*a as i32)).collect();
        let results = self.call_export_values(ctx, name, &params)?;
        Ok(results.first().and_then(|v| v.i32()).map(|v| v as u32))
    }

    /// [`PluginInstance::call_export`] with typed values (for exports taking `i64`s). Arguments
    /// that do not match the export's signature are refused before anything runs.
    pub fn call_export_values(
        &mut self,
        ctx: u32,
        name: &str,
        params: &[wasmtime::Val],
    ) -> Result<Vec<wasmtime::Val>, CallbackError> {
        self.check_alive()?;
        let refuse = self.trap("call_export");
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            return Err(refuse(format!(
                "the module has no function export `{name}`"
            )));
        };
        let ty = func.ty(&self.store);
        let matches = ty.params().len() == params.len()
            && ty
                .params()
                .zip(params)
                .all(|(t, v)| v.ty(&self.store).is_ok_and(|vt| vt.matches(&t)));
        if !matches {
            return Err(refuse(format!(
                "`{name}` takes {} arguments of other types",
                ty.params().len()
            )));
        }
        let mut results: Vec<wasmtime::Val> = ty
            .results()
            .map(|t| wasmtime::Val::default_for_ty(&t).unwrap_or(wasmtime::Val::I32(0)))
            .collect();
        {
            let st = self.store.data_mut();
            st.current = ctx;
            st.effective = 0;
        }
        self.store.set_epoch_deadline(self.deadline);
        let r = func.call(&mut self.store, params, &mut results);
        let st = self.store.data_mut();
        st.current = 0;
        st.effective = 0;
        if let Err(e) = r {
            let message = call_failure(&e, self.factory.config.call_deadline, self.store.data());
            self.failed = Some(message.clone());
            return Err(self.trap("call_export")(message));
        }
        Ok(results)
    }

    /// Copies `bytes` into the guest's memory at `ptr` (tests preparing hostcall arguments).
    /// `false` when the range is outside the memory.
    pub fn write_guest_memory(&mut self, ptr: u32, bytes: &[u8]) -> bool {
        let Some(memory) = self.store.data().memory else {
            return false;
        };
        memory.write(&mut self.store, ptr as usize, bytes).is_ok()
    }

    /// Reads `len` bytes of the guest's memory at `ptr`, if in range.
    pub fn read_guest_memory(&self, ptr: u32, len: u32) -> Option<Vec<u8>> {
        let memory = self.store.data().memory?;
        let mut out = vec![0; len as usize];
        memory
            .read(&self.store, ptr as usize, &mut out)
            .ok()
            .map(|_| out)
    }

    /// The guest's linear memory size in bytes.
    pub fn memory_size(&self) -> usize {
        self.store
            .data()
            .memory
            .map_or(0, |m| m.data_size(&self.store))
    }
}
