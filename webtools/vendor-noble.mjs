// Copies the parts of @noble/curves, @noble/ciphers and @noble/hashes that the web viewer uses
// from node_modules/ (installed by `npm ci` from package-lock.json) into
// petcamd/viewer/web/vendor/, as the plain ES modules they are published as, and records each
// package's version and integrity and each file's SHA-256 in vendor/VERSIONS.
//
// Run it through ./vendor-noble, which does the `npm ci` first. The browser loads the copied files
// directly: no bundler, no CDN. Only one change is made to them: an import of another noble
// package by name ('@noble/hashes/sha2.js') becomes a relative path
// ('../noble-hashes/sha2.js'), because a browser cannot resolve package names without an import
// map. VERSIONS lists the published SHA-256 of every file changed that way.
//
//   node vendor-noble.mjs           rewrite vendor/
//   node vendor-noble.mjs --check   exit 1 if vendor/ is not what this script would write

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const MODULES = path.join(HERE, 'node_modules');
const VENDOR = path.resolve(HERE, '..', 'petcamd', 'viewer', 'web', 'vendor');

const PACKAGES = ['@noble/ciphers', '@noble/curves', '@noble/hashes'];
// What petcamd/viewer/web/js/ imports; everything these import is copied with them.
const ENTRY_POINTS = [
  '@noble/curves/ed25519.js', // x25519
  '@noble/ciphers/aes.js', // gcm
  '@noble/hashes/sha2.js', // sha256
  '@noble/hashes/hmac.js', // hmac
  '@noble/hashes/hkdf.js', // extract, expand
];

// Static import and re-export statements. tsc writes them at the start of a line; the same text
// indented inside a doc comment (" * import { x } from '...'") is an example, not an import.
const IMPORT = /^(?:import|export)\b[^;'"]*?\bfrom\s*(['"])([^'"\n]+)\1|^import\s*(['"])([^'"\n]+)\3/gm;

function fail(message) {
  console.error(`vendor-noble: ${message}`);
  process.exit(1);
}

const sha256 = (data) => createHash('sha256').update(data).digest('hex');

/** "@noble/hashes" -> "noble-hashes": the package's directory inside vendor/. */
const vendorDir = (pkg) => pkg.replace('@noble/', 'noble-');

function readLock() {
  const lock = JSON.parse(fs.readFileSync(path.join(HERE, 'package-lock.json'), 'utf8'));
  const pinned = {};
  for (const pkg of PACKAGES) {
    const entry = lock.packages?.[`node_modules/${pkg}`];
    if (!entry?.version || !entry.integrity) fail(`${pkg} is not in package-lock.json`);
    const installed = JSON.parse(fs.readFileSync(path.join(MODULES, pkg, 'package.json'), 'utf8'));
    if (installed.version !== entry.version) {
      fail(`node_modules has ${pkg} ${installed.version}, the lock file ${entry.version}: run ./vendor-noble`);
    }
    pinned[pkg] = { version: entry.version, integrity: entry.integrity, manifest: installed };
  }
  return pinned;
}

/** Splits "@noble/hashes/sha2.js" into its package and the file it names (via "exports"). */
function resolvePackageSpecifier(specifier, pinned) {
  const pkg = PACKAGES.find((name) => specifier === name || specifier.startsWith(`${name}/`));
  if (!pkg) fail(`import of a package that is not vendored: ${specifier}`);
  const subpath = `.${specifier.slice(pkg.length)}`;
  const target = pinned[pkg].manifest.exports?.[subpath];
  if (typeof target !== 'string') fail(`${pkg} does not export ${subpath} as a plain file`);
  return { pkg, file: path.posix.normalize(target) };
}

/** Every file the entry points need, as {pkg, file} with file relative to the package root. */
function importClosure(pinned) {
  const seen = new Map();
  const queue = ENTRY_POINTS.map((specifier) => resolvePackageSpecifier(specifier, pinned));
  while (queue.length > 0) {
    const item = queue.shift();
    const key = `${item.pkg}/${item.file}`;
    if (seen.has(key)) continue;
    const source = fs.readFileSync(path.join(MODULES, item.pkg, item.file), 'utf8');
    if (/\bimport\s*\(/.test(source.replace(/^\s*(\/\/|\*).*$/gm, ''))) {
      fail(`${key} uses a dynamic import(): check it by hand before vendoring`);
    }
    const imports = [];
    for (const match of source.matchAll(IMPORT)) {
      const specifier = match[2] ?? match[4];
      const target = specifier.startsWith('.')
        ? { pkg: item.pkg, file: path.posix.join(path.posix.dirname(item.file), specifier) }
        : resolvePackageSpecifier(specifier, pinned);
      imports.push({ specifier, target });
      queue.push(target);
    }
    seen.set(key, { ...item, source, imports });
  }
  return [...seen.values()];
}

/** The file as published, with imports of other packages turned into relative paths. */
function vendoredSource(item) {
  let source = item.source;
  for (const { specifier, target } of item.imports) {
    if (specifier.startsWith('.')) continue;
    const from = path.posix.dirname(path.posix.join(vendorDir(item.pkg), item.file));
    let relative = path.posix.relative(from, path.posix.join(vendorDir(target.pkg), target.file));
    if (!relative.startsWith('.')) relative = `./${relative}`;
    // Replace the quoted specifier only where it appears as an import at the start of a line.
    const statement = new RegExp(
      `^((?:import|export)\\b[^;'"]*?\\bfrom\\s*|import\\s*)(['"])${escapeRegExp(specifier)}\\2`,
      'gm',
    );
    source = source.replace(statement, (_all, head, quote) => `${head}${quote}${relative}${quote}`);
  }
  return source;
}

const escapeRegExp = (text) => text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

/** Writes the vendored tree into `outDir`; returns nothing, fails loudly on anything odd. */
function writeVendor(outDir, pinned) {
  const files = new Map(); // path inside vendor/ -> {data, upstream (sha256 if rewritten)}
  for (const item of importClosure(pinned)) {
    const data = vendoredSource(item);
    const rel = path.posix.join(vendorDir(item.pkg), item.file);
    files.set(rel, { data, upstream: data === item.source ? null : sha256(item.source) });
  }
  for (const pkg of PACKAGES) {
    const license = fs.readFileSync(path.join(MODULES, pkg, 'LICENSE'), 'utf8');
    files.set(path.posix.join(vendorDir(pkg), 'LICENSE'), { data: license, upstream: null });
  }
  const names = [...files.keys()].sort();
  const lines = [
    '# Files of the @noble packages that the web viewer loads, copied as published by',
    '# webtools/vendor-noble from the versions pinned in webtools/package-lock.json.',
    '# Do not edit: run webtools/vendor-noble. tests/test_web_crypto.py checks every hash below.',
    '#',
    '# package <name> <version> <npm integrity of the published tarball>',
    ...PACKAGES.map((pkg) => `package ${pkg} ${pinned[pkg].version} ${pinned[pkg].integrity}`),
    '#',
    '# <sha256 of the file in vendor/>  <path in vendor/>',
    ...names.map((name) => `${sha256(files.get(name).data)}  ${name}`),
    '#',
    '# Files whose imports of another noble package were made relative; the SHA-256 of the',
    '# file as published:',
    '# upstream <sha256 as published>  <path in vendor/>',
    ...names.filter((n) => files.get(n).upstream).map((n) => `upstream ${files.get(n).upstream}  ${n}`),
    '',
  ];
  for (const name of names) {
    fs.mkdirSync(path.join(outDir, path.dirname(name)), { recursive: true });
    fs.writeFileSync(path.join(outDir, name), files.get(name).data);
  }
  fs.writeFileSync(path.join(outDir, 'VERSIONS'), lines.join('\n'));
}

function listTree(dir) {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => path.relative(dir, path.join(entry.parentPath ?? entry.path, entry.name)))
    .sort();
}

function main(args) {
  const check = args.includes('--check');
  if (args.some((arg) => arg !== '--check')) fail('usage: node vendor-noble.mjs [--check]');
  const pinned = readLock();
  const outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vendor-noble-'));
  try {
    writeVendor(outDir, pinned);
    const wanted = listTree(outDir);
    if (check) {
      const present = listTree(VENDOR);
      const differ = [...new Set([...wanted, ...present])].filter(
        (name) =>
          !wanted.includes(name) ||
          !present.includes(name) ||
          !fs.readFileSync(path.join(outDir, name)).equals(fs.readFileSync(path.join(VENDOR, name))),
      );
      if (differ.length > 0) fail(`vendor/ is out of date (${differ.join(', ')}): run webtools/vendor-noble`);
      console.log(`vendor-noble: vendor/ matches the lock file (${wanted.length} files)`);
      return;
    }
    fs.rmSync(VENDOR, { recursive: true, force: true });
    fs.cpSync(outDir, VENDOR, { recursive: true });
    const versions = PACKAGES.map((pkg) => `${pkg}@${pinned[pkg].version}`).join(', ');
    console.log(`vendor-noble: wrote ${wanted.length} files to ${path.relative(process.cwd(), VENDOR)} (${versions})`);
  } finally {
    fs.rmSync(outDir, { recursive: true, force: true });
  }
}

main(process.argv.slice(2));
