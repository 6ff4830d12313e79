// What the component's JavaScript engine (StarlingMonkey) provides; no DOM.
declare class TextEncoder { encode(input?: string): Uint8Array; }
declare class TextDecoder { constructor(label?: string); decode(input?: Uint8Array): string; }
declare const console: { log(...a: unknown[]): void; error(...a: unknown[]): void };
