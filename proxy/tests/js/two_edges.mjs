// The official Nakama JavaScript client through two edges of one cluster: each player
// authenticates through edge A, opens the realtime socket through A, then through B, then
// refreshes their session through B and connects through B again, asking the node behind the
// socket who it is each time.
//
// Usage: EDGE_A=127.0.0.2 EDGE_B=127.0.0.3 EDGE_PORT=8443 NODE_EXTRA_CA_CERTS=ca.pem \
//        node two_edges.mjs PLAYERS
//   EDGE_A_PORT, EDGE_B_PORT: each edge's own port, where they differ (default EDGE_PORT).
// Prints one JSON line: [{device, userId, nodes: [...], refreshed: bool}, ...]

import { Client } from "@heroiclabs/nakama-js";
import WebSocketImpl from "ws";

// Node 20 has no global WebSocket; nakama-js expects one.
globalThis.WebSocket = WebSocketImpl;

const port = process.env.EDGE_PORT;
const players = Number(process.argv[2] ?? "10");
const throughA = new Client("defaultkey", process.env.EDGE_A, process.env.EDGE_A_PORT ?? port, true, 10000);
const throughB = new Client("defaultkey", process.env.EDGE_B, process.env.EDGE_B_PORT ?? port, true, 10000);

async function nodeBehind(client, session) {
  const socket = client.createSocket(true, false);
  await socket.connect(session, true);
  const rpc = await socket.rpc("whoami", "");
  socket.disconnect(false);
  return JSON.parse(rpc.payload).node;
}

// Nakama gives the same token to a refresh within the second the session was made: the
// refreshes wait for the next second, once, so that each reconnects with a new token.
const nextSecond = () => new Promise((r) => setTimeout(r, 1010 - (Date.now() % 1000)));

const sessions = [];
for (let i = 0; i < players; i++) {
  const device = `two-edges-device-${String(i).padStart(4, "0")}`;
  const session = await throughA.authenticateDevice(device, true);
  const nodes = [];
  nodes.push(await nodeBehind(throughA, session));
  nodes.push(await nodeBehind(throughB, session));
  sessions.push({ device, session, nodes, tokenBefore: session.token, userIdBefore: session.user_id });
}
await nextSecond();
const results = [];
for (const { device, session, nodes, tokenBefore, userIdBefore } of sessions) {
  const refreshed = await throughB.sessionRefresh(session);
  nodes.push(await nodeBehind(throughB, refreshed));
  results.push({
    device,
    userId: userIdBefore,
    refreshedUserId: refreshed.user_id,
    nodes,
    refreshed: refreshed.token !== tokenBefore,
  });
}
console.log(JSON.stringify(results));
process.exit(0);
