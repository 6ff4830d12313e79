// Types of Cairn's JavaScript kit (cairn-kit.js), for adapters written in
// TypeScript. The host interfaces' own types come from
// `jco guest-types wit -n adapter -o types`.
import type {
  AdapterError as WitError,
  AdapterInfo,
  BackupSummary,
  Capability,
  Metadata,
  RestoreSummary,
  VerifyReport,
} from 'cairn:adapter/types@0.1.0';
import type { Footprint } from 'cairn:adapter/configuration@0.3.0';

/** A parsed configuration: the JSON object the job gives. */
export type Config = Record<string, unknown>;

/** An adapter error: thrown from an export, it returns that WIT case. */
export declare class AdapterError extends Error {
  constructor(tag: WitError['tag'], message: string);
  payload: WitError;
}
export declare function invalidConfig(message: string): AdapterError;
export declare function notFound(message: string): AdapterError;
export declare function denied(message: string): AdapterError;
export declare function io(message: string): AdapterError;
export declare function corrupt(message: string): AdapterError;
export declare function other(message: string): AdapterError;
export declare function toAdapterError(e: unknown): WitError;
export declare function parseConfig(text: string, what?: string): Config;

export declare const log: {
  trace(message: string): void;
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
};

/** Counts: a number or a bigint; the kit makes every u64 a BigInt. */
type Count = number | bigint;

export declare function info(name: string, version: string, description: string, needs?: Capability[]): AdapterInfo;
export declare function metadata(m?: { mode?: number; mtime?: number; uid?: number; gid?: number; size?: Count }): Metadata;
export declare function backupSummary(s?: Partial<Record<keyof BackupSummary, Count>>): BackupSummary;
export declare function restoreSummary(s?: Partial<Record<keyof RestoreSummary, Count>>): RestoreSummary;
export declare function verifyReport(s?: { entries?: Count; bytes?: Count; problems?: string[] }): VerifyReport;
export declare function footprint(reads?: string[], writes?: string[]): Footprint;
export declare function drillConfig(config: Config, set: Config): Config;

/** What an adapter implements; summaries may use numbers. */
export interface Adapter {
  info(): AdapterInfo;
  backup(config: Config): Partial<Record<keyof BackupSummary, Count>>;
  restore(config: Config): Partial<Record<keyof RestoreSummary, Count>>;
  verify(config: Config): { entries?: Count; bytes?: Count; problems?: string[] };
  check?(config: Config, drillSet: Config | undefined): Partial<Footprint> | undefined;
}

export declare function exportAdapter(adapter: Adapter): {
  info(): AdapterInfo;
  backup(config: string): BackupSummary;
  restore(config: string): RestoreSummary;
  verify(config: string): VerifyReport;
  configuration: { check(config: string, drillSet: string | undefined): Footprint };
};
