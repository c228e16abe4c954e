// Starts the Durable Streams reference server (in memory) on 127.0.0.1:<port> for the
// side-by-side conformance comparison in tests/test_durable_conformance.py.
import { DurableStreamTestServer } from "@durable-streams/server"

const port = Number(process.argv[2] ?? "0")
const server = new DurableStreamTestServer({ port, host: "127.0.0.1" })
const url = await server.start()
console.log(`reference server on ${url ?? `http://127.0.0.1:${port}`}`)
const stop = async () => {
  await server.stop()
  process.exit(0)
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
