// The official Durable Streams server conformance suite, run against CONFORMANCE_TEST_URL.
// (The package's own CLI only finds vitest in a pnpm layout and filters out its runner
// file under npm's, so this file is the entry point vitest discovers instead.)
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.CONFORMANCE_TEST_URL
if (!baseUrl) throw new Error("set CONFORMANCE_TEST_URL to the server's base URL")
runConformanceTests({ baseUrl })
