// Starts `next start` on a free loopback port and prints one listen line, as
// the benchmark expects of every server it measures; ends it on SIGTERM.
import { spawn } from 'node:child_process';
import net from 'node:net';

const port = await new Promise((resolve) => {
  const probe = net.createServer().listen(0, '127.0.0.1', () => {
    const { port: free } = probe.address();
    probe.close(() => resolve(free));
  });
});
const next = spawn(process.execPath, ['node_modules/next/dist/bin/next', 'start', '-p', String(port), '-H', '127.0.0.1'], {
  stdio: ['ignore', 'ignore', 'inherit'],
  env: { ...process.env, NEXT_TELEMETRY_DISABLED: '1', NODE_ENV: 'production' },
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => next.kill('SIGTERM'));
next.on('exit', (code) => process.exit(code ?? 0));
const base = `http://127.0.0.1:${port}`;
for (let i = 0; i < 600; i += 1) {
  try {
    const response = await fetch(`${base}/api/agent/stream?tokens=1&interval_ms=0`);
    await response.text();
    if (response.ok) break;
  } catch {
    // not up yet
  }
  await new Promise((resolve) => setTimeout(resolve, 100));
}
console.log(`compare-nextjs listening on ${base}`);
