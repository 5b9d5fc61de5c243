// Plays LibreChat's server side of the OpenID Connect flow against chatgate's
// provider (/oidc/*), with the library LibreChat v0.8.x uses: openid-client
// 6.5.0 (LibreChat's api/package.json asks for ^6.5.0, its package-lock
// resolves 6.5.0), called the way api/strategies/openidStrategy.js and
// openid-client/passport call it: discovery(new URL(OPENID_ISSUER), client_id,
// {client_id, client_secret, token_endpoint_auth_method}, ClientSecretBasic|
// ClientSecretPost, {[customFetch]: undici.fetch}), buildAuthorizationUrl,
// authorizationCodeGrant (state, PKCE verifier, nonce, ID token checked against
// the provider's JWKS), fetchUserInfo(config, access_token, sub),
// refreshTokenGrant.
//
// Usage: node oidc_client.mjs <mode>      (or give "mode" in the input JSON)
// Input: one JSON object on stdin. Output: one JSON object on stdout.
// Diagnostics (each request's method and URL, never a token or secret) go to
// stderr. Any failure not described below: exit 1 with "oidc_client: <why>"
// on stderr (exit 2 for bad input).
//
// Settings common to every mode:
//   issuer          OPENID_ISSUER, e.g. "https://localhost:8443/oidc"; discovery
//                   reads {issuer}/.well-known/openid-configuration and the
//                   document's "issuer" must equal it exactly.
//   client_id, client_secret, redirect_uri (OPENID_CALLBACK_URL on DOMAIN_SERVER)
//   scope?          default "openid profile email" (OPENID_SCOPE)
//   use_pkce?       default true: S256 code_challenge. openid-client 6.5.0's
//                   passport Strategy always sends one, whatever OPENID_USE_PKCE says.
//   use_state?      default true (LibreChat's /oauth/openid route passes randomState()).
//   use_nonce?      default true. Stock LibreChat sends no nonce unless
//                   OPENID_GENERATE_NONCE=true; use_nonce=false reproduces that
//                   (the ID token must then carry no "nonce" claim).
//   auth_method?    "client_secret_basic" (default, as LibreChat) | "client_secret_post"
//   ca_file?        PEM file to trust for the provider's certificate. Without it
//                   every certificate is accepted (chatgate's dev certificate is
//                   self-signed), but TLS is still used: openid-client, like
//                   stock LibreChat, refuses plain-http endpoints.
//
// Modes:
//   authorize  {…settings}
//              -> {authorization_url, state, nonce, code_verifier}
//              (nonce / code_verifier / state are null when not used)
//   callback   {…settings, callback_url, state, nonce, code_verifier}
//              callback_url is the full redirect_uri URL with ?code=…&state=…
//              the provider redirected to. Code grant (ID token required and
//              validated: signature by the JWKS, iss, aud, exp, iat, nonce;
//              state checked), userinfo (its sub must equal the ID token's),
//              refresh_token grant, then the OLD refresh token once more,
//              which must be refused ->
//              {id_token_claims, userinfo,
//               tokens: {access_token, refresh_token, expires_in, id_token, token_type},
//               refreshed: {id_token_claims (only when an id_token came back),
//                           refresh_token, access_token, expires_in},
//               old_refresh_reuse_error: "<provider's error code, e.g. invalid_grant>"}
//              Exit 1 if the old refresh token is accepted again or no new
//              refresh token is returned.
//   redeem     same input as callback; stops after the code grant ->
//              {ok: true, id_token_claims} or, when the provider answers with
//              an OAuth error (e.g. a code redeemed twice),
//              {ok: false, error: "<oauth error code>", error_description, status}.
//              Anything else (discovery, TLS, an invalid ID token) exits 1.

import { readFileSync } from 'node:fs';
import * as client from 'openid-client';
import { Agent, fetch as undiciFetch } from 'undici';

const die = (msg, code = 1) => {
  process.stderr.write(`oidc_client: ${msg}\n`);
  process.exit(code);
};
const log = (msg) => process.stderr.write(`[oidc_client] ${msg}\n`);

async function readInput() {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  const text = Buffer.concat(chunks).toString('utf8').trim();
  if (!text) die('expected one JSON object on stdin', 2);
  try {
    const v = JSON.parse(text);
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    return v;
  } catch (e) {
    die(`stdin is not a JSON object: ${e.message}`, 2);
  }
}

function need(input, ...keys) {
  for (const k of keys) {
    if (typeof input[k] !== 'string' || input[k] === '') die(`input needs a non-empty string "${k}"`, 2);
  }
}

function describe(err) {
  if (err instanceof client.ResponseBodyError) {
    return `${err.error}${err.error_description ? ` (${err.error_description})` : ''} [HTTP ${err.status}]`;
  }
  if (err instanceof client.AuthorizationResponseError) {
    return `authorization response error ${err.error}${err.error_description ? ` (${err.error_description})` : ''}`;
  }
  if (err instanceof client.WWWAuthenticateChallengeError) {
    return `HTTP ${err.status} with WWW-Authenticate ${JSON.stringify(err.cause)}`;
  }
  const code = err?.code ? `${err.code}: ` : '';
  const cause = err?.cause?.message || err?.cause?.code;
  return `${code}${err?.message ?? String(err)}${cause ? ` (cause: ${cause})` : ''}`;
}

/// The provider's own OAuth error (token endpoint error body, a 401 with a
/// WWW-Authenticate challenge, or ?error= on the callback URL), as opposed to
/// a client-side check that failed. Null for the latter.
async function oauthErrorOf(err) {
  if (err instanceof client.ResponseBodyError || err instanceof client.AuthorizationResponseError) {
    return { error: err.error, error_description: err.error_description ?? null, status: err.status ?? null };
  }
  if (err instanceof client.WWWAuthenticateChallengeError) {
    // openid-client reads the challenge before the body: take the error code
    // from the challenge's parameters, else from the JSON body.
    const params = (Array.isArray(err.cause) ? err.cause : []).map((c) => c?.parameters || {});
    let error = params.find((p) => p.error)?.error;
    let description = params.find((p) => p.error_description)?.error_description;
    if (!error) {
      try {
        const body = await err.response.json();
        error = body?.error;
        description ??= body?.error_description;
      } catch {
        // no JSON body
      }
    }
    return { error: error ?? `http_${err.status}`, error_description: description ?? null, status: err.status };
  }
  return null;
}

function makeFetch(input) {
  // LibreChat's customFetch is undici.fetch(url, options) (plus logging and a
  // proxy dispatcher); ours adds a dispatcher that decides certificate trust.
  const connect = input.ca_file
    ? { ca: readFileSync(input.ca_file) }
    : { rejectUnauthorized: false };
  const dispatcher = new Agent({ connect });
  return async (url, options) => {
    log(`${options?.method || 'GET'} ${url}`);
    const res = await undiciFetch(url, { ...options, dispatcher });
    log(`-> ${res.status}`);
    return res;
  };
}

async function configure(input) {
  need(input, 'issuer', 'client_id', 'client_secret', 'redirect_uri');
  const method = input.auth_method ?? 'client_secret_basic';
  let auth;
  if (method === 'client_secret_basic') auth = client.ClientSecretBasic(input.client_secret);
  else if (method === 'client_secret_post') auth = client.ClientSecretPost(input.client_secret);
  else die(`auth_method must be "client_secret_basic" or "client_secret_post", not ${JSON.stringify(method)}`, 2);

  let issuer;
  try {
    issuer = new URL(input.issuer);
  } catch {
    die(`issuer is not a URL: ${input.issuer}`, 2);
  }
  try {
    return await client.discovery(
      issuer,
      input.client_id,
      { client_id: input.client_id, client_secret: input.client_secret, token_endpoint_auth_method: method },
      auth,
      { [client.customFetch]: makeFetch(input) },
    );
  } catch (e) {
    die(`discovery from ${input.issuer} failed: ${describe(e)}`);
  }
}

const flag = (v, dflt) => (v === undefined || v === null ? dflt : v === true);

async function authorize(input) {
  const config = await configure(input);
  const params = new URLSearchParams();
  const state = flag(input.use_state, true) ? client.randomState() : null;
  const nonce = flag(input.use_nonce, true) ? client.randomNonce() : null;
  let code_verifier = null;
  if (state) params.set('state', state);
  if (nonce) params.set('nonce', nonce);
  if (flag(input.use_pkce, true)) {
    code_verifier = client.randomPKCECodeVerifier();
    params.set('code_challenge', await client.calculatePKCECodeChallenge(code_verifier));
    params.set('code_challenge_method', 'S256');
  }
  params.set('redirect_uri', new URL(input.redirect_uri).href);
  params.set('scope', input.scope ?? 'openid profile email');
  let url;
  try {
    url = client.buildAuthorizationUrl(config, params);
  } catch (e) {
    die(`building the authorization URL failed: ${describe(e)}`);
  }
  return { authorization_url: url.href, state, nonce, code_verifier };
}

async function codeGrant(input, config) {
  need(input, 'callback_url');
  let current;
  try {
    current = new URL(input.callback_url);
  } catch {
    die(`callback_url is not a URL: ${input.callback_url}`, 2);
  }
  // Like openid-client/passport: the redirect_uri sent to the token endpoint
  // is the configured callback URL, the response parameters come from the
  // URL the provider redirected to.
  const effective = new URL(input.redirect_uri);
  for (const [k, v] of current.searchParams) effective.searchParams.append(k, v);
  return client.authorizationCodeGrant(config, effective, {
    pkceCodeVerifier: input.code_verifier ?? undefined,
    expectedState: input.state ?? undefined,
    expectedNonce: input.nonce ?? undefined,
    idTokenExpected: true,
  });
}

async function redeem(input) {
  const config = await configure(input);
  try {
    const tokens = await codeGrant(input, config);
    return { ok: true, id_token_claims: tokens.claims() };
  } catch (e) {
    const oauth = await oauthErrorOf(e);
    if (oauth) {
      log(`code grant refused: ${describe(e)}`);
      return { ok: false, ...oauth };
    }
    die(`code grant failed: ${describe(e)}`);
  }
}

async function callback(input) {
  const config = await configure(input);
  let tokens;
  try {
    tokens = await codeGrant(input, config);
  } catch (e) {
    die(`code grant failed: ${describe(e)}`);
  }
  const claims = tokens.claims();
  if (!tokens.refresh_token) die('the code grant returned no refresh_token');

  let userinfo;
  try {
    userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  } catch (e) {
    die(`userinfo failed: ${describe(e)}`);
  }

  let refreshed;
  try {
    refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
  } catch (e) {
    die(`refresh_token grant failed: ${describe(e)}`);
  }
  if (!refreshed.refresh_token) die('the refresh_token grant returned no new refresh_token (no rotation)');
  if (refreshed.refresh_token === tokens.refresh_token) die('the refresh_token grant returned the same refresh_token (no rotation)');

  let reuseError = null;
  try {
    await client.refreshTokenGrant(config, tokens.refresh_token);
  } catch (e) {
    const oauth = await oauthErrorOf(e);
    if (!oauth) die(`reusing the old refresh token failed in an unexpected way: ${describe(e)}`);
    reuseError = oauth.error;
    log(`old refresh token refused as expected: ${describe(e)}`);
  }
  if (reuseError === null) die('the old (rotated) refresh token was accepted a second time');

  const refreshedOut = {
    refresh_token: refreshed.refresh_token,
    access_token: refreshed.access_token,
    expires_in: refreshed.expires_in ?? null,
  };
  if (refreshed.id_token) refreshedOut.id_token_claims = refreshed.claims();

  return {
    id_token_claims: claims,
    userinfo,
    tokens: {
      access_token: tokens.access_token,
      refresh_token: tokens.refresh_token,
      expires_in: tokens.expires_in ?? null,
      id_token: tokens.id_token,
      token_type: tokens.token_type,
    },
    refreshed: refreshedOut,
    old_refresh_reuse_error: reuseError,
  };
}

const modes = { authorize, callback, redeem };

const input = await readInput();
const mode = process.argv[2] ?? input.mode;
if (!modes[mode]) die(`mode must be one of ${Object.keys(modes).join(', ')} (argument or "mode" in the input), got ${JSON.stringify(mode)}`, 2);
try {
  const out = await modes[mode](input);
  // Exit once written: the keep-alive sockets of the dispatcher would
  // otherwise hold the process open for a few seconds.
  process.stdout.write(`${JSON.stringify(out)}\n`, () => process.exit(0));
} catch (e) {
  die(`${mode} failed: ${describe(e)}`);
}
