//! What a command tells the agent that started it: one typed message per
//! line on its standard output, and its exit code. The agent runs each
//! job as a child process of this same binary (the crash boundary); both
//! sides compile the messages from this one definition, so a field the
//! agent reads cannot be misspelt on either side.
//!
//! A line is an [`Envelope`]: the protocol version and the message,
//! `{"cairn_protocol":1,"message":{"kind":"backup","body":{...}}}`. A line
//! that is not one (a child of another version, stray output) is ignored
//! by the agent and logged.

use serde::{Deserialize, Serialize};

/// The version of the messages below. A change that an older agent could
/// misread gets a new number.
pub const VERSION: u32 = 1;

/// One line of a child's output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// [`VERSION`] of the child that wrote it.
    pub cairn_protocol: u32,
    /// The message.
    pub message: Message,
}

/// What a child says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Message {
    /// A running backup's counters (about once a second).
    Progress(super::backup::Progress),
    /// A backup's report.
    Backup(super::backup::Report),
    /// A restore's report.
    Restore(super::restore::Report),
    /// What a forget (and prune) removed.
    Forget(super::forget::Report),
    /// A restore drill's record.
    Drill(super::drills::DrillRecord),
    /// The repository's snapshots, oldest first.
    Snapshots(Vec<crate::repo::snapshot::Listed>),
    /// A WAL stream's state (after each flush, while it runs).
    WalStatus(crate::pitr::stream::Status),
    /// The last message: how the command ended.
    End(End),
}

/// How a command ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct End {
    /// Its exit code, as a meaning.
    pub exit: Exit,
    /// Why it failed, when it did, with its causes.
    pub error: Option<Failure>,
    /// What it said about work it left out or could not finish (an entry
    /// not read, a region lagging, a damaged file passed over), in order.
    pub notes: Vec<String>,
    /// Requests the residency policy refused (never sent).
    pub residency_refusals: u64,
    /// Storage requests tried again.
    pub storage_retries: u64,
}

impl End {
    /// What to tell a user about a run that did not fully succeed: the
    /// error, else the last note.
    pub fn explanation(&self) -> Option<String> {
        self.error
            .as_ref()
            .map(|f| f.message.clone())
            .or_else(|| self.notes.last().cloned())
    }
}

/// Why a command failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The error and its causes, one line.
    pub message: String,
}

/// What kind of failure ended a command (see [`super::Error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The options given cannot work.
    Invalid,
    /// The repository or its storage failed.
    Repository,
    /// The adapter or its sandbox failed.
    Adapter,
    /// The tenant's residency rules stopped it.
    Residency,
    /// A local file or directory it needs failed.
    Local,
    /// Anything else (a failure before an operation started, say).
    Other,
}

/// A command's exit code, by meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// 0: everything worked.
    Ok,
    /// 1: the command failed.
    Failed,
    /// 3: it did its job but left something out (entries a backup could
    /// not read, a restore skipped, a damaged file passed over).
    Incomplete,
    /// 4: the work is stored in one region of the tenant's pair only.
    Degraded,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Incomplete => 3,
            Exit::Degraded => 4,
        }
    }

    /// The meaning of a process's exit code (`None`: killed by a signal,
    /// or a code no command uses).
    pub fn from_code(code: Option<i32>) -> Option<Exit> {
        match code? {
            0 => Some(Exit::Ok),
            1 => Some(Exit::Failed),
            3 => Some(Exit::Incomplete),
            4 => Some(Exit::Degraded),
            _ => None,
        }
    }
}

/// The environment variable `cairn agent` sets on the commands it runs,
/// holding the [`VERSION`] it reads: they then send [`Message`]s.
pub const CHILD_ENV: &str = "CAIRN_AGENT_CHILD";

/// Whether this process was started by `cairn agent`. Read once: every
/// line a command prints asks (`ls` prints one per entry).
pub fn is_child() -> bool {
    static CHILD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CHILD.get_or_init(|| std::env::var_os(CHILD_ENV).is_some())
}

/// The line that carries `message`.
pub fn encode(message: &Message) -> String {
    let envelope = Envelope {
        cairn_protocol: VERSION,
        message: message.clone(),
    };
    serde_json::to_string(&envelope).expect("protocol messages serialise")
}

/// The message a line carries, if it is one of this version.
pub fn decode(line: &str) -> Result<Message, String> {
    let envelope: Envelope = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if envelope.cairn_protocol != VERSION {
        return Err(format!(
            "protocol version {} (this agent reads {VERSION})",
            envelope.cairn_protocol
        ));
    }
    Ok(envelope.message)
}

/// Send `message` to the agent on standard output (one line). A closed
/// pipe means the agent is gone: the message is dropped.
pub fn send(message: &Message) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", encode(message));
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_line_it_is_sent_on() {
        let end = Message::End(End {
            exit: Exit::Incomplete,
            error: None,
            notes: vec!["left out /a: permission denied".into()],
            residency_refusals: 2,
            storage_retries: 5,
        });
        let line = encode(&end);
        assert!(!line.contains('\n'));
        let Message::End(back) = decode(&line).unwrap() else {
            panic!("not an end: {line}");
        };
        assert_eq!(back.exit, Exit::Incomplete);
        assert_eq!(back.residency_refusals, 2);
        assert_eq!(
            back.explanation().as_deref(),
            Some("left out /a: permission denied")
        );
    }

    #[test]
    fn another_version_or_stray_output_is_not_read_as_a_message() {
        let line = encode(&Message::Progress(Default::default()));
        let newer = line.replace(
            &format!("\"cairn_protocol\":{VERSION}"),
            &format!("\"cairn_protocol\":{}", VERSION + 1),
        );
        assert!(decode(&newer).unwrap_err().contains("protocol version"));
        assert!(decode("{\"message_type\":\"summary\"}").is_err());
        assert!(decode("restored 3 files").is_err());
    }

    #[test]
    fn exit_codes_map_both_ways() {
        for exit in [Exit::Ok, Exit::Failed, Exit::Incomplete, Exit::Degraded] {
            assert_eq!(Exit::from_code(Some(exit.code().into())), Some(exit));
        }
        assert_eq!(Exit::from_code(None), None);
        assert_eq!(Exit::from_code(Some(2)), None);
    }

    #[test]
    fn an_error_outranks_notes_in_the_explanation() {
        let end = End {
            exit: Exit::Failed,
            error: Some(Failure {
                kind: ErrorKind::Repository,
                message: "pack 1234 is damaged".into(),
            }),
            notes: vec!["left out /a".into()],
            residency_refusals: 0,
            storage_retries: 0,
        };
        assert_eq!(end.explanation().as_deref(), Some("pack 1234 is damaged"));
    }
}
