// The {{name}} adapter for Cairn, in TypeScript.
//
// A starting point that works as it is: it backs up the paths its job
// grants (files, directories, symlinks, with their metadata) and restores
// them under `target`. Change what it reads and how it restores; keep
// `cairn adapter check {{name}}.wasm` passing.
import * as kit from './cairn-kit.js';
import { addDirectory, addSymlink, beginFile, skip } from 'cairn:adapter/archive@0.1.0';
import { createDir, createSymlink, grantedPaths, listDir, setMetadata, stat } from 'cairn:adapter/fs@0.1.0';
import { nextEntry, open } from 'cairn:adapter/snapshot@0.1.0';
import type { Metadata } from 'cairn:adapter/types@0.1.0';

class {{Class}}Adapter implements kit.Adapter {
  info() {
    return kit.info('{{name}}', '0.1.0', 'Backs up the paths its job grants.', ['read-paths', 'write-paths']);
  }

  backup(_config: kit.Config) {
    const summary = { files: 0, directories: 0, symlinks: 0, skipped: 0 };
    for (const root of grantedPaths()) this.backUp(root, summary);
    return summary;
  }

  backUp(path: string, summary: { files: number; directories: number; symlinks: number; skipped: number }) {
    const found = stat(path);
    if (found.kind === 'directory') {
      addDirectory(path, found.meta);
      summary.directories += 1;
      for (const name of listDir(path)) this.backUp(`${path.replace(/\/+$/, '')}/${name}`, summary);
    } else if (found.kind === 'symlink') {
      addSymlink(path, found.linkTarget ?? '', found.meta);
      summary.symlinks += 1;
    } else if (found.kind === 'file') {
      // The host reads the file natively: no byte of it enters the sandbox.
      const entry = beginFile(path, found.meta);
      entry.pumpFile(path);
      entry.finish();
      summary.files += 1;
    } else {
      skip(path, 'not a file, directory or symbolic link');
      summary.skipped += 1;
    }
  }

  restore(config: kit.Config) {
    if (typeof config.target !== 'string' || config.target === '') {
      throw kit.invalidConfig('target: give the directory to restore into');
    }
    const summary = { files: 0, directories: 0, symlinks: 0, bytes: 0n };
    const directories: [string, Metadata][] = [];
    for (let entry = nextEntry(); entry !== undefined; entry = nextEntry()) {
      const path = (config.target as string).replace(/\/+$/, '') + entry.path;
      if (entry.kind === 'directory') {
        createDir(path);
        directories.push([path, entry.meta]);
        summary.directories += 1;
      } else if (entry.kind === 'symlink') {
        createSymlink(path, entry.linkTarget ?? '');
        setMetadata(path, entry.meta);
        summary.symlinks += 1;
      } else {
        // The host writes the file natively, in the background.
        summary.bytes += open(entry.path).pumpToFile(path);
        setMetadata(path, entry.meta);
        summary.files += 1;
      }
    }
    // A directory's times and mode last, once nothing more is written in it.
    for (const [path, meta] of directories.reverse()) setMetadata(path, meta);
    return summary;
  }

  verify(_config: kit.Config) {
    const report = { entries: 0, bytes: 0n, problems: [] as string[] };
    for (let entry = nextEntry(); entry !== undefined; entry = nextEntry()) {
      report.entries += 1;
      if (entry.kind === 'file' || entry.kind === 'stream') report.bytes += open(entry.path).discard();
    }
    return report;
  }
}

export const { info, backup, restore, verify, configuration } = kit.exportAdapter(new {{Class}}Adapter());
