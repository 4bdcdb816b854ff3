// node-sparkpost (npm sparkpost 2.1.4), the real client, against msys-milter's API.
// Usage: node client.js COMMAND [JSON-ARG]; MSYS_ORIGIN is https://host:port, MSYS_KEY
// the key, NODE_EXTRA_CA_CERTS the test CA, NODE_PATH the client's node_modules.
// Prints {"ok": result} or {"error": {"status": N, "errors": [...], "message": "..."}}.
'use strict';
const SparkPost = require('sparkpost');

const client = new SparkPost(process.env.MSYS_KEY, { origin: process.env.MSYS_ORIGIN });
const [command, raw] = process.argv.slice(2);
const arg = raw === undefined ? undefined : JSON.parse(raw);

const calls = {
  upsert: () => client.suppressionList.upsert(arg),
  get: () => client.suppressionList.get(arg),
  list: () => client.suppressionList.list(arg || {}),
  delete: () => client.suppressionList.delete(arg),
  events: () => client.events.searchMessage(arg),
  'webhooks-create': () => client.webhooks.create(arg),
  'webhooks-list': () => client.webhooks.list(),
  'webhooks-get': () => client.webhooks.get(arg),
  'webhooks-update': () => client.webhooks.update(arg.id, arg.webhook),
  'webhooks-validate': () => client.webhooks.validate(arg.id, { message: arg.message }),
  'webhooks-batch-status': () => client.webhooks.getBatchStatus(arg),
  'webhooks-delete': () => client.webhooks.delete(arg),
};

if (!calls[command]) {
  console.error('unknown command ' + command);
  process.exit(2);
}
calls[command]().then(
  (result) => console.log(JSON.stringify({ ok: result })),
  (err) => console.log(JSON.stringify({
    error: { status: err.statusCode, errors: err.errors, message: err.message },
  })),
);
