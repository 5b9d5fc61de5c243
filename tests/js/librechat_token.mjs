// Verifies a chatgate token the way LibreChat verifies its bearer: with the npm
// `jsonwebtoken` package (9.0.2, what LibreChat v0.8.x's package-lock resolves
// for its api/package.json "^9.0.0"; api/strategies/jwtStrategy.js goes
// through passport-jwt, which calls jsonwebtoken's verify with the secret).
//
// Usage: node librechat_token.mjs   (input: one JSON object on stdin)
// Input:  {token, secret}
// Output: {ok: true, header, claims}                 the token verifies
//         {ok: false, error: "<message>", name: "<TokenExpiredError|JsonWebTokenError|NotBeforeError>"}
// Verification: jwt.verify(token, secret, {algorithms: ["HS256"]}), which also
// checks exp and nbf. Exit 0 either way; exit 2 on bad input.

import jwt from 'jsonwebtoken';

const die = (msg) => {
  process.stderr.write(`librechat_token: ${msg}\n`);
  process.exit(2);
};

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
let input;
try {
  input = JSON.parse(Buffer.concat(chunks).toString('utf8'));
} catch (e) {
  die(`stdin is not JSON: ${e.message}`);
}
if (!input || typeof input !== 'object') die('expected a JSON object {token, secret}');
for (const k of ['token', 'secret']) {
  if (typeof input[k] !== 'string' || input[k] === '') die(`input needs a non-empty string "${k}"`);
}

let out;
try {
  const { header, payload } = jwt.verify(input.token, input.secret, { algorithms: ['HS256'], complete: true });
  out = { ok: true, header, claims: payload };
} catch (e) {
  out = { ok: false, error: e.message, name: e.name };
}
process.stdout.write(`${JSON.stringify(out)}\n`);
