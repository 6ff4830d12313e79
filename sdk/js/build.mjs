// Builds a Cairn adapter component from one JavaScript module with
// componentize-js: `node build.mjs SOURCE.js OUT.wasm [WIT-DIR]`.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';

const [source, out, wit = 'wit'] = process.argv.slice(2);
if (!source || !out) {
  console.error('usage: node build.mjs SOURCE.js OUT.wasm [WIT-DIR]');
  process.exit(2);
}
const started = Date.now();
const { component } = await componentize({
  sourcePath: source,
  witPath: wit,
  worldName: 'adapter',
  // The Cairn host links WASI 0.2 and the cairn interfaces; no wasi:http.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
console.log(`built ${out} (${(component.length / 1e6).toFixed(1)} MB) in ${((Date.now() - started) / 1000).toFixed(1)} s; check it with: cairn adapter check ${out}`);
