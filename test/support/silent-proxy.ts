import net from 'node:net';

/**
 * A TCP proxy in front of a real Redis that can go silent on the connections it has made (a
 * connection a NAT or load balancer dropped without a reset: it looks up and never answers),
 * trickle or cut their answers, or close (connections refused). New connections still pass until
 * it closes.
 */
export interface SilentProxy {
  url: string;
  /** the connections made so far stop passing anything, without closing */
  silence: () => void;
  /** the connections silenced pass again, what was sent meanwhile first */
  unsilence: () => void;
  /** answers on the connections made so far arrive slowly: 2 kB every 100 ms (each mode takes the connections made so far; later ones pass) */
  trickle: () => void;
  /** on the connections made so far, the next `n` bytes of answer pass, then nothing */
  cutAfter: (n: number) => void;
  connections: () => number;
  close: () => Promise<void>;
}

export async function startSilentProxy(target: URL): Promise<SilentProxy> {
  const pairs: [net.Socket, net.Socket][] = [];
  const all: net.Socket[] = [];
  const silenced: [net.Socket, net.Socket][] = [];
  let made = 0;
  const server = net.createServer((client) => {
    made++;
    const upstream = net.connect(Number(target.port), target.hostname);
    client.on('error', () => {});
    upstream.on('error', () => {});
    client.pipe(upstream).pipe(client);
    pairs.push([client, upstream]);
    all.push(client, upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  /** The connections made so far hand their answers to `relay(client)` instead of straight back (later ones pass). */
  const relayAnswers = (relay: (client: net.Socket) => (chunk: Buffer) => void) => {
    for (const [client, upstream] of pairs.splice(0)) {
      upstream.unpipe(client);
      // unpipe paused it: a 'data' listener alone would not start it again
      upstream.on('data', relay(client)).resume();
    }
  };
  return {
    url: `redis://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    silence: () => {
      for (const pair of pairs.splice(0)) {
        const [client, upstream] = pair;
        client.unpipe(upstream);
        upstream.unpipe(client);
        client.pause();
        upstream.pause();
        silenced.push(pair);
      }
    },
    unsilence: () => {
      for (const pair of silenced.splice(0)) {
        const [client, upstream] = pair;
        client.pipe(upstream).pipe(client);
        pairs.push(pair);
      }
    },
    trickle: () =>
      relayAnswers((client) => {
        const pending: Buffer[] = [];
        const timer = setInterval(() => {
          let room = 2048;
          while (room > 0 && pending.length) {
            const c = pending.shift()!;
            if (c.length > room) pending.unshift(c.subarray(room));
            client.write(c.subarray(0, room));
            room -= Math.min(room, c.length);
          }
        }, 100);
        client.on('close', () => clearInterval(timer));
        return (c) => void pending.push(c);
      }),
    cutAfter: (n) =>
      relayAnswers((client) => {
        let left = n;
        return (c) => {
          if (left > 0) client.write(c.subarray(0, left));
          left -= Math.min(left, c.length);
        };
      }),
    connections: () => made,
    close: async () => {
      for (const socket of all) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
