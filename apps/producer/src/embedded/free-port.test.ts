import { readFileSync } from 'node:fs';
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { freePort, reservePorts } from './redis.server.js';

describe('freePort', () => {
  it('gives ports outside the range the kernel hands to outgoing connections, free to listen on', async () => {
    const range = (() => {
      try {
        return readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
      } catch {
        return undefined;
      }
    })();
    const ports = await Promise.all(Array.from({ length: 20 }, () => freePort()));
    for (const port of ports) {
      // a port of that range may become a worker's local port to Redis before the server listens
      // (unless the range leaves too few below it: port 0's, then)
      if (range && range[0]! >= 11_000) expect(port < range[0]! || port > range[1]!, `port ${port} in ${range.join('-')}`).toBe(true);
      await new Promise<void>((resolve, reject) => {
        const srv = net.createServer().once('error', reject);
        srv.listen(port, '127.0.0.1', () => srv.close(() => resolve()));
      });
    }
    expect(new Set(ports).size).toBe(ports.length);
  });

  it('never gives a port twice, however many are asked for at once (a stack draws all its ports before it listens on any)', async () => {
    // (drawn at random, 1,000 of some 22,000 would repeat about twenty of them; asked in turns
    // of 50 at once, as a stack asks for its ports both one after another and together)
    const ports: number[] = [];
    for (let turn = 0; turn < 20; turn++) ports.push(...(await Promise.all(Array.from({ length: 50 }, () => freePort()))));
    expect(ports.length - new Set(ports).size).toBe(0);
  });

  it('never gives a port reserved for a server that was given it (up --metrics-port P) and listens later', async () => {
    // every other port of the range freePort draws from, reserved: without the reservation about
    // half of 400 draws would land on one
    const reserved = new Set<number>();
    for (let port = 10_000; port < 65_536; port += 2) reserved.add(port);
    reservePorts(reserved);
    reservePorts([0]); // none given: nothing reserved, no error
    const ports: number[] = [];
    for (let turn = 0; turn < 20; turn++) ports.push(...(await Promise.all(Array.from({ length: 20 }, () => freePort()))));
    expect(ports.filter((p) => reserved.has(p))).toEqual([]);
  });
});
