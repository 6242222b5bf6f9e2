// A real OpenID provider (the `oidc-provider` package) for the integration tests: it issues
// signed JWT access tokens through the client_credentials grant, on 127.0.0.1 only.
//
//   node provider.mjs --port P [--issuer URL] --keys FILE[:rsa|:ec][,FILE...]
//                     [--clock-offset SECONDS] [--ttl SECONDS]
//
// See README.md beside this file for the clients, resources and scopes it knows.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';

const USAGE = 'usage: node provider.mjs --port P [--issuer URL] --keys FILE[:rsa|:ec][,FILE...] '
  + '[--clock-offset SECONDS] [--ttl SECONDS]';

function fail(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(2);
}

function integer(name, text) {
  if (!/^-?\d+$/.test(text ?? '')) fail(`${name} needs an integer, got ${JSON.stringify(text)}`);
  return Number.parseInt(text, 10);
}

function parseArgs(argv) {
  const opts = { clockOffset: 0, ttl: 600 };
  for (let i = 0; i < argv.length; i += 1) {
    const name = argv[i];
    const value = argv[i + 1];
    if (value === undefined) fail(`${name} needs a value\n${USAGE}`);
    i += 1;
    switch (name) {
      case '--port': opts.port = integer(name, value); break;
      case '--issuer': opts.issuer = value; break;
      case '--keys': opts.keys = value.split(',').filter((k) => k !== ''); break;
      case '--clock-offset': opts.clockOffset = integer(name, value); break;
      case '--ttl': opts.ttl = integer(name, value); break;
      default: fail(`unknown argument ${JSON.stringify(name)}\n${USAGE}`);
    }
  }
  if (opts.port === undefined || opts.port < 1 || opts.port > 65535) fail(`--port is required\n${USAGE}`);
  if (!opts.keys?.length) fail(`--keys is required\n${USAGE}`);
  if (opts.ttl < 1) fail('--ttl must be positive');
  opts.issuer ??= `http://127.0.0.1:${opts.port}`;
  return opts;
}

// ---- signing keys ----

// `FILE`, `FILE:rsa` or `FILE:ec` -> { file, kind }.
function keySpec(spec) {
  const match = /^(.*):(rsa|ec)$/.exec(spec);
  return match ? { file: match[1], kind: match[2] } : { file: spec, kind: 'rsa' };
}

function generateKey(kind) {
  const { privateKey } = kind === 'ec'
    ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(12).toString('base64url'), use: 'sig' };
}

// Reads the private JWK in `file`, creating it first (a new key of `kind`) when it is missing.
function loadKey({ file, kind }) {
  if (!existsSync(file)) {
    const jwk = generateKey(kind);
    // `wx`: never overwrite a key that appeared meanwhile.
    writeFileSync(file, `${JSON.stringify(jwk, null, 2)}\n`, { flag: 'wx', mode: 0o600 });
  }
  let jwk;
  try {
    jwk = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    fail(`${file}: not a JSON Web Key (${err.message})`);
  }
  if (typeof jwk.kid !== 'string' || jwk.kid === '') fail(`${file}: the key has no kid`);
  if (typeof jwk.d !== 'string') fail(`${file}: not a private key (no "d")`);
  const rsa = jwk.kty === 'RSA';
  const ec = jwk.kty === 'EC' && jwk.crv === 'P-256';
  if (!rsa && !ec) fail(`${file}: only RSA and EC P-256 keys are supported`);
  return jwk;
}

// ---- configuration ----

const opts = parseArgs(process.argv.slice(2));
const keys = opts.keys.map((spec) => loadKey(keySpec(spec)));
const kids = keys.map((k) => k.kid);
if (new Set(kids).size !== kids.length) fail(`two keys share a kid: ${kids.join(', ')}`);

// The provider's clock: `--clock-offset -3600` issues tokens as if it were an hour ago. Set
// before the provider is imported so that nothing in it can see the real clock.
if (opts.clockOffset !== 0) {
  const realNow = Date.now.bind(Date);
  Date.now = () => realNow() + opts.clockOffset * 1000;
}

const { default: Provider, errors } = await import('oidc-provider');

const SCOPES = ['openid', 'platform:read', 'platform:write', 'models:read', 'models:write', 'files:read', 'files:write'];
const SECRET = 'secret';

// client id -> claims added to its access tokens.
const CLIENTS = {
  alice: { email: 'alice@example.com', groups: ['team-a'] },
  bob: { email: 'bob@example.com' },
  'service-jobs': {},
  'service:jobs': {},
};

// resource indicator -> what its access tokens look like.
const RESOURCES = {
  'urn:nmp:api': { audience: 'urn:nmp:api', alg: 'RS256' },
  'urn:nmp:es256': { audience: 'urn:nmp:api', alg: 'ES256' },
  'urn:other': { audience: 'urn:other', alg: 'RS256' },
};

const configuration = {
  clients: Object.keys(CLIENTS).map((clientId) => ({
    client_id: clientId,
    client_secret: SECRET,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_post',
    scope: SCOPES.join(' '),
  })),
  jwks: { keys },
  scopes: SCOPES,
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // A token request without `resource` is for the NMP API.
      defaultResource: async (_ctx, _client, oneOf) => oneOf ?? 'urn:nmp:api',
      getResourceServerInfo: async (_ctx, resource) => {
        const server = RESOURCES[resource];
        if (!server) throw new errors.InvalidTarget(`unknown resource ${resource}`);
        const kty = server.alg.startsWith('ES') ? 'EC' : 'RSA';
        if (!keys.some((k) => k.kty === kty)) {
          throw new errors.InvalidTarget(`${resource} needs an ${kty} key in --keys`);
        }
        return {
          scope: SCOPES.join(' '),
          audience: server.audience,
          accessTokenFormat: 'jwt',
          accessTokenTTL: opts.ttl,
          jwt: { sign: { alg: server.alg } },
        };
      },
    },
  },
  extraTokenClaims: async (_ctx, token) => {
    const claims = CLIENTS[token.clientId];
    return claims && Object.keys(claims).length ? { ...claims } : undefined;
  },
  ttl: {
    AccessToken: opts.ttl,
    ClientCredentials: opts.ttl,
  },
};

let provider;
try {
  provider = new Provider(opts.issuer, configuration);
} catch (err) {
  fail(`bad provider configuration: ${err.stack ?? err}`);
}
provider.on('server_error', (_ctx, err) => {
  process.stderr.write(`provider.mjs: server_error: ${err.stack ?? err}\n`);
});

// ---- serving ----

const server = createServer(provider.callback());
server.on('error', (err) => {
  // EADDRINUSE and the like, before READY: the harness reads this and the exit status.
  fail(`cannot listen on 127.0.0.1:${opts.port}: ${err.code ?? err.message}`);
});
server.listen(opts.port, '127.0.0.1', () => {
  process.stdout.write(`READY ${opts.issuer}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
