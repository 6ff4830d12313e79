"""The {{name}} adapter for Cairn.

A starting point that works as it is: it backs up the paths its job grants
(files, directories, symlinks, with their metadata) and restores them under
`target`. Change what it reads and how it restores; keep `cairn adapter
check {{name}}.wasm` passing.
"""

from __future__ import annotations

import dataclasses

import cairn_kit as kit
from cairn_kit import Capability, EntryKind, archive, fs, snapshot


class {{Class}}Adapter(kit.Adapter):
    @dataclasses.dataclass
    class Config:
        # Restore: the directory entries are restored under (it must be granted).
        target: str | None = None

    def info(self):
        return kit.info(
            "{{name}}",
            "0.1.0",
            "Backs up the paths its job grants.",
            [Capability.READ_PATHS, Capability.WRITE_PATHS],
        )

    def backup(self, config):
        summary = kit.backup_summary()
        # Depth-first in name order, with a stack of its own: a deep tree
        # must not exhaust Python's recursion limit.
        pending = list(reversed(fs.granted_paths()))
        while pending:
            self._back_up(pending.pop(), summary, pending)
        return summary

    def _back_up(self, path, summary, pending):
        found = fs.stat(path)
        if found.kind == EntryKind.DIRECTORY:
            archive.add_directory(path, found.meta)
            summary.directories += 1
            for name in reversed(fs.list_dir(path)):
                pending.append(path.rstrip("/") + "/" + name)
        elif found.kind == EntryKind.SYMLINK:
            archive.add_symlink(path, found.link_target, found.meta)
            summary.symlinks += 1
        elif found.kind == EntryKind.FILE:
            # The host reads the file natively: no byte of it enters Python.
            with archive.begin_file(path, found.meta) as entry:
                entry.pump_file(path)
                entry.finish()
            summary.files += 1
        else:
            archive.skip(path, "not a file, directory or symbolic link")
            summary.skipped += 1

    def restore(self, config):
        if not config.target:
            raise kit.InvalidConfig("target: give the directory to restore into")
        summary = kit.restore_summary()
        directories = []
        while (entry := snapshot.next_entry()) is not None:
            path = config.target.rstrip("/") + entry.path
            if entry.kind == EntryKind.DIRECTORY:
                fs.create_dir(path)
                directories.append((path, entry.meta))
                summary.directories += 1
            elif entry.kind == EntryKind.SYMLINK:
                fs.create_symlink(path, entry.link_target)
                fs.set_metadata(path, entry.meta)
                summary.symlinks += 1
            else:
                # The host writes the file natively, in the background.
                with snapshot.open(entry.path) as content:
                    summary.bytes += content.pump_to_file(path)
                fs.set_metadata(path, entry.meta)
                summary.files += 1
        # A directory's times and mode last, once nothing more is written in it.
        for path, meta in reversed(directories):
            fs.set_metadata(path, meta)
        return summary

    def verify(self, config):
        report = kit.verify_report()
        while (entry := snapshot.next_entry()) is not None:
            report.entries += 1
            if entry.kind in (EntryKind.FILE, EntryKind.STREAM):
                with snapshot.open(entry.path) as content:
                    report.bytes += content.discard()
        return report


WitWorld, Configuration = kit.export({{Class}}Adapter)
