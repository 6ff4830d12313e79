//! Secrets the job grants, by name. Prefer
//! [`process::Command::secret_env`], which keeps the value out of the
//! adapter; use [`secrets::reveal`] only to send a secret over a protocol
//! the adapter speaks itself.

use crate::Error;
use crate::wit::cairn::adapter0_2_0::secrets as host;

/// The names of the granted secrets.
pub fn granted() -> Vec<String> {
    host::granted_secrets()
}

/// The value of secret `name`.
pub fn reveal(name: &str) -> Result<Vec<u8>, Error> {
    Ok(host::reveal(name)?)
}
