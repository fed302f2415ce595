/** `redis://user:secret@host` → `redis://user:***@host`: for anything a person reads (errors, banners, logs). */
export function redactUrl(url: string): string {
  return url.replace(/^(\w+:\/\/)([^@/]*)@/, (_, scheme: string, auth: string) => `${scheme}${auth.includes(':') ? `${auth.slice(0, auth.indexOf(':'))}:***` : '***'}@`);
}

/** A setting's value as it may be shown: secrets hidden whole, and passwords inside URLs. */
export function redactIfSecret(name: string, value: string): string {
  return /SECRET|PASSWORD|TOKEN|API_KEY/.test(name) ? '***' : redactUrl(value);
}
