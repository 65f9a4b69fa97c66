import { BlockList, isIP } from 'node:net';

/**
 * Parses CIDRs (`10.0.0.0/8`, `fd00::/8`, or a bare address) into a BlockList. Throws a plain
 * Error naming the first bad entry; config validation turns it into a path-named issue.
 */
export function cidrList(cidrs: readonly string[]): BlockList {
  const list = new BlockList();
  for (const entry of cidrs) {
    const [address, bits] = entry.split('/');
    const family = isIP(address ?? '');
    if (family === 0) throw new Error(`"${entry}" is not an IP address or CIDR`);
    const type = family === 4 ? 'ipv4' : 'ipv6';
    if (bits === undefined) {
      list.addAddress(address!, type);
      continue;
    }
    const prefix = Number(bits);
    if (!/^\d+$/.test(bits) || prefix > (family === 4 ? 32 : 128)) throw new Error(`"${entry}" has a bad prefix length`);
    list.addSubnet(address!, prefix, type);
  }
  return list;
}

/** Whether `address` (v4, v6, or v4-mapped v6) is in `list`. */
export function inList(list: BlockList, address: string): boolean {
  const mapped = address.startsWith('::ffff:') && isIP(address.slice(7)) === 4 ? address.slice(7) : address;
  const family = isIP(mapped);
  if (family === 0) return false;
  return list.check(mapped, family === 4 ? 'ipv4' : 'ipv6');
}

/** How far to believe X-Forwarded-For, compiled from `listen.trustProxy`. */
export type ProxyTrust = false | true | number | BlockList;

export function compileTrust(setting: boolean | number | readonly string[]): ProxyTrust {
  if (Array.isArray(setting)) return cidrList(setting);
  return setting as boolean | number;
}

/**
 * The client's address: the socket's, or, behind trusted proxies, the right-most
 * X-Forwarded-For entry that is not itself a trusted proxy (Express's semantics:
 * `true` trusts every hop, a number trusts that many hops, CIDRs trust those proxies).
 */
export function clientAddress(socketAddress: string, forwardedFor: string | undefined, trust: ProxyTrust): string {
  if (trust === false || trust === 0 || !forwardedFor) return socketAddress;
  const chain = forwardedFor.split(',').map((s) => s.trim()).filter(Boolean);
  if (chain.length === 0) return socketAddress;
  if (trust === true) return chain[0]!;
  if (typeof trust === 'number') {
    // The socket peer is hop 1; each trusted hop lets us read one entry further left.
    const index = chain.length - trust;
    return chain[Math.max(index, 0)]!;
  }
  if (!inList(trust, socketAddress)) return socketAddress;
  for (let i = chain.length - 1; i >= 0; i--) {
    if (!inList(trust, chain[i]!)) return chain[i]!;
  }
  return chain[0]!;
}

/** Whether the socket peer is a proxy `trust` believes, so the forwarding headers it sent are kept. */
export function peerTrusted(trust: ProxyTrust, socketAddress: string): boolean {
  if (trust === true) return true;
  if (trust === false) return false;
  if (typeof trust === 'number') return trust > 0;
  return inList(trust, socketAddress);
}
