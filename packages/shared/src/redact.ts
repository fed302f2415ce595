/**
 * `redis://user:secret@host` → `redis://user:***@host`, and a password given as a query parameter
 * (`?password=…`, which ioredis reads too) hidden as well: for anything a person reads (errors,
 * banners, logs). The user part runs to the last `@` before the path, as a password may hold one.
 */
export function redactUrl(url: string): string {
  return url
    .replace(/^(\w[\w+.-]*:\/\/)([^/?#]*)@/, (_, scheme: string, auth: string) => `${scheme}${auth.includes(':') ? `${auth.slice(0, auth.indexOf(':'))}:***` : '***'}@`)
    .replace(/([?&](?:password|pass|secret|token)=)[^&#]*/gi, '$1***');
}

/** A setting's value as it may be shown: secrets hidden whole, and passwords inside URLs. */
export function redactIfSecret(name: string, value: string): string {
  return /SECRET|PASSWORD|TOKEN|API_KEY/.test(name) ? '***' : redactUrl(value);
}
