//! The `secrets` interface (0.2.0): the names of the secrets the job
//! grants, and a secret's value when the adapter asks for it (logged).
//! Programs get secrets by reference instead (see `process`).

use super::{HostResult, HostState, grant_error};
use crate::runtime::bindings::cairn::adapter0_2_0::secrets;

impl secrets::Host for HostState {
    async fn granted_secrets(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.grants.secret_names())
    }

    async fn reveal(&mut self, name: String) -> HostResult<Vec<u8>> {
        tracing::info!(adapter = %self.adapter, secret = %crate::util::escaped(&name), "Revealed a secret to the adapter.");
        Ok(self.grants.secret(&name).map_err(grant_error))
    }
}
