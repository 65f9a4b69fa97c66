/**
 * Headless Chromium for the dashboard's browser tests and bench: Debian's `chromium` package
 * (`.ci/run` installs it), driven by playwright-core, which never downloads a browser of its own.
 */
import { chromium, type Browser } from 'playwright-core';

/** Where Debian installs Chromium. */
export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** Flags for a quiet headless run: no sandbox (CI runs as root), no GPU, nothing fetched in the background. */
export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'];

/** Starts headless Chromium; `ignoreCertificateErrors` for a test's self-signed listener. */
export function launchChromium(options: { ignoreCertificateErrors?: boolean } = {}): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM_PATH, args: options.ignoreCertificateErrors ? [...CHROMIUM_ARGS, '--ignore-certificate-errors'] : CHROMIUM_ARGS });
}
