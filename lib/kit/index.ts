/**
 * `meshgate/kit`: small building blocks the core and plugins share: token buckets (local, and the
 * Redis script), millisecond formatting, a seeded random source, the logger type.
 */
export { TokenBuckets, BucketKeeper, bucketResult, REDIS_TOKEN_BUCKET } from './token-bucket.js';
export type { BucketResult, SharedBuckets } from './token-bucket.js';
export { decimalMs } from './decimal.js';
export { seededRandom } from './random.js';
export { createLogger, defaultLogFormat } from './logger.js';
export type { Logger, LogFormat, LoggerOptions } from './logger.js';
export { globMatcher } from './glob.js';
export { cidrList, inList } from '../http/net.js';
