// Cairn's JavaScript kit: write a Cairn backup adapter in JavaScript or
// TypeScript, built into a WebAssembly component with componentize-js
// against the WIT package cairn:adapter@0.3.0.
//
// What it does for you:
// - `exportAdapter(adapter)` gives the component's exports (`info`,
//   `backup`, `restore`, `verify`, and the `configuration` interface):
//   `export const { info, backup, restore, verify, configuration } =
//   exportAdapter(new MyAdapter());`
// - the JSON configuration arrives parsed (an object; anything else is
//   `invalid-config`);
// - every throw that escapes an export becomes `adapter-error.other`
//   carrying the error's name, message and stack, never a bare trap;
//   throw `invalidConfig(...)`, `notFound(...)`, `denied(...)`, `io(...)`,
//   `corrupt(...)` or `other(...)` to return that case; an error a host call
//   threw passes through as it is;
// - records with every field filled (`u64` fields are BigInt; a missing one
//   would trap after the export returned, where nothing can catch it):
//   `metadata`, `info`, `backupSummary`, `restoreSummary`, `verifyReport`,
//   `footprint`;
// - `log.info(...)` and its siblings write into the host's log.
import { write as logWrite } from 'cairn:adapter/log@0.1.0';

const CASES = new Set(['invalid-config', 'not-found', 'denied', 'io', 'corrupt', 'other']);

/** An adapter error: thrown from an export, it returns that WIT case. */
export class AdapterError extends Error {
  constructor(tag, message) {
    super(message);
    this.name = 'AdapterError';
    this.payload = { tag, val: String(message) };
  }
}

export const invalidConfig = (m) => new AdapterError('invalid-config', m);
export const notFound = (m) => new AdapterError('not-found', m);
export const denied = (m) => new AdapterError('denied', m);
export const io = (m) => new AdapterError('io', m);
export const corrupt = (m) => new AdapterError('corrupt', m);
export const other = (m) => new AdapterError('other', m);

/** Words for any thrown value, even one whose conversion throws. */
function words(v) {
  try {
    return String(v);
  } catch {
    return Object.prototype.toString.call(v);
  }
}

/** What a throw becomes: the adapter-error the host receives. */
export function toAdapterError(e) {
  try {
    return describe(e);
  } catch {
    return { tag: 'other', val: 'thrown: a value that cannot be described' };
  }
}

function describe(e) {
  // A host call that failed threw an error whose payload is the case.
  if (e && typeof e === 'object' && e.payload && CASES.has(e.payload.tag)) {
    return { tag: e.payload.tag, val: words(e.payload.val) };
  }
  if (e && typeof e === 'object' && CASES.has(e.tag) && typeof e.val === 'string') {
    return { tag: e.tag, val: e.val };
  }
  if (e instanceof Error) {
    return { tag: 'other', val: `${words(e.name)}: ${words(e.message)}\n${words(e.stack ?? '')}`.trimEnd() };
  }
  return { tag: 'other', val: `thrown: ${words(e)}` };
}

function guard(fn) {
  return (...args) => {
    try {
      const result = fn(...args);
      // The component model is synchronous here: a Promise's outcome would
      // be lost, and an empty summary returned as if all went well.
      if (result && typeof result.then === 'function') {
        throw other('the adapter returned a Promise: backup, restore, verify and check must be synchronous functions');
      }
      return result;
    } catch (e) {
      // componentize-js returns a thrown {tag, val} as the result's error.
      throw toAdapterError(e);
    }
  };
}

/** `text` as a JSON object, or `invalid-config` saying why not. */
export function parseConfig(text, what = 'config') {
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw invalidConfig(`${what} is not JSON: ${e.message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw invalidConfig(`${what} is not a JSON object`);
  }
  return value;
}

export const log = {
  trace: (m) => logWrite('trace', String(m)),
  debug: (m) => logWrite('debug', String(m)),
  info: (m) => logWrite('info', String(m)),
  warn: (m) => logWrite('warn', String(m)),
  error: (m) => logWrite('error', String(m)),
};

/** A u64 count, refused (not wrapped) when it is not one. */
function big(v) {
  const n = typeof v === 'bigint' ? v : BigInt(v ?? 0);
  if (n < 0n || n >= 2n ** 64n) throw other(`a count of ${n} is not a u64 (0 to 2^64-1)`);
  return n;
}

/** Who the adapter is; `needs` lists 'read-paths' and 'write-paths'. */
export function info(name, version, description, needs = []) {
  return { name, version, description, needs: [...needs] };
}

/** Metadata of an entry: permission bits, and what else is known. */
export function metadata({ mode = 0o644, mtime, uid, gid, size } = {}) {
  const m = { mode };
  if (mtime !== undefined) {
    const seconds = Math.floor(mtime);
    m.mtime = { seconds: BigInt(seconds), nanoseconds: Math.round((mtime - seconds) * 1e9) % 1e9 };
  }
  if (uid !== undefined) m.uid = uid;
  if (gid !== undefined) m.gid = gid;
  if (size !== undefined) m.size = BigInt(size);
  return m;
}

export const backupSummary = (s = {}) => ({
  files: big(s.files), directories: big(s.directories), symlinks: big(s.symlinks), skipped: big(s.skipped),
});
export const restoreSummary = (s = {}) => ({
  files: big(s.files), directories: big(s.directories), symlinks: big(s.symlinks), bytes: big(s.bytes),
});
export const verifyReport = (s = {}) => ({
  entries: big(s.entries), bytes: big(s.bytes), problems: [...(s.problems ?? [])].map(String),
});

/** What a job's settings touch: resource names such as
 * `redis://10.0.0.5:6379/3`; one ending in `/` covers every name under it. */
export const footprint = (reads = [], writes = []) => ({ reads: [...reads], writes: [...writes] });

/** The configuration a drill restores with: `config` with the drill's set
 * applied key by key, as the host applies it. */
export const drillConfig = (config, set) => ({ ...config, ...set });

/** `v`, unless it is a Promise (whose outcome would be lost). */
function settled(v) {
  if (v && typeof v.then === 'function') {
    throw other('the adapter returned a Promise: backup, restore, verify and check must be synchronous functions');
  }
  return v;
}

/** The component's exports, from an object with `info`, `backup`,
 * `restore`, `verify` and, optionally, `check(config, drillSet)`. */
export function exportAdapter(adapter) {
  return {
    info: () => {
      // `info` has no error case: the stack goes to standard error, which
      // the host shows with the trap.
      try {
        return adapter.info();
      } catch (e) {
        console.error(e instanceof Error ? `${e.name}: ${e.message}\n${e.stack ?? ''}` : String(e));
        throw e;
      }
    },
    backup: guard((c) => backupSummary(settled(adapter.backup(parseConfig(c))))),
    restore: guard((c) => restoreSummary(settled(adapter.restore(parseConfig(c))))),
    verify: guard((c) => verifyReport(settled(adapter.verify(parseConfig(c))))),
    configuration: {
      check: guard((c, drillSet) => {
        const config = parseConfig(c);
        const set = drillSet === undefined ? undefined : parseConfig(drillSet, "the drill's set");
        const f = adapter.check ? settled(adapter.check(config, set)) : undefined;
        return footprint(f?.reads ?? [], f?.writes ?? []);
      }),
    },
  };
}
