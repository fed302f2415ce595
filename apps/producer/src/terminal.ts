/**
 * Text from users (object keys, labels, error details) made safe to print: control characters
 * (newlines, tabs, ANSI escapes such as ESC[2J that would clear the terminal) are shown as
 * escapes instead of being obeyed.
 */
export function printable(s: string): string {
  return s.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => {
    const named: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };
    return named[c] ?? `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`;
  });
}

/** A message of ours that may quote users' text: its line breaks kept, every other control character escaped. */
export function printableMessage(s: string): string {
  return s.split('\n').map(printable).join('\n');
}

/** A value as a POSIX shell reads it back unchanged (for commands we print for the user to run). */
export function shellQuote(value: string): string {
  return /^[\w@%+=:,./-]+$/.test(value) ? value : `'${value.replace(/'/g, `'\\''`)}'`;
}
