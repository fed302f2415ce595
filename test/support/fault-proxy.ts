import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startEmbeddedS3, type EmbeddedS3 } from '../../apps/producer/src/embedded/s3.server.js';

/** What the proxy does to a request it would otherwise pass on. */
export type Fault = { kind: 'status'; status: number } | { kind: 'slow'; ms: number } | { kind: 'drop' } | { kind: 'mute' };

/**
 * A small fault-injecting HTTP proxy in front of an S3-compatible server, for tests that play a
 * bad day: answer 5xx for some objects, answer slowly, or drop connections, while the rest goes
 * through unchanged (the Host header is kept, so signed requests stay valid).
 */
export interface FaultProxy {
  url: string;
  /** requests whose path contains `match` (URL-decoded) get `fault`; '' matches everything */
  inject: (match: string, fault: Fault) => void;
  /** no fault for `match` any more */
  remove: (match: string) => void;
  /**
   * An outage that begins with the first request whose path contains `match` (a run's save, say):
   * from it on every request is dropped until heal(); resolves when it began
   */
  trip: (match: string) => Promise<void>;
  /** no faults (and no outage) any more */
  heal: () => void;
  /** requests that got a fault, by match */
  hits: Map<string, number>;
  close: () => Promise<void>;
}

export async function startFaultProxy(target: string): Promise<FaultProxy> {
  const to = new URL(target);
  const faults = new Map<string, Fault>();
  const hits = new Map<string, number>();
  let tripwire: { match: string; tripped: () => void } | undefined;
  let down = false;
  const server = http.createServer((req, res) => {
    const path = decodeURIComponent(req.url ?? '');
    if (tripwire && path.includes(tripwire.match)) {
      tripwire.tripped();
      tripwire = undefined;
      down = true;
    }
    if (down) {
      req.socket.destroy();
      return;
    }
    const hit = [...faults].find(([m]) => path.includes(m));
    const pass = () => {
      const up = http.request({ host: to.hostname, port: to.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    };
    if (!hit) return pass();
    const [match, fault] = hit;
    hits.set(match, (hits.get(match) ?? 0) + 1);
    if (fault.kind === 'drop') {
      req.socket.destroy();
      return;
    }
    if (fault.kind === 'mute') {
      // taken, and never answered: a server that is stopped or wedged (the client gives up)
      req.resume();
      return;
    }
    if (fault.kind === 'slow') {
      setTimeout(pass, fault.ms);
      return;
    }
    req.resume();
    req.on('end', () => {
      res.writeHead(fault.status, { 'content-type': 'application/xml' });
      res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>injected fault</Message></Error>`);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    inject: (match, fault) => void faults.set(match, fault),
    remove: (match) => void faults.delete(match),
    trip: (match) => new Promise<void>((tripped) => (tripwire = { match, tripped })),
    heal: () => {
      faults.clear();
      tripwire = undefined;
      down = false;
    },
    hits,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** An S3 server of its own (in a temporary folder) with a fault proxy in front: point a stack's S3_ENDPOINT at `proxy.url`. */
export interface FaultyS3 {
  s3: EmbeddedS3;
  proxy: FaultProxy;
  /** Closes the proxy, stops the server and removes its folder. */
  stop: () => Promise<void>;
}

export async function startFaultyS3(): Promise<FaultyS3> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-s3-'));
  const s3 = await startEmbeddedS3({ directory: dir, port: 0 });
  const proxy = await startFaultProxy(s3.endpoint);
  return {
    s3,
    proxy,
    stop: async () => {
      await proxy.close();
      await s3.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
