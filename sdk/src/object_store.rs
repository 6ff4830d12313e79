//! The buckets a job grants (S3 and S3-compatible stores), WIT 0.4.0.
//!
//! The adapter lists and decides; the host signs every request (the
//! adapter never sees a credential) and moves every object byte natively:
//! [`fetch_objects`] GETs objects straight into new file entries of the
//! backup, [`store_objects`] PUTs snapshot entries as objects, each with
//! several objects in flight. A grant is named by its name in the job
//! (`grants.buckets.NAME`); keys are whole keys, inside the grant's prefix.
//!
//! ```no_run
//! use cairn_sdk::object_store::{self, Fetch};
//! # fn main() -> Result<(), cairn_sdk::Error> {
//! let grant = &object_store::granted_buckets()[0];
//! let mut after = None;
//! loop {
//!     let page = object_store::list_objects(&grant.name, &grant.prefix, after.as_deref())?;
//!     let fetches: Vec<Fetch> = page.objects.iter().map(|o| Fetch {
//!         key: o.key.clone(),
//!         if_match: Some(o.etag.clone()),
//!         path: format!("/objects/{}", o.key),
//!         meta: cairn_sdk::Metadata::with_mode(0o644).sized(o.size),
//!     }).collect();
//!     for (o, r) in page.objects.iter().zip(object_store::fetch_objects(&grant.name, &fetches, 0)) {
//!         if let Err(e) = r {
//!             cairn_sdk::archive::skip(&format!("/objects/{}", o.key), &e.to_string());
//!         }
//!     }
//!     match page.next { Some(n) => after = Some(n), None => break }
//! }
//! # Ok(())
//! # }
//! ```

use crate::Error;
use crate::wit::cairn::adapter0_4_0::object_store as host;

pub use host::{BucketGrant, Fetch, ObjectHead, ObjectSummary, Page, Store};

/// The buckets this job grants.
pub fn granted_buckets() -> Vec<BucketGrant> {
    host::granted_buckets()
}

/// One page (at most 1000 objects) of the keys under `prefix` (inside the
/// grant's prefix; "" for the grant's); `after` is the previous page's
/// `next`.
pub fn list_objects(grant: &str, prefix: &str, after: Option<&str>) -> Result<Page, Error> {
    Ok(host::list_objects(grant, prefix, after)?)
}

/// One object's headers; [`Error::NotFound`] when there is none.
pub fn head(grant: &str, key: &str) -> Result<ObjectHead, Error> {
    Ok(host::head(grant, key)?)
}

/// GET each object into a new file entry, `concurrency` at once (0: the
/// host's default). The entries are added in the order given, which must
/// be the archive's order. Per object: the headers the GET returned, or
/// why it was not stored (an object changed since it was listed, with
/// `if_match`, is [`Error::NotFound`]).
pub fn fetch_objects(
    grant: &str,
    objects: &[Fetch],
    concurrency: u32,
) -> Vec<Result<ObjectHead, Error>> {
    host::fetch_objects(grant, objects, concurrency)
        .into_iter()
        .map(|r| r.map_err(Error::from))
        .collect()
}

/// PUT each snapshot entry as an object with its headers, `concurrency`
/// at once; unless `overwrite`, an existing key is left alone
/// ([`Error::Denied`]). Per object: the bytes written, or the error.
pub fn store_objects(
    grant: &str,
    objects: &[Store],
    concurrency: u32,
    overwrite: bool,
) -> Vec<Result<u64, Error>> {
    host::store_objects(grant, objects, concurrency, overwrite)
        .into_iter()
        .map(|r| r.map_err(Error::from))
        .collect()
}
