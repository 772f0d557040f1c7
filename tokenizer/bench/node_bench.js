// Encodes the lines of a file with the HF library (Rust, via @anush008/tokenizers) on one thread
// and prints {"seconds": s} for the best of three passes. Usage: node node_bench.js TOKENIZER LINES
'use strict';
process.env.TOKENIZERS_PARALLELISM = 'false';
const fs = require('fs');
const { Tokenizer } = require('@anush008/tokenizers');

async function main() {
  const [tokenizerFile, linesFile] = process.argv.slice(2);
  const tokenizer = Tokenizer.fromFile(tokenizerFile);
  const lines = fs.readFileSync(linesFile, 'utf8').split('\n');
  let best = Infinity;
  for (let pass = 0; pass < 3; pass++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < lines.length; i += 1000) await tokenizer.encodeBatch(lines.slice(i, i + 1000));
    best = Math.min(best, Number(process.hrtime.bigint() - start) / 1e9);
  }
  console.log(JSON.stringify({ seconds: best }));
}

main().catch((e) => { console.error(e.message); process.exit(1); });
