// A real OpenID Provider for the OIDC tests: panva's certified
// oidc-provider (from npm, installed by `cargo xtask setup` in .data/oidc),
// over HTTPS with the test CA's certificate for 127.0.0.1. It signs with a
// fresh ES256 key at every start, so a restart is a key rotation. Clients
// get JWT access tokens by the client-credentials grant; `sub` is the
// client id, `aud` the resource asked for.
//
// With STUDIO_REDIRECT_URI set, it also has the public client
// `strato-studio` (authorization code with PKCE, that redirect URI) and
// its development login pages (any login name is the user's `sub`), for
// the studio's sign-in test.
//
// Environment: PORT, TLS_CERT, TLS_KEY (PEM files), OIDC_PROVIDER (the
// installed package's directory), STUDIO_REDIRECT_URI (optional).
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const { default: Provider } = await import(
  pathToFileURL(path.join(process.env.OIDC_PROVIDER, 'lib', 'index.js')).href
);

const port = Number(process.env.PORT);
const issuer = `https://127.0.0.1:${port}`;
const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg: 'ES256', use: 'sig' };
const client = (id) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: 'client_secret_post',
  id_token_signed_response_alg: 'ES256',
});

const studioRedirect = process.env.STUDIO_REDIRECT_URI;
const studioClient = {
  client_id: 'strato-studio',
  grant_types: ['authorization_code'],
  redirect_uris: [studioRedirect],
  response_types: ['code'],
  token_endpoint_auth_method: 'none',
  id_token_signed_response_alg: 'ES256',
};

const provider = new Provider(issuer, {
  clients: [client('ml-team'), client('other-team'), ...(studioRedirect ? [studioClient] : [])],
  jwks: { keys: [jwk] },
  features: {
    devInteractions: { enabled: Boolean(studioRedirect) },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'api://strato',
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => ({
        scope: 'api',
        audience: resource,
        accessTokenTTL: 600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});

https
  .createServer(
    { cert: fs.readFileSync(process.env.TLS_CERT), key: fs.readFileSync(process.env.TLS_KEY) },
    provider.callback(),
  )
  .listen(port, '127.0.0.1', () => console.log(`oidc issuer ${issuer} listening`));
