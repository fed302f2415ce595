// s3rver ships no types; this is the part of its API we use.
declare module 's3rver' {
  import type { IncomingMessage, ServerResponse } from 'node:http';
  interface S3rverOptions {
    address?: string;
    port?: number;
    directory?: string;
    silent?: boolean;
    resetOnClose?: boolean;
    allowMismatchedSignatures?: boolean;
    vhostBuckets?: boolean;
    configureBuckets?: { name: string; configs?: (string | Buffer)[] }[];
  }
  /** A Koa application. */
  export default class S3rver {
    constructor(options?: S3rverOptions);
    /** creates the buckets of `configureBuckets` (run() does it before it listens) */
    configureBuckets(): Promise<void>;
    /** the request handler, for a server of our own */
    callback(): (req: IncomingMessage, res: ServerResponse) => void;
  }
}
