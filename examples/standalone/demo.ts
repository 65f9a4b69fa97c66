/**
 * `npm start`: three demo instances (version v1), a fourth (demo-v2, version v2: the canary of
 * README's walkthrough) and a gateway in front of them, from meshgate.yaml.
 * Ports: PORT (gateway, 8080), ADMIN_PORT (9901), DEMO_PORT_A/B/C (3101-3103), DEMO_PORT_V2 (3104).
 * DEMO_REDIS=redis://... makes the gateway follow a fleet config in that Redis (`meshgate shift`).
 */
import { fileURLToPath } from 'node:url';
import { createGateway, readConfigFile } from '../../lib/index.js';
import { startDemoInstance } from './instances.js';

const env = process.env;
const ports = { a: Number(env.DEMO_PORT_A ?? 3101), b: Number(env.DEMO_PORT_B ?? 3102), c: Number(env.DEMO_PORT_C ?? 3103), v2: Number(env.DEMO_PORT_V2 ?? 3104) };
const instances = await Promise.all(Object.entries(ports).map(([name, port]) => startDemoInstance(`demo-${name}`, port)));

const { document, baseDir, source } = await readConfigFile(fileURLToPath(new URL('./meshgate.yaml', import.meta.url)));
// With a Redis, the demo gateway is one gateway of a fleet: `meshgate apply` and `shift` change it live.
const config = env.DEMO_REDIS ? { ...(document as object), discovery: { redis: { url: env.DEMO_REDIS, configCache: false } } } : document;
const gateway = createGateway(config as Parameters<typeof createGateway>[0], { baseDir, source });
const { url, adminUrl } = await gateway.listen();

process.stdout.write(`
meshgate demo is running: a gateway on ${url} in front of three instances (demo-c has weight 2),
and a canary (demo-v2) behind /shop: see "Canary release" in README.

  curl ${url}/demo/hello          # which instance answered: run it a few times
  curl -i ${url}/demo/hello       # Server-Timing shows gateway and upstream time
  curl ${url}/nowhere             # 404 {"error":"MESH_ERR_NO_ROUTE",...}
  curl ${adminUrl}/healthz
  curl ${adminUrl}/readyz

Ctrl-C stops it.
`);

const stop = async (): Promise<void> => {
  await gateway.close();
  for (const server of instances) server.close();
  process.exit(0);
};
process.once('SIGINT', stop);
process.once('SIGTERM', stop);
