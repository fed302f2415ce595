import { mkdir } from 'node:fs/promises';
import S3rver from 's3rver';

export interface EmbeddedS3 {
  endpoint: string;
  port: number;
  accessKeyId: string;
  secretAccessKey: string;
  stop: () => Promise<void>;
}

/**
 * An S3-compatible server (s3rver) on a local folder, for one machine without MinIO or AWS.
 * Path-style URLs; credentials are s3rver's fixed dev pair S3RVER/S3RVER. Port 0 picks a free one.
 */
export async function startEmbeddedS3(o: { directory: string; port: number; host?: string; buckets?: string[] }): Promise<EmbeddedS3> {
  await mkdir(o.directory, { recursive: true });
  const server = new S3rver({
    address: o.host ?? '127.0.0.1',
    port: o.port,
    directory: o.directory,
    silent: true,
    vhostBuckets: false,
    configureBuckets: (o.buckets ?? []).map((name) => ({ name })),
  });
  let address: { address: string; port: number };
  try {
    address = await server.run();
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'EADDRINUSE') throw new Error(`port ${o.port} for the embedded S3 server is in use: set TL_S3_PORT, or S3_ENDPOINT to use a running server`);
    throw err;
  }
  return {
    endpoint: `http://${address.address}:${address.port}`,
    port: address.port,
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
    stop: async () => {
      // Keep-alive sockets from SDK clients would hold close() open.
      server.httpServer?.closeAllConnections();
      await server.close();
    },
  };
}
