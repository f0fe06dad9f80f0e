// The runtime module the real-Nakama tests load (`--runtime.js_entrypoint edge_test.js`):
// what a test needs to see which node served a call.

// `whoami`: the node that ran the call, and the caller's user id ("" with the http_key).
function rpcWhoami(ctx, logger, nk, payload) {
  return JSON.stringify({ node: ctx.node, user_id: ctx.userId || "" });
}

function InitModule(ctx, logger, nk, initializer) {
  initializer.registerRpc("whoami", rpcWhoami);
}
