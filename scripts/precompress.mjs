// Writes a brotli (.br) and a gzip (.gz) copy beside each file of the given folders that a browser
// downloads (.wasm, .js, .css, .html), and of their subfolders (pkg/snippets/), at the strongest levels: made once per build, served by
// order-server's ServeDir to browsers that accept them. Usage: node precompress.mjs DIR...
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";

for (const dir of process.argv.slice(2)) {
  for (const name of readdirSync(dir, { recursive: true })) {
    if (!/\.(wasm|js|css|html)$/.test(name)) continue;
    const file = path.join(dir, name);
    const bytes = readFileSync(file);
    writeFileSync(`${file}.gz`, gzipSync(bytes, { level: 9 }));
    writeFileSync(`${file}.br`, brotliCompressSync(bytes, {
      params: {
        [constants.BROTLI_PARAM_QUALITY]: constants.BROTLI_MAX_QUALITY,
        [constants.BROTLI_PARAM_SIZE_HINT]: bytes.length,
      },
    }));
  }
}
