/**
 * A non-negative number of milliseconds as a decimal string with at most `digits` (1 or 2)
 * fractional digits, rounded, without trailing zeros: `12.3`, `0.05`, `7`. Written from small
 * integers, which V8 turns into strings from a cache; formatting the double itself (`toFixed`,
 * `String(x)`) costs several times more, and this runs a few times per request. A negative,
 * NaN or infinite input (never, from a monotonic clock) gives `0`.
 */
export function decimalMs(ms: number, digits: 1 | 2): string {
  const scale = digits === 1 ? 10 : 100;
  const n = Math.round(ms * scale);
  if (!(n >= 0 && n <= Number.MAX_SAFE_INTEGER)) return '0';
  const whole = Math.floor(n / scale);
  const fraction = n - whole * scale;
  if (fraction === 0) return `${whole}`;
  if (digits === 1) return `${whole}.${fraction}`;
  return fraction % 10 === 0 ? `${whole}.${fraction / 10}` : `${whole}.${fraction < 10 ? '0' : ''}${fraction}`;
}
