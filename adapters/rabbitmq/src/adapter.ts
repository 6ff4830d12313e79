// The rabbitmq adapter for Cairn, in TypeScript.
//
// Backs up the definitions of a RabbitMQ broker: vhosts, users,
// permissions, exchanges, queues, bindings, policies and parameters, as
// `rabbitmqctl export_definitions` writes them (a granted program), into
// one entry, `/definitions.json`. Restore hands that entry to
// `rabbitmqctl import_definitions`, which creates what is missing (an
// empty broker gets everything back). Verify checks that the entry is a
// definitions document and counts what it holds.
//
// The adapter reads the export itself rather than pumping it: the document
// is small (kilobytes to a few megabytes), and a broker that answers with
// something that is not a definitions document must fail the backup, not
// become a snapshot that looks good. Restores are pumped by the host.
import * as kit from './cairn-kit.js';
import { beginStream } from 'cairn:adapter/archive@0.1.0';
import { spawn } from 'cairn:adapter/process@0.2.0';
import type { Child } from 'cairn:adapter/process@0.2.0';
import { nextEntry, open } from 'cairn:adapter/snapshot@0.1.0';

const ENTRY = '/definitions.json';
// The most the adapter reads of an export: far above any real broker's
// definitions, and a bound on what a misbehaving program can make it hold.
// The document is held about five times over (chunks, one buffer, the
// decoded string, the parsed objects), which must fit the default 512 MiB.
const MAX_EXPORT = 64 * 1024 * 1024;
// What a definitions document holds, each an array.
const SECTIONS = ['users', 'vhosts', 'permissions', 'topic_permissions', 'parameters', 'global_parameters',
  'policies', 'queues', 'exchanges', 'bindings'];

interface Settings { rabbitmqctl: string; node?: string }

function settings(config: kit.Config): Settings {
  const known = ['rabbitmqctl', 'node'];
  for (const key of Object.keys(config)) {
    if (!known.includes(key)) throw kit.invalidConfig(`config: unknown key '${key}' (known keys: ${known.join(', ')})`);
  }
  const s: Settings = { rabbitmqctl: 'rabbitmqctl' };
  for (const key of known) {
    const v = config[key];
    if (v === undefined) continue;
    if (typeof v !== 'string' || v === '') throw kit.invalidConfig(`config: ${key}: ${JSON.stringify(v)} is not a non-empty string`);
    (s as unknown as Record<string, string>)[key] = v;
  }
  return s;
}

function args(s: Settings, command: string[]): string[] {
  return [...(s.node ? ['--node', s.node] : []), '--quiet', ...command];
}

function ended(child: Child, s: Settings, what: string) {
  const status = child.wait();
  if (status.code !== 0) {
    const how = status.code !== undefined ? `exited with status ${status.code}` : `was killed by signal ${status.signal}`;
    throw kit.io(`${s.rabbitmqctl} ${how} while ${what}; its standard error ends:\n${status.stderrTail}`);
  }
}

/** What a definitions document holds, by section; throws naming what is wrong. */
function counts(text: string): Record<string, number> {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw kit.corrupt(`it is not JSON: ${(e as Error).message}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw kit.corrupt('it is not a JSON object');
  const found: Record<string, number> = {};
  for (const section of SECTIONS) {
    const v = (doc as Record<string, unknown>)[section];
    if (v === undefined) continue;
    if (!Array.isArray(v)) throw kit.corrupt(`its "${section}" is not an array`);
    found[section] = v.length;
  }
  if (found.vhosts === undefined) throw kit.corrupt('it has no "vhosts": not a RabbitMQ definitions document');
  return found;
}

function describe(c: Record<string, number>): string {
  return Object.entries(c).map(([k, n]) => `${n} ${k}`).join(', ');
}

class RabbitmqAdapter implements kit.Adapter {
  info() {
    return kit.info('rabbitmq', '0.1.0',
      'Backs up and restores the definitions of a RabbitMQ broker with a granted rabbitmqctl.', []);
  }

  backup(config: kit.Config) {
    const s = settings(config);
    const child = spawn({
      program: s.rabbitmqctl, args: args(s, ['export_definitions', '-', '--format', 'json']),
      secretEnv: [], stdin: 'null', stdout: 'pipe',
    });
    const parts: Uint8Array[] = [];
    let size = 0;
    for (;;) {
      const chunk = child.readStdout(1 << 20);
      if (chunk.length === 0) break;
      size += chunk.length;
      if (size > MAX_EXPORT) {
        child.kill();
        throw kit.io(`${s.rabbitmqctl} export_definitions wrote more than ${MAX_EXPORT} bytes; refusing to hold it`);
      }
      parts.push(chunk);
    }
    ended(child, s, 'exporting the definitions');
    const bytes = new Uint8Array(size);
    let at = 0;
    for (const p of parts) { bytes.set(p, at); at += p.length; }
    let found: Record<string, number>;
    try {
      found = counts(new TextDecoder().decode(bytes));
    } catch (e) {
      throw kit.io(`${s.rabbitmqctl} export_definitions: ${(e as Error).message}`);
    }
    const entry = beginStream(ENTRY, kit.metadata({ mode: 0o600, mtime: Date.now() / 1000 }));
    try {
      entry.write(bytes);
      entry.finish();
    } catch (e) {
      entry.cancel();
      throw e;
    }
    kit.log.info(`exported ${describe(found)} (${size} bytes)`);
    return { files: 1 };
  }

  restore(config: kit.Config) {
    const s = settings(config);
    let restored = false;
    for (let entry = nextEntry(); entry !== undefined; entry = nextEntry()) {
      if (entry.path !== ENTRY) continue;
      const child = spawn({
        program: s.rabbitmqctl, args: args(s, ['import_definitions', '--format', 'json']),
        secretEnv: [], stdin: 'pipe', stdout: 'null',
      });
      // The host pumps the entry into rabbitmqctl's standard input.
      child.pumpStdin(open(entry.path));
      ended(child, s, 'importing the definitions');
      restored = true;
    }
    if (!restored) throw kit.notFound(`the snapshot holds no ${ENTRY}`);
    return { files: 1 };
  }

  verify(config: kit.Config) {
    settings(config);
    const report = { entries: 0, bytes: 0n, problems: [] as string[] };
    let seen = false;
    for (let entry = nextEntry(); entry !== undefined; entry = nextEntry()) {
      report.entries += 1;
      if (entry.path !== ENTRY) continue;
      seen = true;
      const reader = open(entry.path);
      const parts: Uint8Array[] = [];
      let size = 0;
      for (let chunk = reader.read(1 << 20); chunk.length > 0; chunk = reader.read(1 << 20)) {
        parts.push(chunk);
        size += chunk.length;
        if (size > MAX_EXPORT) break;
      }
      report.bytes += BigInt(size);
      if (size > MAX_EXPORT) {
        report.problems.push(`${ENTRY} is larger than ${MAX_EXPORT} bytes`);
        continue;
      }
      const bytes = new Uint8Array(size);
      let at = 0;
      for (const p of parts) { bytes.set(p, at); at += p.length; }
      try {
        kit.log.info(`${ENTRY} holds ${describe(counts(new TextDecoder().decode(bytes)))}`);
      } catch (e) {
        report.problems.push(`${ENTRY}: ${(e as Error).message}`);
      }
    }
    if (!seen) report.problems.push(`the snapshot holds no ${ENTRY}`);
    return report;
  }

  check(config: kit.Config, drillSet: kit.Config | undefined) {
    const s = settings(config);
    const broker = `rabbitmq://${s.node ?? 'local'}/definitions`;
    if (drillSet !== undefined) settings(kit.drillConfig(config, drillSet));
    // A drill imports into the broker it backs up: name it, so the host
    // refuses such a drill rather than let it rewrite live definitions.
    return kit.footprint([broker], drillSet !== undefined ? [broker] : []);
  }
}

export const { info, backup, restore, verify, configuration } = kit.exportAdapter(new RabbitmqAdapter());
