//! Turning S3 and SDK errors into messages that name region, bucket and
//! object and never carry a secret.

/// The region in a signature-scope complaint such as "unexpected scope:
/// '20261124/eu-north-1/s3/aws4_request', expected:
/// '20261124/eu-west-1/s3/aws4_request'".
pub(super) fn expected_scope_region(message: &str) -> Option<String> {
    let rest = &message[message.rfind("expected")?..];
    let scope = rest.split('\'').nth(1)?;
    let mut parts = scope.split('/');
    let (_date, region, service) = (parts.next()?, parts.next()?, parts.next()?);
    (service == "s3" && !region.is_empty()).then(|| region.to_string())
}

/// A key as a listing with `encoding-type=url` gives it: `%XX` escapes,
/// and `+` for a space (AWS), decoded.
pub(super) fn url_decoded(key: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn status_meaning(status: u16) -> &'static str {
    match status {
        301 | 307 => "the bucket is in another region or endpoint",
        400 => "bad request: a wrong region or signature?",
        403 => "access denied: check the credentials and the bucket's permissions",
        404 => "no such bucket or object",
        429 | 503 => "SlowDown: the server is throttling requests",
        500..=599 => "server error",
        _ => "unexpected status",
    }
}

/// An error and its sources, each said once, without Debug dumps.
pub(super) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}
