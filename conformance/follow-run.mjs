// Follows one stream with the official Node client (@durable-streams/client) and prints each
// JSON message as one line, until the stream is closed. Used by
// tests/test_durable_clients.py to follow a run's log through pod restarts.
//   node follow-run.mjs URL TOKEN [sse|long-poll]
import { stream } from "@durable-streams/client"

const [url, token, live = "sse"] = process.argv.slice(2)
const res = await stream({
  url,
  offset: "-1",
  live,
  json: true,
  headers: { Authorization: `Bearer ${token}` },
  backoffOptions: { initialDelay: 50, maxDelay: 500, multiplier: 2 },
  // A pod going away is an error to retry from the last offset, never the end.
  onError: async (error) => {
    console.error(`retrying after: ${error?.message ?? error}`)
    return {}
  },
})
for await (const message of res.jsonStream()) {
  console.log(JSON.stringify(message))
}
console.error(`closed at ${res.offset}`)
