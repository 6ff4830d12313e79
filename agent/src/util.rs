//! Small helpers shared across the crate.

/// The host name recorded in snapshots (and used to pick a job's parent,
/// its retention group and its drilled snapshot): `$CAIRN_HOSTNAME` when
/// set (a pod, whose own name changes at each restart, sets its node's),
/// else the system's host name.
pub fn hostname() -> String {
    if let Ok(h) = std::env::var("CAIRN_HOSTNAME")
        && !h.is_empty()
    {
        return h;
    }
    system_hostname()
}

/// The kernel's host name, recorded in locks. Not `$CAIRN_HOSTNAME`: a
/// lock's process id is only meaningful in the PID namespace (the host or
/// the pod) that wrote it, and two of them may share a node's name.
pub fn system_hostname() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// What a task on another thread returned. Its panic is this task's
/// panic. A task cancelled because the runtime is shutting down gives
/// nothing: this task never returns and is dropped with the runtime
/// (`into_panic` on a cancellation would panic with a message that is no
/// panic of ours).
pub async fn joined<T>(r: Result<T, tokio::task::JoinError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => std::future::pending().await,
    }
}

/// Run `f` on a blocking thread, so it never stalls the async workers
/// (see [`joined`] for a panic or a shutdown).
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    joined(tokio::task::spawn_blocking(f).await).await
}

/// Cairn's cache directory: `$CAIRN_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/cairn`, else `~/.cache/cairn`.
pub fn cache_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(d) = std::env::var_os("CAIRN_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("cairn"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cairn"))
}

/// Take a secret out of this process's environment: its value is
/// returned, the variable removed (no child inherits it), and its value
/// overwritten in the process's initial environment block, which
/// `/proc/<pid>/environ` shows for the life of the process to anyone who
/// may read that file. Call it at start-up, before any other thread runs.
pub fn take_env_secret(name: &str) -> Option<String> {
    let value = std::env::var_os(name)?;
    scrub_initial_environment(name);
    // SAFETY: called by `main` before the async runtime or any other
    // thread exists, so nothing reads the environment concurrently.
    unsafe { std::env::remove_var(name) };
    Some(value.to_string_lossy().into_owned())
}

/// Overwrite the value of `name=` in the strings `environ` points to. At
/// start-up they are the kernel's initial block (what `/proc/self/environ`
/// reads); removing the variable from `environ` alone would leave it there.
fn scrub_initial_environment(name: &str) {
    unsafe extern "C" {
        static mut environ: *const *mut libc::c_char;
    }
    let prefix = name.as_bytes();
    // SAFETY: single-threaded start-up (see `take_env_secret`); `environ`
    // is a NULL-terminated array of NUL-terminated strings owned by this
    // process, and each write stays inside the string it scrubs.
    unsafe {
        let mut entry = environ;
        if entry.is_null() {
            return;
        }
        while !(*entry).is_null() {
            let s = *entry;
            let bytes = std::ffi::CStr::from_ptr(s).to_bytes();
            if bytes.len() > prefix.len()
                && bytes.starts_with(prefix)
                && bytes[prefix.len()] == b'='
            {
                let value_len = bytes.len() - prefix.len() - 1;
                std::ptr::write_bytes(s.add(prefix.len() + 1), 0, value_len);
            }
            entry = entry.add(1);
        }
    }
}

/// Characters that must not reach a terminal or a text log as they are:
/// control characters, and the invisible ones that reorder or hide text.
fn risky(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// A name or message as it may be printed to a terminal or a text log:
/// unchanged when it holds no control or invisible formatting characters,
/// else quoted with those (and quotes and backslashes) escaped, as Go's
/// `%q` does for restic. A newline in an entry name or an adapter's log
/// message can then neither forge a line nor move the cursor.
pub fn escaped(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(risky) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if risky(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    std::borrow::Cow::Owned(out)
}

/// A message that may span lines (an adapter's error with a program's
/// standard error in it), made safe to print: control and invisible
/// formatting characters but newline and tab escaped, and every line after
/// the first indented, so no line of it can pass for a line of Cairn's own.
pub fn indented(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for (i, line) in s.split('\n').enumerate() {
        if i > 0 {
            out.push_str("\n    ");
        }
        for c in line.strip_suffix('\r').unwrap_or(line).chars() {
            match c {
                '\t' => out.push('\t'),
                c if risky(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
    }
    out
}

/// Lock `m` even when a thread panicked while holding it. The shared
/// state this guards (run records, rate buckets, lock lists) is changed in
/// single steps, so it stays usable; one panic must not turn every later
/// use into another.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`lock`] for reading an `RwLock`.
pub fn read<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`lock`] for writing an `RwLock`.
pub fn write<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::{escaped, indented};

    #[test]
    fn a_multi_line_message_cannot_forge_a_line() {
        assert_eq!(indented("one line"), "one line");
        assert_eq!(
            indented("dump failed: x\nFATAL: role \"r\" does not exist\u{1b}[2K"),
            "dump failed: x\n    FATAL: role \"r\" does not exist\\u{1b}[2K"
        );
    }

    #[test]
    fn names_with_control_characters_are_quoted_and_escaped() {
        assert_eq!(escaped("/plain/ünïcødé name"), "/plain/ünïcødé name");
        assert_eq!(escaped("/a\nFAKE"), "\"/a\\nFAKE\"");
        assert_eq!(escaped("\u{1b}[31mred"), "\"\\u{1b}[31mred\"");
        assert_eq!(escaped("q\"\\\0"), "\"q\\\"\\\\\\u{0}\"");
        assert_eq!(escaped("a\u{202e}b"), "\"a\\u{202e}b\"");
    }
}
