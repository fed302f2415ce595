/**
 * A failure that retrying cannot fix (bad payload, undecodable image, missing object). The
 * wiring turns it into BullMQ's UnrecoverableError so it fails at once, with `reason` as a
 * bounded code for metrics and `status`, and the message for people.
 */
export class PermanentError extends Error {
  override readonly name = 'PermanentError';
  constructor(
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}
