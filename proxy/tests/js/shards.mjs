// The official Nakama JavaScript client against edges in shard mode: players authenticate with
// their shard in a session var (or without one, or through a server hook that sets it), then
// play together: every API call and socket of a player lands on one node, and the players of
// a shard join one another's authoritative and relayed matches.
//
// Usage: EDGE_PORT=8443 [EDGE_B_PORT=8444] NODE_EXTRA_CA_CERTS=ca.pem node shards.mjs SHARD...
//   For each SHARD: three players with vars {shard: SHARD}. Then three players without vars,
//   and one "hooked-<first shard>-..." device whose shard a server hook sets. With EDGE_B_PORT,
//   each player also asks through the second edge.
// Prints one JSON line: {players: [{device, shard, api, socket, refreshed, edge_b}],
//   matches: [{shard, kind, created_on, joined, tried}]}.

import { Client } from "@heroiclabs/nakama-js";
import WebSocketImpl from "ws";

globalThis.WebSocket = WebSocketImpl;

const shards = process.argv.slice(2);
const run = Date.now().toString(36);
const edgeA = new Client("defaultkey", "localhost", process.env.EDGE_PORT, true, 10000);
const edgeB = process.env.EDGE_B_PORT
  ? new Client("defaultkey", "localhost", process.env.EDGE_B_PORT, true, 10000)
  : null;

const nodeOf = (rpc) => (typeof rpc.payload === "string" ? JSON.parse(rpc.payload) : rpc.payload).node;

async function player(device, vars) {
  const session = await edgeA.authenticateDevice(device, true, undefined, vars);
  const api = nodeOf(await edgeA.rpc(session, "whoami", {}));
  const socket = edgeA.createSocket(true, false);
  await socket.connect(session, true);
  const onSocket = nodeOf(await socket.rpc("whoami", ""));
  const edge_b = edgeB ? nodeOf(await edgeB.rpc(session, "whoami", {})) : null;
  return { device, session, socket, api, socket_node: onSocket, edge_b };
}

// Nakama gives the same token to a refresh within the second the session was made.
const nextSecond = () => new Promise((r) => setTimeout(r, 1010 - (Date.now() % 1000)));

async function tryJoin(socket, matchId) {
  try {
    await socket.joinMatch(matchId);
    return true;
  } catch (e) {
    return false;
  }
}

const players = [];
const matches = [];
for (const shard of shards) {
  const group = [];
  for (let i = 0; i < 3; i++) {
    group.push(await player(`shard-${run}-${shard}-${i}`, { shard }));
  }
  // An authoritative match, made on the node of the first player's socket.
  const created = JSON.parse((await group[0].socket.rpc("create_match", "")).payload).match_id;
  let joined = 0;
  for (const p of group.slice(1)) joined += (await tryJoin(p.socket, created)) ? 1 : 0;
  matches.push({ shard, kind: "authoritative", match_id: created, joined, tried: group.length - 1 });
  // A relayed match.
  const relayed = await group[0].socket.createMatch();
  joined = 0;
  for (const p of group.slice(1)) joined += (await tryJoin(p.socket, relayed.match_id)) ? 1 : 0;
  matches.push({ shard, kind: "relayed", match_id: relayed.match_id, joined, tried: group.length - 1 });
  for (const p of group) players.push({ ...p, shard });
}
for (let i = 0; i < 3; i++) {
  players.push({ ...(await player(`noshard-${run}-${i}`, undefined)), shard: null });
}
if (shards.length > 0) {
  // The client asks for no shard; the server hook puts it in the first one.
  players.push({ ...(await player(`hooked-${shards[0]}-${run}`, undefined)), shard: shards[0], hooked: true });
}

await nextSecond();
const report = [];
for (const p of players) {
  const session = await edgeA.sessionRefresh(p.session);
  const refreshed = nodeOf(await edgeA.rpc(session, "whoami", {}));
  p.socket.disconnect(false);
  report.push({
    device: p.device,
    shard: p.shard,
    hooked: !!p.hooked,
    vars: p.session.vars ?? null,
    api: p.api,
    socket: p.socket_node,
    refreshed,
    edge_b: p.edge_b,
  });
}
console.log(JSON.stringify({ players: report, matches }));
process.exit(0);
