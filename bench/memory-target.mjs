// The process under test of bench/memory.ts, in plain JavaScript on the dist/ build: what
// `meshgate start` runs, without tsx's loader thread (a second V8 isolate) inflating RSS.
// argv: the gateway config as JSON. Prints its port; answers each IPC 'sample' with its memory
// after a full GC (it runs with --expose-gc).
import v8 from 'node:v8';
import { createGateway } from '../dist/lib/index.js';

const gateway = createGateway(JSON.parse(process.argv[2]));
await gateway.listen();
process.on('message', (message) => {
  if (message !== 'sample') return;
  globalThis.gc?.();
  const m = process.memoryUsage();
  const h = v8.getHeapStatistics();
  process.send({ rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external, malloced: h.malloced_memory });
});
const stop = () => void gateway.close().then(() => process.exit(0));
process.once('SIGTERM', stop);
process.once('disconnect', stop);
process.stdout.write(`${gateway.server.address().port}\n`);
