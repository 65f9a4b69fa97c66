/**
 * A tiny authoritative DNS server over UDP (node:dgram) for the DNS discovery tests. It answers
 * A, AAAA and SRV queries from a mutable table, with TTL 0 so no resolver caches an answer.
 * Messages are encoded by hand (RFC 1035 / RFC 2782): header, the question echoed, and answers
 * whose owner name is a pointer to the question (0xc00c).
 */
import { createSocket, type RemoteInfo } from 'node:dgram';
import { isIPv4, isIPv6 } from 'node:net';
import type { TestContext } from 'node:test';

/** One SRV record (RFC 2782). */
export interface SrvRecord {
  priority: number;
  weight: number;
  port: number;
  target: string;
}

/** What a name resolves to. A type without records answers NOERROR with no answers (NODATA). */
export interface DnsRecords {
  a?: string[];
  aaaa?: string[];
  srv?: SrvRecord[];
}

/**
 * How the server behaves: `answer` from the table (unknown names: NXDOMAIN), `servfail` to
 * every query, `drop` every query without an answer.
 */
export type DnsMode = 'answer' | 'servfail' | 'drop';

/** A server started by {@link startDnsServer}. */
export interface DnsServer {
  port: number;
  /** `127.0.0.1:PORT`, as `discovery.dns.servers` takes it. */
  address: string;
  /** Names (lower case, no trailing dot) and their records; change it at any time. */
  zone: Map<string, DnsRecords>;
  mode: DnsMode;
  /** Every query received, in order. */
  queries: { name: string; type: string }[];
  close(): Promise<void>;
}

const TYPE = { A: 1, AAAA: 28, SRV: 33 } as const;
const TYPE_NAMES: Record<number, string> = { 1: 'A', 28: 'AAAA', 33: 'SRV' };
const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4 } as const;

/** Starts the server on 127.0.0.1 (a free UDP port); closed after the test. */
export async function startDnsServer(t: TestContext, zone: Record<string, DnsRecords> = {}): Promise<DnsServer> {
  const socket = createSocket('udp4');
  const server: DnsServer = {
    port: 0,
    address: '',
    zone: new Map(Object.entries(zone).map(([name, records]) => [normalize(name), records])),
    mode: 'answer',
    queries: [],
    close: () => closing,
  };
  let closed = false;
  const closing = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  socket.on('message', (msg: Buffer, rinfo: RemoteInfo) => {
    const reply = answer(server, msg);
    if (reply && !closed) socket.send(reply, rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(0, '127.0.0.1', () => {
      socket.off('error', reject);
      resolve();
    });
  });
  server.port = socket.address().port;
  server.address = `127.0.0.1:${server.port}`;
  server.close = () => {
    if (!closed) {
      closed = true;
      socket.close();
    }
    return closing;
  };
  t.after(() => server.close());
  return server;
}

/** The reply to one query, or null to stay silent. */
function answer(server: DnsServer, msg: Buffer): Buffer | null {
  if (msg.length < 12) return null;
  const id = msg.readUInt16BE(0);
  const flags = msg.readUInt16BE(2);
  if (flags & 0x8000) return null; // a response, not a query
  const opcode = (flags >> 11) & 0xf;
  const rd = (flags >> 8) & 1;
  const qdcount = msg.readUInt16BE(4);
  const question = qdcount === 1 ? readQuestion(msg, 12) : null;
  const reply = (rcode: number, answers: Buffer[] = []): Buffer => {
    const header = Buffer.alloc(12);
    header.writeUInt16BE(id, 0);
    // QR, the query's opcode, AA, the query's RD, RA, rcode.
    header.writeUInt16BE(0x8000 | (opcode << 11) | 0x0400 | (rd << 8) | 0x0080 | rcode, 2);
    header.writeUInt16BE(question ? 1 : 0, 4);
    header.writeUInt16BE(answers.length, 6);
    return Buffer.concat([header, question ? msg.subarray(12, question.end) : Buffer.alloc(0), ...answers]);
  };
  if (!question) return reply(RCODE.FORMERR);
  server.queries.push({ name: question.name, type: TYPE_NAMES[question.type] ?? String(question.type) });
  if (server.mode === 'drop') return null;
  if (server.mode === 'servfail') return reply(RCODE.SERVFAIL);
  if (opcode !== 0) return reply(RCODE.NOTIMP);
  const records = server.zone.get(question.name);
  if (!records) return reply(RCODE.NXDOMAIN);
  const answers: Buffer[] = [];
  if (question.type === TYPE.A) for (const ip of records.a ?? []) answers.push(record(TYPE.A, ipv4(ip)));
  if (question.type === TYPE.AAAA) for (const ip of records.aaaa ?? []) answers.push(record(TYPE.AAAA, ipv6(ip)));
  if (question.type === TYPE.SRV) {
    for (const srv of records.srv ?? []) {
      const fixed = Buffer.alloc(6);
      fixed.writeUInt16BE(srv.priority, 0);
      fixed.writeUInt16BE(srv.weight, 2);
      fixed.writeUInt16BE(srv.port, 4);
      answers.push(record(TYPE.SRV, Buffer.concat([fixed, encodeName(srv.target)])));
    }
  }
  return reply(RCODE.NOERROR, answers);
}

/** A resource record owned by the question's name (pointer 0xc00c), class IN, TTL 0. */
function record(type: number, rdata: Buffer): Buffer {
  const head = Buffer.alloc(12);
  head.writeUInt16BE(0xc00c, 0);
  head.writeUInt16BE(type, 2);
  head.writeUInt16BE(1, 4);
  head.writeUInt32BE(0, 6);
  head.writeUInt16BE(rdata.length, 10);
  return Buffer.concat([head, rdata]);
}

function readQuestion(msg: Buffer, offset: number): { name: string; type: number; end: number } | null {
  const labels: string[] = [];
  let at = offset;
  while (at < msg.length) {
    const len = msg[at]!;
    if (len === 0) break;
    if (len & 0xc0) return null; // queries carry no compression
    labels.push(msg.toString('latin1', at + 1, at + 1 + len));
    at += 1 + len;
  }
  if (at + 5 > msg.length) return null;
  return { name: normalize(labels.join('.')), type: msg.readUInt16BE(at + 1), end: at + 5 };
}

function encodeName(name: string): Buffer {
  const parts = normalize(name)
    .split('.')
    .filter((l) => l.length > 0)
    .map((label) => Buffer.concat([Buffer.from([label.length]), Buffer.from(label, 'latin1')]));
  return Buffer.concat([...parts, Buffer.from([0])]);
}

function ipv4(ip: string): Buffer {
  if (!isIPv4(ip)) throw new Error(`not an IPv4 address: ${ip}`);
  return Buffer.from(ip.split('.').map(Number));
}

function ipv6(ip: string): Buffer {
  if (!isIPv6(ip)) throw new Error(`not an IPv6 address: ${ip}`);
  const [head = '', tail] = ip.split('::');
  const groups = (s: string | undefined): string[] => (s ? s.split(':') : []);
  const left = groups(head);
  const right = tail === undefined ? [] : groups(tail);
  const all = [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  const out = Buffer.alloc(16);
  all.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

function normalize(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}
