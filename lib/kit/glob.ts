/**
 * A glob matcher, as policies use them on paths and header values: `**` matches any run of
 * characters, `*` any run without a `/`, `?` one character other than `/`; everything else is
 * literal. A glob without wildcards is an exact comparison.
 * @example globMatcher('/admin/**')('/admin/users/1') // true
 */
export function globMatcher(glob: string): (value: string) => boolean {
  if (!/[*?]/.test(glob)) return (value) => value === glob;
  let source = '^';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*' && glob[i + 1] === '*') {
      source += '.*';
      i++;
    } else if (c === '*') source += '[^/]*';
    else if (c === '?') source += '[^/]';
    else source += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  const regex = new RegExp(`${source}$`, 's');
  return (value) => regex.test(value);
}
