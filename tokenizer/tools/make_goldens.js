// Builds the golden tokenizers and their reference encodings with the HF `tokenizers` library
// (the Rust code, through its Node bindings @anush008/tokenizers).
//
//   cd tokenizer/tools && npm install && node make_goldens.js ../tests/golden [NAME...]
//
// With NAMEs only those tokenizers are written (the corpus and variants are always rewritten).
// spm_precompiled needs `spm_train` (Debian package sentencepiece) for its charsmap.
//
// Text comes from Debian packages on this machine (translations in /usr/share/locale/*.mo, the
// licences in /usr/share/common-licenses) plus hand-written edge cases. Vocabularies are trained
// with the library's BPE trainer and pruned; WordPiece and Unigram vocabularies are derived from
// them. Every tokenizer.json is written by the library itself; legacy files (vocab.txt,
// vocab.json + merges.txt) are written from the same vocabularies.
'use strict';
const childProcess = require('child_process');
const fs = require('fs');
const path = require('path');
const zlib = require('zlib');
const tk = require('@anush008/tokenizers');

const OUT = path.resolve(process.argv[2] || '../tests/golden');
const WORK = fs.mkdtempSync('/tmp/tokgold-');

// ---- deterministic randomness ---------------------------------------------------------------
let seed = 20240607;
function rand() {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff;
  return seed / 0x80000000;
}
function pick(list) { return list[Math.floor(rand() * list.length)]; }

// ---- text sources ----------------------------------------------------------------------------
function moStrings(file) {
  const buf = fs.readFileSync(file);
  if (buf.length < 28 || buf.readUInt32LE(0) !== 0x950412de) return [];
  const n = buf.readUInt32LE(8);
  const table = buf.readUInt32LE(16);
  const out = [];
  for (let i = 0; i < n; i++) {
    const len = buf.readUInt32LE(table + 8 * i);
    const off = buf.readUInt32LE(table + 8 * i + 4);
    const s = buf.toString('utf8', off, off + len);
    if (s.includes('\ufffd')) continue;
    for (const part of s.split('\0')) if (part.length > 0) out.push(part);
  }
  return out;
}

const LANGS = ['de', 'fr', 'es', 'pt', 'pl', 'cs', 'tr', 'vi', 'ru', 'uk', 'el', 'he', 'ar', 'fa',
  'hi', 'bn', 'ta', 'th', 'ka', 'am', 'ja', 'zh_CN', 'zh_TW', 'ko', 'km', 'hu', 'fi', 'ro'];

function languageLines(lang, count) {
  const dir = `/usr/share/locale/${lang}/LC_MESSAGES`;
  if (!fs.existsSync(dir)) return [];
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.mo')).sort();
  const lines = [];
  for (const f of files) for (const s of moStrings(path.join(dir, f))) lines.push(s);
  const unique = [...new Set(lines)].filter((s) => s.length <= 400);
  const chosen = [];
  for (let i = 0; i < count && unique.length > 0; i++) chosen.push(unique[Math.floor(rand() * unique.length)]);
  return chosen;
}

function licenceLines(count) {
  const text = ['GPL-3', 'Apache-2.0', 'MPL-2.0', 'Artistic']
    .map((f) => fs.readFileSync(`/usr/share/common-licenses/${f}`, 'utf8')).join('\n');
  const lines = text.split('\n');
  const chosen = [];
  for (let i = 0; i < count; i++) {
    const start = Math.floor(rand() * lines.length);
    chosen.push(lines.slice(start, start + 1 + Math.floor(rand() * 3)).join('\n'));
  }
  return chosen;
}

const EDGE_CASES = [
  '', ' ', '   ', '\t\n', '\n', 'a', 'I', '.', '  .  ', 'Hello   world\t\ttabs\n\nnewlines',
  'héllo wörld café naïve', 'e\u0301 combining acute', 'Ṩ̣̇ stacked marks', 'Å Å Å angstrom forms',
  '👨‍👩‍👧‍👦 family', '🏳️‍🌈 flag', '👍🏽 skin tone', '🥰🫠 newer emoji', 'emoji at end 😀', '😀😀😀',
  'ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ １２３', 'ﾊﾝｶｸｶﾀｶﾅ ｶﾞ halfwidth', 'Ａ\u3000Ｂ ideographic space',
  'control\u0001\u0002chars\u007f', 'null\u0000char', 'zero\u200bwidth\u200djoiner', '\ufeffBOM start',
  'ﬁ ﬂ ligatures', 'İstanbul İ', 'ǅ Ǆ ǆ titlecase', 'ß straße STRASSE', 'ΣΑΣ σας ς',
  'x'.repeat(150), 'supercalifragilisticexpialidocious'.repeat(3), '!!!???...,,,;;', 'a-b--c---d',
  "don't can't I'm we'll they've she'd it's", "DON'T SHOUT'S", '123 4567 89.01 1,000,000 3.14159',
  'CJK 中文字符测试 日本語のテキスト 한국어', 'Mixed中文and English字', '\u00a0nbsp\u00a0', 'line\u2028sep',
  'tab\there', '[CLS] literal [SEP] tokens [MASK] <mask> <s> </s> <unk>', 'x <mask> y<mask>z  <mask>  ',
  '$%^&*()_+{}|:"<>?', 'http://example.com/path?q=1&r=2#frag', 'user@example.org', 'C++: int main() { return 0; }',
  'snake_case_identifier camelCaseIdentifier XMLHttpRequest', 'ALLCAPS SHOUTING', 'numbers١٢٣ ४५६ ৭৮৯',
  'Ⅻ ½ ² ³ ⁴ superscripts', '𝐁𝐨𝐥𝐝 𝔉𝔯𝔞𝔨𝔱𝔲𝔯', '\r\nwindows\r\nnewlines\r\n', 'soft\u00adhyphen',
  '‐‑‒–—― dashes', '«guillemets» „quotes“ “smart” ‘single’', 'مَرْحَبًا بالعالم', 'हिन्दी देवनागरी',
  'ภาษาไทย ไม่มีช่องว่าง', '  leading and trailing  ', 'trailing space ', '    \t  ', 'a\u0300\u0301\u0302\u0303',
  '\u0301 leading mark', '\ud83d\ude00\u0301 emoji with mark', 'ā ē ī ō ū', 'Œuvre œuvre Æ æ', 'ǰ ẖ ẘ ẙ',
  'mañana MAÑANA', 'Ελληνικά κείμενο', 'Кириллица ТЕКСТ', 'hello world hello world hello world',
  'The quick brown fox jumps over the lazy dog.', 'end.', '...', '---', '___', '   x   ', 'a\tb\nc\rd\ve\ff',
];

function buildCorpus() {
  const lines = [...EDGE_CASES];
  for (const lang of LANGS) lines.push(...languageLines(lang, 30));
  lines.push(...languageLines('en@quot', 60));
  lines.push(...licenceLines(200));
  const entries = lines.map((text) => ({ text }));
  for (const e of entries) if (rand() < 0.25) e.pair = pick(lines);
  return entries;
}

function trainingText() {
  const lines = [];
  for (const lang of LANGS) lines.push(...languageLines(lang, 120));
  lines.push(...licenceLines(700));
  return lines.join('\n');
}

// ---- vocabularies ----------------------------------------------------------------------------
function saved(tokenizer) {
  const file = path.join(WORK, 'tmp.json');
  tokenizer.save(file, false);
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

// Trains a BPE with the given pre-tokenizer and keeps the alphabet plus its first `keep` merges.
function trainBpe(preTokenizer, trainFile, keep) {
  const t = new tk.Tokenizer(tk.BPE.empty());
  t.setPreTokenizer(preTokenizer);
  t.train([trainFile]);
  const model = saved(t).model;
  const merges = model.merges.slice(0, keep).map((m) => (Array.isArray(m) ? m : m.split(' ')));
  const byId = Object.entries(model.vocab).sort((a, b) => a[1] - b[1]).map(([s]) => s);
  const alphabet = byId.filter((s) => [...s].length === 1);
  return { alphabet, merges };
}

function vocabFrom(tokens) {
  const vocab = {};
  for (const t of tokens) if (!(t in vocab)) vocab[t] = Object.keys(vocab).length;
  return vocab;
}

function byteTokens() {
  const out = [];
  for (let b = 0; b < 256; b++) out.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  return out;
}

// ---- SentencePiece .model files -------------------------------------------------------------
// Fields of a protobuf message as {number: [value...]}: varints as BigInt, 32-bit fields as
// floats, length-delimited ones as Buffers.
function protoFields(buf) {
  const fields = {};
  let pos = 0;
  const varint = () => {
    let v = 0n;
    for (let shift = 0n; ; shift += 7n) {
      const b = buf[pos++];
      v |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
  };
  while (pos < buf.length) {
    const key = Number(varint());
    let value;
    if ((key & 7) === 0) value = varint();
    else if ((key & 7) === 5) { value = buf.readFloatLE(pos); pos += 4; }
    else if ((key & 7) === 1) { pos += 8; continue; }
    else if ((key & 7) === 2) { const n = Number(varint()); value = buf.subarray(pos, pos + n); pos += n; }
    else throw new Error(`unsupported wire type ${key & 7}`);
    (fields[key >> 3] = fields[key >> 3] || []).push(value);
  }
  return fields;
}

// Trains a Unigram .model with nmt_nfkc normalisation and returns its pieces and charsmap.
function trainSentencePiece(trainFile, vocabSize) {
  const prefix = path.join(WORK, 'spm');
  childProcess.execFileSync('spm_train', [`--input=${trainFile}`, `--model_prefix=${prefix}`, `--vocab_size=${vocabSize}`,
    '--model_type=unigram', '--character_coverage=0.995', '--hard_vocab_limit=false', '--num_threads=1', '--minloglevel=2'], { stdio: 'ignore' });
  const model = protoFields(fs.readFileSync(`${prefix}.model`));
  const pieces = model[1].map((p) => {
    const f = protoFields(p);
    return { piece: f[1][0].toString('utf8'), score: f[2] ? f[2][0] : 0, type: f[3] ? Number(f[3][0]) : 1 };
  });
  const trainer = protoFields(model[2][0]);
  const normalizer = protoFields(model[3][0]);
  return { pieces, unkId: trainer[40] ? Number(trainer[40][0]) : 0, charsmap: normalizer[2][0] };
}

// ---- tokenizer definitions -------------------------------------------------------------------
const GPT4_REGEX = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

function special(id, content, extra = {}) {
  return Object.assign({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }, extra);
}

function template(single, pair, tokens) {
  const piece = (s) => {
    const [name, type] = s.split(':');
    const type_id = Number(type || 0);
    if (name === '$A' || name === '$B') return { Sequence: { id: name.slice(1), type_id } };
    return { SpecialToken: { id: name, type_id } };
  };
  const special_tokens = {};
  for (const [name, id] of tokens) special_tokens[name] = { id: name, ids: [id], tokens: [name] };
  return { type: 'TemplateProcessing', single: single.split(' ').map(piece), pair: pair.split(' ').map(piece), special_tokens };
}

function tokenizerJson(parts) {
  return Object.assign({ version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
    pre_tokenizer: null, post_processor: null, decoder: null }, parts);
}

function wordPieceVocab(metaspaceBpe, normalize) {
  const tokens = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'];
  for (const c of metaspaceBpe.alphabet) if (c !== '▁') tokens.push(normalize(c), '##' + normalize(c));
  for (const [a, b] of metaspaceBpe.merges) {
    const merged = a + b;
    if (merged.startsWith('▁')) tokens.push(normalize(merged.slice(1)));
    else tokens.push('##' + normalize(merged));
  }
  return vocabFrom(tokens.filter((t) => t.length > 0 && t !== '##'));
}

function bertJson(vocab, lowercase) {
  return tokenizerJson({
    added_tokens: ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'].map((t) => special(vocab[t], t)),
    normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase },
    pre_tokenizer: { type: 'BertPreTokenizer' },
    post_processor: template('[CLS] $A [SEP]', '[CLS] $A [SEP] $B:1 [SEP]:1', [['[CLS]', vocab['[CLS]']], ['[SEP]', vocab['[SEP]']]]),
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab },
  });
}

function byteLevelVocab(bpe, head, tail) {
  return vocabFrom([...head, ...tk.byteLevelAlphabet().sort(), ...bpe.merges.map(([a, b]) => a + b), ...tail]);
}

function bpeModel(vocab, merges, extra = {}) {
  return Object.assign({ type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null,
    end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges }, extra);
}

function unigramVocab(metaspaceBpe, head) {
  const pieces = [];
  const seen = new Set(head);
  const add = (s, score) => { if (!seen.has(s)) { seen.add(s); pieces.push([s, score]); } };
  metaspaceBpe.merges.forEach(([a, b], i) => add(a + b, -2 - Math.log(i + 2) - 0.05 * [...(a + b)].length));
  metaspaceBpe.alphabet.forEach((c, i) => add(c, -11 - 0.001 * i));
  return [...head.map((h) => [h, 0.0]), ...pieces];
}

// What transformers' SpmConverter (T5-style) builds from a Unigram .model.
function spmConverterJson(spm) {
  const eos = spm.pieces.findIndex((p) => p.piece === '</s>');
  return tokenizerJson({
    added_tokens: spm.pieces.map((p, id) => [p, id]).filter(([p]) => p.type === 3).map(([p, id]) => special(id, p.piece)),
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Precompiled', precompiled_charsmap: Buffer.from(spm.charsmap).toString('base64') },
      { type: 'Strip', strip_left: false, strip_right: true }, { type: 'Replace', pattern: { Regex: ' {2,}' }, content: '▁' }] },
    pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true },
    post_processor: template('$A </s>', '$A </s> $B:1 </s>:1', [['</s>', eos]]),
    decoder: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true },
    model: { type: 'Unigram', unk_id: spm.unkId, vocab: spm.pieces.map((p) => [p.piece, p.score]), byte_fallback: false },
  });
}

function definitions(byteBpe, metaBpe, spm) {
  const defs = {};
  const bertNormalizer = tk.bertNormalizer({});
  const uncased = wordPieceVocab(metaBpe, (s) => bertNormalizer.normalizeString(s).trim());
  const cased = wordPieceVocab(metaBpe, (s) => s);
  defs.bert_uncased = bertJson(uncased, true);
  defs.bert_cased = Object.assign(bertJson(cased, false), {
    truncation: { direction: 'Right', max_length: 48, strategy: 'LongestFirst', stride: 0 },
    padding: { strategy: { Fixed: 56 }, direction: 'Right', pad_to_multiple_of: null, pad_id: 0, pad_type_id: 0, pad_token: '[PAD]' },
  });
  defs.bert_cased.added_tokens.push(
    { id: Object.keys(cased).length, content: '<mask>', single_word: true, lstrip: true, rstrip: true, normalized: false, special: false },
    { id: Object.keys(cased).length + 1, content: 'hello world', single_word: false, lstrip: false, rstrip: false, normalized: true, special: false });

  const roberta = byteLevelVocab(byteBpe, ['<s>', '<pad>', '</s>', '<unk>'], ['<mask>']);
  defs.roberta = tokenizerJson({
    added_tokens: ['<s>', '<pad>', '</s>', '<unk>'].map((t) => special(roberta[t], t))
      .concat([special(roberta['<mask>'], '<mask>', { lstrip: true })]),
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'RobertaProcessing', sep: ['</s>', 2], cls: ['<s>', 0], trim_offsets: true, add_prefix_space: false },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: bpeModel(roberta, byteBpe.merges, { continuing_subword_prefix: '', end_of_word_suffix: '' }),
  });

  const gpt2 = byteLevelVocab(byteBpe, [], ['<|endoftext|>']);
  defs.gpt2 = tokenizerJson({
    added_tokens: [special(gpt2['<|endoftext|>'], '<|endoftext|>')],
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: bpeModel(gpt2, byteBpe.merges),
  });

  const llama3 = byteLevelVocab(byteBpe, [], ['<|begin_of_text|>', '<|end_of_text|>']);
  defs.llama3_bpe = tokenizerJson({
    added_tokens: ['<|begin_of_text|>', '<|end_of_text|>'].map((t) => special(llama3[t], t)),
    pre_tokenizer: { type: 'Sequence', pretokenizers: [
      { type: 'Split', pattern: { Regex: GPT4_REGEX }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false }] },
    post_processor: { type: 'Sequence', processors: [
      { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
      template('<|begin_of_text|> $A', '<|begin_of_text|> $A:0 <|begin_of_text|>:1 $B:1', [['<|begin_of_text|>', llama3['<|begin_of_text|>']]])] },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: bpeModel(llama3, byteBpe.merges, { ignore_merges: true }),
  });

  const llama = vocabFrom(['<unk>', '<s>', '</s>', ...byteTokens(), ...metaBpe.alphabet, ...metaBpe.merges.map(([a, b]) => a + b)]);
  defs.llama_bpe = tokenizerJson({
    added_tokens: ['<unk>', '<s>', '</s>'].map((t) => special(llama[t], t)),
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
    post_processor: template('<s> $A', '<s> $A <s>:1 $B:1', [['<s>', 1]]),
    decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
    model: bpeModel(llama, metaBpe.merges, { unk_token: '<unk>', fuse_unk: true, byte_fallback: true }),
  });

  const t5 = unigramVocab(metaBpe, ['<pad>', '</s>', '<unk>']);
  defs.t5_unigram = tokenizerJson({
    added_tokens: ['<pad>', '</s>', '<unk>'].map((t, i) => special(i, t)),
    normalizer: { type: 'Sequence', normalizers: [{ type: 'NFKC' }, { type: 'Replace', pattern: { Regex: ' {2,}' }, content: ' ' }] },
    pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'WhitespaceSplit' }, { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true }] },
    post_processor: template('$A </s>', '$A </s> $B:1 </s>:1', [['</s>', 1]]),
    decoder: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true },
    model: { type: 'Unigram', unk_id: 2, vocab: t5, byte_fallback: false },
  });

  const unigramBf = unigramVocab(metaBpe, ['<unk>', '<s>', '</s>', ...byteTokens()]);
  defs.unigram_byte_fallback = tokenizerJson({
    added_tokens: ['<unk>', '<s>', '</s>'].map((t, i) => special(i, t)),
    normalizer: { type: 'Sequence', normalizers: [{ type: 'NFC' }, { type: 'Strip', strip_left: false, strip_right: true }] },
    pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
    post_processor: template('<s> $A </s>', '<s> $A </s> $B:1 </s>:1', [['<s>', 1], ['</s>', 2]]),
    decoder: { type: 'Sequence', decoders: [{ type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false }, { type: 'ByteFallback' }, { type: 'Fuse' }] },
    model: { type: 'Unigram', unk_id: 0, vocab: unigramBf.filter(([s]) => [...s].length > 1 || s === '▁' || /[\p{Script=Latin}\p{N}\p{P}]/u.test(s)), byte_fallback: true },
  });

  defs.misc_a = tokenizerJson({
    added_tokens: ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'].map((t) => special(cased[t], t)),
    normalizer: { type: 'Sequence', normalizers: [{ type: 'NFKC' }, { type: 'Lowercase' }, { type: 'Strip', strip_left: true, strip_right: true }, { type: 'Replace', pattern: { Regex: '\\d{3,}' }, content: '#' }] },
    pre_tokenizer: { type: 'Sequence', pretokenizers: [
      { type: 'Split', pattern: { Regex: '\\s+' }, behavior: 'Removed', invert: false },
      { type: 'Punctuation', behavior: 'MergedWithPrevious' }, { type: 'Digits', individual_digits: true }] },
    post_processor: template('$A [SEP]', '$A [SEP] $B:1 [SEP]:1', [['[SEP]', cased['[SEP]']]]),
    decoder: { type: 'WordPiece', prefix: '##', cleanup: false },
    model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 20, vocab: cased },
  });

  defs.misc_b = tokenizerJson({
    added_tokens: ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'].map((t) => special(uncased[t], t)),
    normalizer: { type: 'Sequence', normalizers: [{ type: 'NFD' }, { type: 'StripAccents' }, { type: 'NFC' }, { type: 'Lowercase' }, { type: 'Replace', pattern: { String: '``' }, content: '"' }] },
    pre_tokenizer: { type: 'Sequence', pretokenizers: [
      { type: 'WhitespaceSplit' }, { type: 'Split', pattern: { String: '-' }, behavior: 'MergedWithNext', invert: false },
      { type: 'Punctuation', behavior: 'Contiguous' }, { type: 'Split', pattern: { Regex: '\\p{N}+' }, behavior: 'Isolated', invert: false },
      { type: 'Digits', individual_digits: false }] },
    post_processor: { type: 'BertProcessing', sep: ['[SEP]', uncased['[SEP]']], cls: ['[CLS]', uncased['[CLS]']] },
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab: uncased },
  });

  defs.misc_c = tokenizerJson({
    added_tokens: [special(llama['<unk>'], '<unk>')],
    normalizer: { type: 'Sequence', normalizers: [{ type: 'NFKD' }, { type: 'Prepend', prepend: '>' }, { type: 'Strip', strip_left: true, strip_right: false }] },
    pre_tokenizer: { type: 'Sequence', pretokenizers: [
      { type: 'Whitespace' }, { type: 'Split', pattern: { Regex: '\\p{Lu}' }, behavior: 'MergedWithNext', invert: false },
      { type: 'Split', pattern: { Regex: '\\p{P}' }, behavior: 'Contiguous', invert: true },
      { type: 'Split', pattern: { String: 'e' }, behavior: 'MergedWithPrevious', invert: true }] },
    decoder: { type: 'BPEDecoder', suffix: '</w>' },
    model: bpeModel(llama, metaBpe.merges, { unk_token: '<unk>' }),
  });

  defs.spm_precompiled = spmConverterJson(spm);
  return defs;
}

// ---- encoding variants -----------------------------------------------------------------------
const VARIANTS = {
  default: { entries: 'all', add_special_tokens: true, keep_config: true },
  plain: { entries: 'first300', add_special_tokens: false, truncation: null, padding: null },
  longest_first: { entries: 'pairs', add_special_tokens: true,
    truncation: { max_length: 24, strategy: 'LongestFirst', stride: 0, direction: 'Right' },
    padding: { strategy: 'BatchLongest', direction: 'Right', pad_to_multiple_of: 8, pad_id: 0, pad_type_id: 0, pad_token: '[PAD]' } },
  only_second_left: { entries: 'pairs', add_special_tokens: true,
    truncation: { max_length: 20, strategy: 'OnlySecond', stride: 0, direction: 'Left' },
    padding: { strategy: { Fixed: 40 }, direction: 'Left', pad_to_multiple_of: null, pad_id: 3, pad_type_id: 1, pad_token: '<p>' } },
  only_first_stride: { entries: 'first300', add_special_tokens: true, single: true,
    truncation: { max_length: 12, strategy: 'OnlyFirst', stride: 3, direction: 'Right' }, padding: null },
  batch: { entries: 'first300', add_special_tokens: true, single: true, batch_size: 8, truncation: null,
    padding: { strategy: 'BatchLongest', direction: 'Right', pad_to_multiple_of: 4, pad_id: 1, pad_type_id: 0, pad_token: '<pad>' } },
};

function applyConfig(t, variant) {
  if (variant.keep_config) return;
  const trunc = variant.truncation;
  if (trunc) {
    t.setTruncation(trunc.max_length, { strategy: trunc.strategy, stride: trunc.stride, direction: trunc.direction.toLowerCase() });
  } else {
    t.disableTruncation();
  }
  const pad = variant.padding;
  if (pad) {
    const options = { direction: pad.direction.toLowerCase(), padId: pad.pad_id, padTypeId: pad.pad_type_id, padToken: pad.pad_token };
    if (pad.strategy.Fixed) options.maxLength = pad.strategy.Fixed;
    if (pad.pad_to_multiple_of) options.padToMultipleOf = pad.pad_to_multiple_of;
    t.setPadding(options);
  } else {
    t.disablePadding();
  }
}

// Token strings are recorded for the default variant only, to keep the goldens small.
function record(index, encoding, decoded) {
  const r = { i: index, ids: encoding.getIds(), offsets: encoding.getOffsets(),
    type_ids: encoding.getTypeIds(), special: encoding.getSpecialTokensMask(), mask: encoding.getAttentionMask() };
  const overflow = encoding.getOverflowing();
  if (overflow.length > 0) r.overflow = overflow.map((o) => o.getIds());
  if (decoded !== undefined) {
    r.tokens = encoding.getTokens();
    r.decoded = decoded;
  }
  return r;
}

function selectEntries(corpus, which) {
  const indexed = corpus.map((e, i) => [i, e]);
  if (which === 'first300') return indexed.slice(0, 300);
  if (which === 'pairs') return indexed.filter(([, e]) => e.pair !== undefined);
  return indexed;
}

async function encodeVariant(t, corpus, name, variant) {
  applyConfig(t, variant);
  const entries = selectEntries(corpus, variant.entries);
  const out = [];
  const options = { addSpecialTokens: variant.add_special_tokens };
  if (variant.batch_size) {
    for (let start = 0; start < entries.length; start += variant.batch_size) {
      const chunk = entries.slice(start, start + variant.batch_size);
      const inputs = chunk.map(([, e]) => e.text);
      const encodings = await t.encodeBatch(inputs, options);
      encodings.forEach((enc, k) => out.push(Object.assign({ v: name }, record(chunk[k][0], enc))));
    }
    return out;
  }
  for (const [i, e] of entries) {
    const pair = variant.single ? null : (e.pair !== undefined ? e.pair : null);
    try {
      const enc = await t.encode(e.text, pair, options);
      const decoded = name === 'default' ? await t.decode(enc.getIds(), true) : undefined;
      out.push(Object.assign({ v: name }, record(i, enc, decoded)));
    } catch (err) {
      out.push({ v: name, i, error: String(err.message || err) });
    }
  }
  return out;
}

// ---- legacy files ----------------------------------------------------------------------------
function writeLegacy(dir, name, json) {
  const model = json.model;
  if (name === 'bert_uncased' || name === 'bert_cased') {
    const tokens = Object.entries(model.vocab).sort((a, b) => a[1] - b[1]).map(([s]) => s);
    fs.writeFileSync(path.join(dir, 'vocab.txt'), tokens.join('\n') + '\n');
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({
      tokenizer_class: 'BertTokenizer', do_lower_case: name === 'bert_uncased', tokenize_chinese_chars: true,
      strip_accents: null, model_max_length: 512 }, null, 1));
    fs.writeFileSync(path.join(dir, 'special_tokens_map.json'), JSON.stringify({
      unk_token: '[UNK]', sep_token: '[SEP]', pad_token: '[PAD]', cls_token: '[CLS]', mask_token: '[MASK]' }, null, 1));
  } else if (name === 'roberta' || name === 'gpt2') {
    fs.writeFileSync(path.join(dir, 'vocab.json'), JSON.stringify(model.vocab));
    fs.writeFileSync(path.join(dir, 'merges.txt'), '#version: 0.2\n' + model.merges.map((m) => (Array.isArray(m) ? m.join(' ') : m)).join('\n') + '\n');
    const config = name === 'roberta'
      ? { tokenizer_class: 'RobertaTokenizer', add_prefix_space: false, trim_offsets: true, errors: 'replace',
        bos_token: '<s>', eos_token: '</s>', sep_token: '</s>', cls_token: '<s>', unk_token: '<unk>', pad_token: '<pad>',
        mask_token: { content: '<mask>', lstrip: true, rstrip: false, single_word: false, normalized: false } }
      : { tokenizer_class: 'GPT2Tokenizer', add_prefix_space: false, bos_token: '<|endoftext|>', eos_token: '<|endoftext|>',
        unk_token: '<|endoftext|>' };
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(config, null, 1));
  }
}

// ---- main ------------------------------------------------------------------------------------
async function main() {
  const corpus = buildCorpus();
  const trainFile = path.join(WORK, 'train.txt');
  fs.writeFileSync(trainFile, trainingText());
  const byteBpe = trainBpe(tk.byteLevelPreTokenizer(false, true), trainFile, 3000);
  const metaBpe = trainBpe(tk.metaspacePreTokenizer('▁', 'always', true), trainFile, 3000);

  fs.mkdirSync(OUT, { recursive: true });
  fs.writeFileSync(path.join(OUT, 'corpus.jsonl'), corpus.map((e) => JSON.stringify(e)).join('\n') + '\n');
  fs.writeFileSync(path.join(OUT, 'variants.json'), JSON.stringify(VARIANTS, null, 1) + '\n');

  const spm = trainSentencePiece(trainFile, 4000);

  const only = process.argv.slice(3);
  const defs = definitions(byteBpe, metaBpe, spm);
  for (const [name, json] of Object.entries(defs)) {
    if (only.length > 0 && !only.includes(name)) continue;
    const dir = path.join(OUT, name);
    fs.mkdirSync(dir, { recursive: true });
    const t = tk.Tokenizer.fromString(JSON.stringify(json));
    t.save(path.join(dir, 'tokenizer.json'), false);
    writeLegacy(dir, name, json);
    const lines = [];
    for (const [variantName, variant] of Object.entries(VARIANTS)) {
      const fresh = tk.Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
      lines.push(...await encodeVariant(fresh, corpus, variantName, variant));
    }
    fs.writeFileSync(path.join(OUT, `${name}.golden.jsonl.gz`), zlib.gzipSync(lines.map((l) => JSON.stringify(l)).join('\n') + '\n', { level: 9 }));
    console.log(`${name}: ${lines.length} encodings`);
  }
  fs.rmSync(WORK, { recursive: true, force: true });
}

main().catch((e) => { console.error(e); process.exit(1); });
