// Drives the real @supabase/ssr package (pinned in package.json) so that
// tests/supabase_cookie_interop.rs can prove chatgate's session cookie code is
// byte-compatible with what a Next.js dashboard writes and reads.
//
// Usage: node ssr_cookies.mjs <mode>   (input: one JSON object on stdin,
// output: one JSON object on stdout; diagnostics from supabase-js go to stderr)
//
// Modes:
//   login   {url, session_json, cookie_options?, cookie_encoding?, tokens_only?}
//           A server client signs in (password grant answered offline with
//           session_json) and we print the Set-Cookie values it writes:
//           {cookie_name, set_cookie: [...], headers, stored}.
//   refresh {url, cookie_header, new_session_json, cookie_options?}
//           The request carries cookie_header holding an expired session; the
//           server client refreshes it (answered offline with new_session_json)
//           and we print the Set-Cookie values it writes: {set_cookie, headers}.
//   read    {url, cookie_header?, set_cookie: [...]}
//           Applies the Set-Cookie values to a browser-like jar seeded from
//           cookie_header, then reads the session back twice: with the
//           package's own combineChunks + base64url decoding (`session`), and
//           through createServerClient's getSession() (`client_session`).
//           Prints {cookie_header, combined, session, client_session}.
//   signout {url, cookie_header, cookie_options?}
//           The request carries cookie_header; the server client signs out
//           (logout answered offline) and we print {set_cookie, headers}.
//   chunks  {key, values: [...]}
//           For each value: createChunks(key, value), stringToBase64URL(value)
//           and the chunks serialized with the package's default options:
//           {results: [{chunks: [{name, value}], base64url, set_cookie}]}.

import {
  createServerClient,
  createChunks,
  combineChunks,
  stringFromBase64URL,
  stringToBase64URL,
  parseCookieHeader,
  serializeCookieHeader,
  DEFAULT_COOKIE_OPTIONS,
} from "@supabase/ssr";

const BASE64_PREFIX = "base64-";
const ANON_KEY = "anon-key-for-tests";

async function readStdin() {
  const parts = [];
  for await (const part of process.stdin) parts.push(part);
  return JSON.parse(Buffer.concat(parts).toString("utf8"));
}

// supabase-js must never reach the network here: every auth call is answered
// from the test's input, anything else is a test bug.
function offlineFetch(answers) {
  return async (input, init) => {
    const url = new URL(typeof input === "string" ? input : input.url);
    const grant = url.searchParams.get("grant_type");
    const key = `${url.pathname}?${grant ?? ""}`;
    if (key in answers) {
      return new Response(answers[key], {
        status: 200,
        headers: { "content-type": "application/json" },
      });
    }
    throw new Error(`unexpected request ${init?.method ?? "GET"} ${url}`);
  };
}

class NoWebSocket {
  constructor() {
    throw new Error("realtime is not used by these tests");
  }
}

// A cookie store the way a framework adapter (Next.js middleware) hands it to
// createServerClient: getAll from the request, setAll collecting the response's
// Set-Cookie values serialized exactly as the package serializes them.
function cookieStore(cookieHeader) {
  const written = { setCookie: [], headers: {} };
  const cookies = {
    getAll: () => (cookieHeader ? parseCookieHeader(cookieHeader) : []),
    setAll: (list, headers) => {
      for (const { name, value, options } of list) {
        written.setCookie.push(serializeCookieHeader(name, value, options));
      }
      Object.assign(written.headers, headers ?? {});
    },
  };
  return { cookies, written };
}

function clientOptions(input, cookies, answers) {
  const opts = {
    cookies,
    global: { fetch: offlineFetch(answers) },
    // Realtime is never used; a transport keeps Node 20 (no global WebSocket)
    // from refusing to build the client, without extra node flags.
    realtime: { transport: NoWebSocket },
  };
  if (input.cookie_options) opts.cookieOptions = input.cookie_options;
  if (input.cookie_encoding) opts.cookieEncoding = input.cookie_encoding;
  if (input.tokens_only) cookies.encode = "tokens-only";
  return opts;
}

function storageKey(input) {
  return (
    input.cookie_options?.name ??
    `sb-${new URL(input.url).hostname.split(".")[0]}-auth-token`
  );
}

async function login(input) {
  const { cookies, written } = cookieStore(null);
  const client = createServerClient(
    input.url,
    ANON_KEY,
    clientOptions(input, cookies, {
      "/auth/v1/token?password": input.session_json,
    }),
  );
  const { error } = await client.auth.signInWithPassword({
    email: "user@example.com",
    password: "password",
  });
  if (error) throw error;
  // What the package stored, read back through its own reading path.
  const stored = await readCombined(
    storageKey(input),
    parseCookieHeader(jarFrom(written.setCookie).header()),
  );
  return {
    cookie_name: storageKey(input),
    set_cookie: written.setCookie,
    headers: written.headers,
    stored: stored.session,
  };
}

async function refresh(input) {
  const { cookies, written } = cookieStore(input.cookie_header);
  const client = createServerClient(
    input.url,
    ANON_KEY,
    clientOptions(input, cookies, {
      "/auth/v1/token?refresh_token": input.new_session_json,
    }),
  );
  // getSession() on an expired stored session refreshes it, as the
  // dashboard's middleware does on every request.
  const { data, error } = await client.auth.getSession();
  if (error) throw error;
  if (!data.session) throw new Error("package read no session from the cookie");
  return { set_cookie: written.setCookie, headers: written.headers };
}

// A browser-like jar keyed by cookie name: it keeps the raw wire value of each
// Set-Cookie, drops the cookie on Max-Age<=0, and sends `name=value` pairs back.
function jarFrom(setCookies, cookieHeader) {
  const jar = new Map();
  if (cookieHeader) {
    for (const pair of cookieHeader.split(";")) {
      const eq = pair.indexOf("=");
      if (eq === -1) continue;
      jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
    }
  }
  for (const line of setCookies) {
    const [pair, ...attrs] = line.split(";");
    const eq = pair.indexOf("=");
    if (eq === -1) throw new Error(`bad Set-Cookie ${line}`);
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    const maxAge = attrs
      .map((a) => a.trim().split("="))
      .find(([k]) => k.toLowerCase() === "max-age");
    if (maxAge && Number(maxAge[1]) <= 0) jar.delete(name);
    else jar.set(name, value);
  }
  return {
    header: () => [...jar].map(([n, v]) => `${n}=${v}`).join("; "),
  };
}

// Mirrors the server storage's getItem in cookies.ts: combineChunks over the
// parsed request cookies, then decodeChunkedCookieValue.
async function readCombined(key, parsed) {
  const combined = await combineChunks(key, async (chunkName) => {
    const found = parsed.find(({ name }) => name === chunkName);
    return found ? found.value : null;
  });
  if (!combined) return { combined: null, session: null };
  const json = combined.startsWith(BASE64_PREFIX)
    ? stringFromBase64URL(combined.substring(BASE64_PREFIX.length))
    : combined;
  return { combined, session: JSON.parse(json) };
}

async function read(input) {
  const header = jarFrom(input.set_cookie ?? [], input.cookie_header).header();
  const parsed = parseCookieHeader(header);
  const { combined, session } = await readCombined(storageKey(input), parsed);

  const { cookies } = cookieStore(header);
  const client = createServerClient(
    input.url,
    ANON_KEY,
    clientOptions(input, cookies, {}),
  );
  const { data, error } = await client.auth.getSession();
  if (error) throw error;
  // Round-trip through JSON to drop the server-side user warning proxy.
  const clientSession = data.session
    ? JSON.parse(JSON.stringify(data.session))
    : null;
  return { cookie_header: header, combined, session, client_session: clientSession };
}

async function signout(input) {
  const { cookies, written } = cookieStore(input.cookie_header);
  const client = createServerClient(
    input.url,
    ANON_KEY,
    clientOptions(input, cookies, { "/auth/v1/logout?": "{}" }),
  );
  const { error } = await client.auth.signOut();
  if (error) throw error;
  return { set_cookie: written.setCookie, headers: written.headers };
}

function chunks(input) {
  const results = input.values.map((value) => {
    const list = createChunks(input.key, value);
    return {
      chunks: list,
      base64url: stringToBase64URL(value),
      set_cookie: list.map(({ name, value }) =>
        serializeCookieHeader(name, value, DEFAULT_COOKIE_OPTIONS),
      ),
    };
  });
  return { results };
}

const modes = { login, refresh, read, signout, chunks };
const mode = modes[process.argv[2]];
if (!mode) {
  console.error(`usage: node ssr_cookies.mjs <${Object.keys(modes).join("|")}>`);
  process.exit(2);
}
// The server-side getSession() warns about its user object on stderr; that is
// expected here and must not mix with the JSON on stdout.
const result = await mode(await readStdin());
process.stdout.write(JSON.stringify(result) + "\n");
