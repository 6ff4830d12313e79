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
import posixpath

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
            with child:
                child.pump_stdin(snapshot.open(entry.path))
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
            with child:
                child.pump_stdin(snapshot.open(entry.path))
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
