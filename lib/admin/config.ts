import type Router from '@koa/router';
import type { Context } from 'koa';
import { canonicalJson, configVersion, fillLocalPart, redactSecrets, restoreRedacted } from '../config/fleet.js';
import { ConfigError, MeshError } from '../errors.js';
import type { AdminHost } from './host.js';
import { readJsonBody } from './body.js';

/** Largest config document `PUT /config` takes. */
export const CONFIG_BODY_LIMIT = 4 * 1024 * 1024;

/**
 * Where a fleet keeps its shared config (the redis-discovery plugin decorates the gateway with
 * one as `fleetConfig`): `PUT /config` on any gateway stores the new version there, and every
 * gateway of the fleet applies it.
 */
export interface FleetConfigStore {
  /** Stores a validated fleet document as the fleet's new version and tells every gateway; with `ifMatch`, only if the fleet's version is still that one (else 409). Resolves with its version. */
  publish(document: unknown, origin: string, ifMatch?: string): Promise<string>;
}

/** 400 for a config that does not validate: every bad path, in `fields` for programs. */
class InvalidConfigError extends MeshError {
  readonly fields: readonly { path: string; message: string }[];
  constructor(err: ConfigError) {
    super('MESH_ERR_CONFIG', 400, err.message);
    this.fields = err.issues;
  }
  override toJSON(): { error: string; message: string; fields: readonly { path: string; message: string }[] } {
    return { ...super.toJSON(), fields: this.fields };
  }
}

/** 409: the `If-Match` version is not the one running. */
class StaleVersionError extends MeshError {
  readonly version: string;
  constructor(expected: string, version: string) {
    super('MESH_ERR_CONFIG_CONFLICT', 409, `If-Match ${expected} is not the running version ${version}: read GET /config again`);
    this.version = version;
  }
  override toJSON(): { error: string; message: string; version: string } {
    return { ...super.toJSON(), version: this.version };
  }
}

/**
 * `GET /config`, `PUT /config`, `POST /config/validate`: the running config, replaced whole, or
 * checked without applying it. A document without `listen`, `admin`, `discovery` or `workers`
 * keeps the running ones (they are the gateway's own and need a restart to change).
 */
export function configRoutes(router: Router, gateway: AdminHost): void {
  router.get('/config', (ctx) => {
    const snapshot = gateway.snapshot;
    ctx.set('etag', `"${snapshot.version}"`);
    ctx.body = {
      version: snapshot.version,
      appliedAt: new Date(snapshot.appliedAt).toISOString(),
      ...(gateway.has('fleetConfig') ? { fleet: true } : {}),
      config: redactSecrets(gateway.document),
    };
  });

  const proposed = async (ctx: Context): Promise<Record<string, unknown>> => {
    const issues: { path: string; message: string }[] = [];
    const document = restoreRedacted(fillLocalPart(await readJsonBody(ctx, CONFIG_BODY_LIMIT), gateway.document), gateway.document, [], issues) as Record<string, unknown>;
    if (issues.length > 0) throw new InvalidConfigError(new ConfigError(issues));
    return document;
  };
  const invalid = (err: unknown): unknown => (err instanceof ConfigError ? new InvalidConfigError(err) : err);

  router.post('/config/validate', async (ctx) => {
    const document = await proposed(ctx);
    try {
      const snapshot = await gateway.checkReload(document);
      ctx.body = { valid: true, version: snapshot.version, warnings: snapshot.warnings() };
    } catch (err) {
      throw invalid(err);
    }
  });

  router.put('/config', async (ctx) => {
    const match = ctx.get('if-match').replace(/^W\//, '').replace(/^"|"$/g, '');
    const ifMatch = match === '' || match === '*' ? undefined : match;
    const running = gateway.snapshot.version;
    if (ifMatch !== undefined && ifMatch !== running) throw new StaleVersionError(ifMatch, running);
    const document = await proposed(ctx);
    try {
      if (gateway.has('fleetConfig')) {
        // Checked here before it is stored: a fleet never stores a version this gateway refuses.
        await gateway.checkReload(document, { origin: 'admin', report: true });
        await gateway.get<FleetConfigStore>('fleetConfig').publish(document, 'admin', ifMatch);
      }
      // The version is compared again in the reload queue: of two writes with one If-Match, one wins.
      // Already in force: in a fleet the follower may have applied it (it was checked above); else the same document.
      const applied = gateway.has('fleetConfig') ? gateway.snapshot.version === configVersion(document) : canonicalJson(document) === canonicalJson(gateway.document);
      const snapshot = applied ? gateway.snapshot : await gateway.reload(document, { origin: 'admin', ifMatch });
      ctx.set('etag', `"${snapshot.version}"`);
      ctx.body = { version: snapshot.version, previous: running, appliedAt: new Date(snapshot.appliedAt).toISOString() };
    } catch (err) {
      if (err instanceof MeshError && err.code === 'MESH_ERR_CONFIG_CONFLICT') throw new StaleVersionError(ifMatch ?? '', gateway.snapshot.version);
      throw invalid(err);
    }
  });
}
