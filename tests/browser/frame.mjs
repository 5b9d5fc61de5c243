// Drives headless Chromium (Debian's, through playwright-core) for
// tests/browser_frame.rs: opens a dashboard page that frames chatgate and one
// on an origin chatgate does not allow, and reports what each frame showed.
// The Rust test makes the assertions; this script only observes.
//
// stdin: {"chromium", "userDataDir", "screenshot", "chatgateOrigin",
//         "allowedUrl", "deniedUrl", "timeoutMs"}
// stdout: one JSON object (see `report` below).

import { chromium } from "playwright-core";

const input = JSON.parse(await readStdin());

// The flags issue 6 names; playwright-core adds its automation flags and
// turns `userDataDir` into a fresh --user-data-dir.
const args = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-quic",
  "--no-first-run",
];

const context = await chromium.launchPersistentContext(input.userDataDir, {
  executablePath: input.chromium,
  headless: true,
  args,
  ignoreHTTPSErrors: true, // every server here has a self-signed certificate
  viewport: { width: 840, height: 560 },
});

const report = { browser: context.browser()?.version() ?? null };
try {
  report.allowed = await visitAllowed(input.allowedUrl);
  report.denied = await visitDenied(input.deniedUrl);
  // Every cookie the browser holds for chatgate ("/api/" too: LibreChat's
  // refreshToken has Path=/api), without values.
  const urls = [`${input.chatgateOrigin}/`, `${input.chatgateOrigin}/api/`];
  report.cookies = (await context.cookies(urls)).map((c) => ({
    name: c.name,
    sameSite: c.sameSite,
    secure: c.secure,
    httpOnly: c.httpOnly,
    path: c.path,
    partitionKey: c.partitionKey ?? null,
  }));
} finally {
  await context.close();
}
process.stdout.write(JSON.stringify(report) + "\n");

/// The dashboard whose origin is in iframe.allowed_origins: waits until the
/// stand-in page in the frame has finished its XHR, then takes the screenshot.
async function visitAllowed(url) {
  const page = await context.newPage();
  const messages = collectConsole(page);
  await page.goto(url, { waitUntil: "load" });
  const body = page.frameLocator("#chat").locator("body[data-status]:not([data-status='loading'])");
  let waitError = null;
  try {
    await body.waitFor({ timeout: input.timeoutMs });
  } catch (e) {
    waitError = String(e.message ?? e).split("\n")[0];
  }
  await page.screenshot({ path: input.screenshot, fullPage: true });
  const frames = await describeFrames(page);
  await page.close();
  return { frames, console: messages, waitError };
}

/// The dashboard on an origin chatgate does not allow: Chromium should refuse
/// to render chatgate's page (CSP frame-ancestors). Waits for that refusal on
/// the console, or for the timeout, then reports what the frame holds.
async function visitDenied(url) {
  const page = await context.newPage();
  const messages = collectConsole(page);
  const refused = page
    .waitForEvent("console", {
      predicate: (m) => m.text().includes("frame-ancestors"),
      timeout: input.timeoutMs,
    })
    .then((m) => m.text())
    .catch(() => null);
  await page.goto(url, { waitUntil: "load" });
  const refusal = await refused;
  // Had the page rendered, its script would be running now; give it a moment.
  await page.waitForTimeout(500);
  const frames = await describeFrames(page);
  await page.close();
  return { frames, console: messages, refusal };
}

function collectConsole(page) {
  const lines = [];
  page.on("console", (m) => lines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => lines.push(`pageerror: ${e.message}`));
  return lines;
}

/// Every child frame: its URL and, where its document can be read, the
/// stand-in's marker and result.
async function describeFrames(page) {
  const out = [];
  for (const frame of page.frames()) {
    if (frame === page.mainFrame()) continue;
    const entry = { url: frame.url() };
    try {
      Object.assign(
        entry,
        await frame.evaluate(() => ({
          app: document.body?.dataset.app ?? null,
          status: document.body?.dataset.status ?? null,
          title: document.title,
          text: (document.body?.innerText ?? "").slice(0, 500),
          result: window.standInResult ?? null,
        })),
      );
    } catch (e) {
      entry.evaluateError = String(e.message ?? e).split("\n")[0];
    }
    out.push(entry);
  }
  return out;
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}
