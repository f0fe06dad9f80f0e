// The official Nakama JavaScript client through nakama-edge: each player authenticates,
// opens the realtime socket from 127.0.0.1, 127.0.0.2 and 127.0.0.3 in turn, refreshes their
// session and connects again, asking the node behind the socket who it is each time.
//
// Usage: EDGE_PORT=8443 NODE_EXTRA_CA_CERTS=ca.pem node sticky.mjs PLAYERS
//   SOURCES=127.0.0.1 (default 127.0.0.1,127.0.0.2,127.0.0.3): the addresses to connect from;
//   ROUNDS=3 (default 1): do it all that many times over (the same players each round).
// Prints one JSON line: [{device, userId, nodes: [...], refreshed: bool}, ...] (every round's).

import { Client } from "@heroiclabs/nakama-js";
import WebSocketImpl from "ws";

// Node 20 has no global WebSocket; nakama-js expects one. This one also lets the test choose
// the source address, as a player moving between networks would.
let sourceAddress = "127.0.0.1";
globalThis.WebSocket = class extends WebSocketImpl {
  constructor(url, protocols) {
    super(url, protocols, { localAddress: sourceAddress });
  }
};

const port = process.env.EDGE_PORT;
const players = Number(process.argv[2] ?? "10");
const sources = (process.env.SOURCES ?? "127.0.0.1,127.0.0.2,127.0.0.3").split(",");
const rounds = Number(process.env.ROUNDS ?? "1");
const client = new Client("defaultkey", "localhost", port, true, 10000);

async function nodeBehind(session, source) {
  sourceAddress = source;
  const socket = client.createSocket(true, false);
  await socket.connect(session, true);
  const rpc = await socket.rpc("whoami", "");
  socket.disconnect(false);
  return JSON.parse(rpc.payload).node;
}

// Nakama gives the same token to a refresh within the second the session was made: the
// refreshes wait for the next second, once, so that each reconnects with a new token.
const nextSecond = () => new Promise((r) => setTimeout(r, 1010 - (Date.now() % 1000)));

const results = [];
for (let round = 0; round < rounds; round++) {
  const sessions = [];
  for (let i = 0; i < players; i++) {
    const device = `nakama-js-device-${String(i).padStart(4, "0")}`;
    const session = await client.authenticateDevice(device, true);
    const nodes = [];
    for (const source of sources) {
      nodes.push(await nodeBehind(session, source));
    }
    sessions.push({ device, session, nodes, tokenBefore: session.token, userIdBefore: session.user_id });
  }
  await nextSecond();
  for (const { device, session, nodes, tokenBefore, userIdBefore } of sessions) {
    // nakama-js updates the session object in place.
    const refreshed = await client.sessionRefresh(session);
    nodes.push(await nodeBehind(refreshed, sources[sources.length > 1 ? 1 : 0]));
    results.push({
      device,
      userId: userIdBefore,
      refreshedUserId: refreshed.user_id,
      nodes,
      refreshed: refreshed.token !== tokenBefore,
    });
  }
}
console.log(JSON.stringify(results));
process.exit(0);
