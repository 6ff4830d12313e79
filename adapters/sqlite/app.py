"""The sqlite adapter for Cairn, in Python.

Backs up SQLite databases while they are in use: each database is dumped
by a granted `sqlite3` program (`.dump` reads inside one transaction, so
the copy is consistent however busy the writers are) and its SQL text is
pumped by the host, natively, into one stream entry named by the
database's path. Restore feeds each entry to `sqlite3` to build the
database again under `target`; verify loads every entry into an empty
in-memory database and names any that does not load.

The database files must lie inside the job's granted paths, and a restore
writes only inside its target: the adapter proves both through the host's
`fs` calls before it starts `sqlite3` on a path.
"""

from __future__ import annotations

import dataclasses
import codecs
import posixpath
import re

import cairn_kit as kit
from cairn_kit import archive, fs, process, snapshot

# How long `sqlite3` waits for a writer's lock before giving up, in ms.
BUSY_TIMEOUT_MS = 30_000

# Every run of sqlite3 is in its safe mode: a dump is SQL text from a
# database whose writers may be hostile, and sqlite3's shell obeys
# dot-commands (`.shell`, `.output`) and `ATTACH` in what it reads. Safe
# mode refuses them, so loading a dump can only build the database it is
# loaded into (a planted command fails the load, and verify names it).
SAFE = ["-safe", "-bail"]


class _Refused(Exception):
    """A dump statement that is not one `.dump` writes."""


# What `.dump` writes, statement by statement. Anything else is refused:
# the sqlite3 shell that loads a dump obeys dot-commands (`.trace FILE`,
# `.exit 0`, which safe mode allows) and runs any SQL (the shell's `fsdir`
# reads the host's files), and a database's writer can shape the text of
# its schema (`PRAGMA writable_schema`). A list of what is forbidden would
# never be complete; this is the list of what is allowed.
_PLAIN = {
    "PRAGMA foreign_keys=OFF", "PRAGMA writable_schema=ON", "PRAGMA writable_schema=OFF",
    "BEGIN TRANSACTION", "COMMIT", "DELETE FROM sqlite_sequence", "ANALYZE sqlite_schema",
    "ANALYZE sqlite_master",
}
# Words a row's VALUES may hold besides literals: how `.dump` writes NULL,
# newlines (`replace('a\nb','\n',char(10))`), other characters and BLOBs.
_VALUE_WORDS = {"NULL", "replace", "char", "unistr", "X", "x"}


def _words_and_rest(statement: str):
    """The statement's words outside string literals and quoted names, and
    whether it holds a `(`-group that starts with SELECT (a subquery)."""
    words, i, n = [], 0, len(statement)
    while i < n:
        c = statement[i]
        if c in "'\"`[":
            close = "]" if c == "[" else c
            j = i + 1
            while True:
                j = statement.find(close, j)
                if j < 0:
                    raise _Refused("a quote is not closed")
                if close != "]" and j + 1 < n and statement[j + 1] == close:
                    j += 2
                    continue
                break
            i = j + 1
        elif c.isdigit() or (c == "." and i + 1 < n and statement[i + 1].isdigit()):
            # A number: 12, 1.5, 9.9e+307, 0x1F; not a word.
            j = i
            while j < n and (statement[j].isalnum() or statement[j] == "."):
                if statement[j] in "eE" and j + 1 < n and statement[j + 1] in "+-":
                    j += 1
                j += 1
            i = j
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (statement[j].isalnum() or statement[j] in "_$"):
                j += 1
            words.append(statement[i:j])
            i = j
        elif statement.startswith("--", i) or statement.startswith("/*", i):
            raise _Refused("a comment")
        else:
            i += 1
    return words


# How `.dump` writes an INSERT: a name (bare or quoted), or the schema
# table's column list for a virtual table, then VALUES at once.
_INSERT = re.compile(
    r"INSERT INTO (?:[A-Za-z_][A-Za-z0-9_$]*|\"(?:[^\"]|\"\")*\"|'(?:[^']|'')*'|\[[^\]]*\]|`(?:[^`]|``)*`"
    r"|sqlite_schema\(type,name,tbl_name,rootpage,sql\)) ?VALUES ?\(",
    re.S,
)


def _allowed(statement: str) -> None:
    """Refuse a statement `.dump` does not write."""
    # The shell reads line by line: a line that is only `/` or `go` ends a
    # statement, one starting with `.` is a command, one starting with `#`
    # a comment, and a NUL drops the rest of its line. `.dump` writes none
    # of them (it escapes newlines in values), so they are refused wherever
    # they stand, quotes or not.
    if "\0" in statement:
        raise _Refused("a NUL byte")
    for line in statement.split("\n"):
        bare = line.strip()
        if bare in ("/",) or bare.lower() == "go":
            raise _Refused(f"a line the shell reads as the end of a statement ({bare})")
        if bare[:1] in (".", "#"):
            raise _Refused(f"a shell command ({bare.split()[0]})" if bare[0] == "." else "a shell comment line")
    text = statement.strip()
    if text in _PLAIN:
        return
    if not text[:1].isalpha():
        raise _Refused("a statement that does not start with a keyword")
    words = _words_and_rest(text)
    upper = [w.upper() for w in words]
    if upper[:2] == ["INSERT", "INTO"] and not _INSERT.match(text):
        raise _Refused("an INSERT that is not INSERT INTO name VALUES(...)")
    if upper[:2] == ["INSERT", "INTO"]:
        # `INSERT INTO name VALUES(...)`, or for a virtual table
        # `INSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql)VALUES(...)`:
        # only literals after VALUES, so no subquery and no function the
        # shell adds (fsdir, readfile) can run.
        if "VALUES" not in upper:
            raise _Refused("an INSERT without VALUES")
        after = words[upper.index("VALUES") + 1:]
        stray = [w for w in after if w not in _VALUE_WORDS]
        if stray:
            raise _Refused(f"an INSERT whose values call {stray[0]}")
        return
    if upper[:1] == ["CREATE"]:
        kind = upper[1:3]
        if kind[:1] in (["TABLE"], ["INDEX"], ["VIEW"], ["TRIGGER"]) or kind == ["UNIQUE", "INDEX"]:
            # CREATE TABLE ... AS SELECT would run its query now.
            if kind[:1] == ["TABLE"] and "AS" in upper and "SELECT" in upper:
                raise _Refused("CREATE TABLE ... AS SELECT")
            return
    raise _Refused(f"a statement .dump does not write ({' '.join(words[:3])} ...)")


def _checked_dump(reader, path: str):
    """The dump of entry `path`, statement by statement, each one checked;
    the last one must be the dump's COMMIT, so a dump cut short or ended
    early does not load as if whole. Bytes that are not UTF-8 (SQLite does
    not enforce it) pass through unchanged."""
    decode = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    pending, last = "", None
    while True:
        chunk = reader.read(1 << 20)
        text = pending + decode.decode(chunk, final=not chunk)
        # `pending` starts at a statement's start: scan from there, outside
        # any quote.
        start, quote = 0, None
        for i, c in enumerate(text):
            if quote:
                if c == quote:
                    quote = None
            elif c in "'\"`":
                quote = c
            elif c == "[":
                quote = "]"
            elif c == ";":
                statement = text[start:i + 1]
                # A trigger's body holds statements of its own: it ends at
                # `END;` (and runs only when the application writes).
                # SQLite's own rule: it ends at `; END ;` (a CASE's END
                # inside it is not preceded by a `;`).
                head = statement.lstrip()[:64].upper().split()
                if head[:2] == ["CREATE", "TRIGGER"]:
                    body = statement[:-1].rstrip()
                    before = body[:-3]
                    if not (body[-3:].upper() == "END" and not before[-1:].isalnum()
                            and before.rstrip().endswith(";")):
                        continue
                try:
                    _allowed(statement[:-1])
                except _Refused as e:
                    raise kit.Corrupt(f"{path}: the dump holds {e}, which Cairn does not load: "
                                      f"{statement.strip()[:120]!r}") from None
                last = statement.strip()
                yield statement.encode("utf-8", errors="surrogateescape")
                start = i + 1
        pending = text[start:]
        if not chunk:
            break
    if pending.strip() or last != "COMMIT;":
        raise kit.Corrupt(f"{path}: the dump does not end with its COMMIT (cut short, or not a dump)")


def _load(child, reader, path: str) -> None:
    """Write the checked dump into the child's standard input."""
    try:
        for statement in _checked_dump(reader, path):
            try:
                child.write_stdin(statement + b"\n")
            except kit.Err:
                return  # sqlite3 stopped reading: its exit status says why
    finally:
        child.close_stdin()


def _run_ok(child, program: str, what: str) -> None:
    status = child.wait()
    if status.code != 0:
        how = f"exited with status {status.code}" if status.code is not None else f"was killed by signal {status.signal}"
        raise kit.Io(f"{program} {how} while {what}; its standard error ends:\n{status.stderr_tail}")


def _command(sqlite3: str, args: list[str], stdin: bool, stdout: bool):
    return process.Command(
        program=sqlite3,
        args=args,
        secret_env=[],
        stdin=process.Stdio.PIPE if stdin else process.Stdio.NULL,
        stdout=process.Stdio.PIPE if stdout else process.Stdio.NULL,
    )


class SqliteAdapter(kit.Adapter):
    @dataclasses.dataclass
    class Config:
        # The database files to back up: absolute paths inside granted paths.
        databases: list[str] = dataclasses.field(default_factory=list)
        # Restore: the directory the databases are rebuilt under, each at
        # target + its original path (it must be granted).
        target: str | None = None
        # The granted program to run (a name the job grants).
        sqlite3: str = "sqlite3"

    def info(self):
        return kit.info(
            "sqlite",
            "0.1.0",
            "Backs up SQLite databases online with a granted sqlite3 (.dump) and rebuilds them on restore.",
            [kit.Capability.READ_PATHS, kit.Capability.WRITE_PATHS],
        )

    def _databases(self, config) -> list[str]:
        if not config.databases:
            raise kit.InvalidConfig("databases: give the database files to back up")
        seen = set()
        for db in config.databases:
            if not db.startswith("/") or posixpath.normpath(db) != db:
                raise kit.InvalidConfig(f"databases: {db!r} is not a normalised absolute path")
            if db in seen:
                raise kit.InvalidConfig(f"databases: {db!r} is listed twice")
            seen.add(db)
        return config.databases

    def backup(self, config):
        summary = kit.backup_summary()
        for db in self._databases(config):
            # Through the host: refused unless the job grants the path.
            found = fs.stat(db)
            if found.kind != kit.EntryKind.FILE:
                raise kit.InvalidConfig(f"databases: {db} is not a file")
            child = process.spawn(_command(
                config.sqlite3,
                [*SAFE, "-cmd", f".timeout {BUSY_TIMEOUT_MS}", db, ".dump"],
                stdin=False, stdout=True))
            meta = kit.metadata(found.meta.mode & 0o7777)
            meta.mtime = found.meta.mtime
            with child, archive.begin_stream(db, meta) as entry:
                try:
                    size = child.pump_stdout(entry)
                    _run_ok(child, config.sqlite3, f"dumping {db}")
                except BaseException:
                    entry.cancel()
                    raise
                entry.finish()
            kit.log.info(f"{db}: {size} bytes of SQL")
            summary.files += 1
        return summary

    def restore(self, config):
        if not config.target or not config.target.startswith("/"):
            raise kit.InvalidConfig("target: give the directory to rebuild the databases under")
        summary = kit.restore_summary()
        while (entry := snapshot.next_entry()) is not None:
            # A dump comes back as a file entry (a stream is stored as one).
            if entry.kind not in (kit.EntryKind.FILE, kit.EntryKind.STREAM):
                continue
            path = config.target.rstrip("/") + entry.path
            self._make_parents(config.target, path)
            try:
                fs.stat(path)
            except kit.Err as e:
                if not isinstance(e.value, kit.types.AdapterError_NotFound):
                    raise
            else:
                raise kit.Denied(f"{path} exists; restore into an empty target (nothing was overwritten)")
            child = process.spawn(_command(config.sqlite3, [*SAFE, path], stdin=True, stdout=False))
            with child, snapshot.open(entry.path) as reader:
                try:
                    # Through the adapter, not pumped: every statement is
                    # checked before sqlite3 sees it.
                    _load(child, reader, entry.path)
                except kit.Error as e:
                    child.kill()
                    child.wait()
                    raise kit.Corrupt(f"{e} -- {path} was left empty or partial; remove it before restoring again") from None
                try:
                    _run_ok(child, config.sqlite3, f"rebuilding {path}")
                except kit.Io as e:
                    # The shell cannot remove what it created; say so, so
                    # that nobody takes it for a restored database.
                    raise kit.Io(f"{e} -- {path} was left as sqlite3 stopped (its transaction was not committed); remove it before restoring again") from None
            fs.set_metadata(path, entry.meta)
            summary.files += 1
            summary.bytes += entry.meta.size or 0
        return summary

    def _make_parents(self, target: str, path: str) -> None:
        """Create the directories between target and path through the host,
        which refuses any outside the grants."""
        parent = posixpath.dirname(path)
        missing = []
        while parent != target.rstrip("/") and len(parent) > 1:
            missing.append(parent)
            parent = posixpath.dirname(parent)
        for d in [target] + list(reversed(missing)):
            try:
                if fs.stat(d).kind == kit.EntryKind.DIRECTORY:
                    continue
            except kit.Err as e:
                if not isinstance(e.value, kit.types.AdapterError_NotFound):
                    raise
            fs.create_dir(d)

    def verify(self, config):
        report = kit.verify_report()
        while (entry := snapshot.next_entry()) is not None:
            report.entries += 1
            if entry.kind not in (kit.EntryKind.FILE, kit.EntryKind.STREAM):
                continue
            child = process.spawn(_command(config.sqlite3, [*SAFE, ":memory:"], stdin=True, stdout=False))
            with child, snapshot.open(entry.path) as reader:
                try:
                    _load(child, reader, entry.path)
                except kit.Error as e:
                    child.kill()
                    child.wait()
                    report.problems.append(str(e))
                    continue
                status = child.wait()
            if status.code != 0:
                report.problems.append(f"{entry.path}: the dump does not load into an empty database: {status.stderr_tail.strip()}")
            report.bytes += entry.meta.size or 0
        return report

    def check(self, config, drill_set):
        dbs = self._databases(config)
        # A drill verifies: it loads every dump into an empty in-memory
        # database. It restores nothing, so it takes no settings of its own.
        if drill_set:
            raise kit.InvalidConfig(
                "drill.set: the sqlite adapter's drill loads every dump into an empty in-memory database "
                "and restores nothing; leave drill.set out")
        return kit.footprint([f"sqlite://{db}" for db in dbs])


WitWorld, Configuration = kit.export(SqliteAdapter)
