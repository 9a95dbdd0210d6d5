// Shared by the browser tests: the sluice binary, a cutting proxy, chromium.
import { spawn } from 'node:child_process';
import { after, before } from 'node:test';
import { chromium } from 'playwright-core';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const BINARY = process.env.SLUICE_BIN || path.join(root, 'target/release/sluice');

/** Why the browser tests cannot run here, or null. Under CI=true they must. */
export function missing() {
  if (!existsSync(CHROMIUM)) return `no chromium at ${CHROMIUM} (apt-get install chromium)`;
  if (!existsSync(BINARY)) return `no sluice binary at ${BINARY} (cargo build --release)`;
  return null;
}

/** Starts `sluice serve` on a free port; resolves to { base, stop }. */
export async function startSluice(args = []) {
  const child = spawn(BINARY, ['serve', '--bind', '127.0.0.1:0', ...args], {
    stdio: ['ignore', 'pipe', process.env.TEST_LOG ? 'inherit' : 'ignore'],
  });
  const base = await new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`sluice exited with ${code}`)));
    child.stdout.once('data', (data) => resolve(String(data).match(/http:\/\/[0-9.:]+/)[0]));
  });
  return {
    base,
    stop: () => new Promise((resolve) => { child.once('exit', resolve); child.kill('SIGTERM'); }),
  };
}

/**
 * A TCP proxy to `upstream` that lets the first request whose head contains
 * `match` through for `cutAfter` bytes of response, then drops the
 * connection mid-event, as a flaky network would. Everything else passes.
 */
export async function cuttingProxy(upstream, match, cutAfter) {
  const target = new URL(upstream);
  let cutDone = false;
  const server = net.createServer((client) => {
    const up = net.connect(Number(target.port), target.hostname);
    let cutting = false;
    let sent = 0;
    client.on('data', (data) => {
      if (!cutDone && String(data).includes(match)) {
        cutting = true;
        cutDone = true;
      }
      up.write(data);
    });
    up.on('data', (data) => {
      if (!cutting) return client.write(data);
      client.write(data.subarray(0, Math.max(0, cutAfter - sent)));
      sent += data.length;
      if (sent >= cutAfter) {
        client.destroy();
        up.destroy();
      }
    });
    up.on('end', () => client.end());
    client.on('error', () => up.destroy());
    up.on('error', () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { base: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}

export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
  // A container's /dev/shm may be 64 MB: Chromium then crashes pages.
  '--disable-dev-shm-usage',
];

/** The token texts of a whole SSE body, read without a browser. */
export function tokenText(body) {
  return body
    .split('\n')
    .filter((line) => line.startsWith('data: {"text"'))
    .map((line) => JSON.parse(line.slice(6)).text)
    .join('');
}

/**
 * A test file's sluice and browser, started before its tests and stopped
 * after. When either is missing the tests skip loudly, except under CI=true,
 * where that is a failure.
 */
export function useSluiceAndBrowser(label, { config } = {}) {
  const why = missing();
  if (why && process.env.CI === 'true') {
    throw new Error(`browser tests cannot run under CI=true: ${why}`);
  }
  if (why) console.error(`\n!!! SKIPPING ${label}: ${why} !!!\n`);
  const ctx = { skip: why ?? false, sluice: null, browser: null };
  before(async () => {
    if (why) return;
    const args = [];
    if (config) {
      const dir = path.join(root, 'target/e2e');
      mkdirSync(dir, { recursive: true });
      const file = path.join(dir, `${label.replace(/\W+/g, '-')}.toml`);
      writeFileSync(file, config);
      args.push('--config', file);
    }
    ctx.sluice = await startSluice(args);
    ctx.browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  });
  after(async () => {
    await ctx.browser?.close();
    await ctx.sluice?.stop();
  });
  return ctx;
}
